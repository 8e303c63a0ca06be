"""Reward scoring on remote::together: a judge model rates each generation from 0 to 10.

Each (dialog, generation) pair is one ``POST /chat/completions`` to ``config.judge_model`` (or the request's
model): the conversation and the candidate response, and instructions to answer ``{"score": N}`` only.
The calls fan out with at most ``config.max_concurrency`` in flight. An answer without a readable score
is asked again (up to ``config.parse_retries`` times) with the unreadable answer and a correction, since
repeating the same request at temperature 0 would get the same answer; then it is a 502.

Together's older spec gives ``response_format`` a schema whose values must be strings, so a real JSON
Schema cannot be sent; the instructions and a tolerant parser do the job instead.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from llama_stack.apis.common import Message
from llama_stack.apis.errors import ProviderError
from llama_stack.apis.reward_scoring import (
    KScoredPromptGenerations,
    RewardScoringRequest,
    RewardScoringResponse,
    ScoredMessage,
)
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote import RemoteService

from .config import TogetherRewardScoringConfig
from .safety import answer_text, message_contents, message_text
from .service import together_service

MIN_SCORE, MAX_SCORE = 0.0, 10.0
T = TypeVar("T")

INSTRUCTIONS = (
    "You are an impartial judge. You rate how well an AI assistant's response answers the conversation "
    "before it: a good response is {criteria}. Reply with only a JSON object {{\"score\": N}}, where N is an "
    "integer from 0 (useless or harmful) to 10 (excellent). Write nothing else."
)
CORRECTION = (
    'That reply has no score I can read. Reply with only a JSON object {"score": N}, where N is an integer '
    "from 0 to 10, and nothing else."
)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_LABELLED = re.compile(r"\bscore\b[^0-9\-]{0,12}(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?\.?")


class TogetherRewardScoring:
    def __init__(self, config: TogetherRewardScoringConfig, service: RemoteService):
        self.config = config
        self.service = service
        self._inliner = AttachmentInliner(config.attachments)

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        judge = self.config.judge_model or request.model
        contents = []
        for i, item in enumerate(request.prompt_generations):
            at = f"prompt_generations[{i}]"
            contents += message_contents([*item.dialog.message_history, item.dialog.message], f"{at}.dialog.messages")
            contents += message_contents(item.k_generations, f"{at}.k_generations")
        texts = await self._inliner.fetch(contents, model=judge)

        calls: list[Callable[[], Awaitable[float]]] = []
        for i, item in enumerate(request.prompt_generations):
            at = f"prompt_generations[{i}]"
            conversation = transcript([*item.dialog.message_history, item.dialog.message], f"{at}.dialog.messages", texts)
            for j, generation in enumerate(item.k_generations):
                response = message_text(generation, f"{at}.k_generations[{j}]", texts)
                calls.append(partial(self._score, judge, conversation, response))
        scores = iter(await bounded_all(calls, self.config.max_concurrency))
        return RewardScoringResponse(
            scored_generations=[
                KScoredPromptGenerations(
                    prompt=item.dialog.message,
                    k_scored_generations=[ScoredMessage(message=g, score=next(scores)) for g in item.k_generations],
                )
                for item in request.prompt_generations
            ]
        )

    async def shutdown(self) -> None:
        await self.service.aclose()

    async def _score(self, judge: str, conversation: str, response: str) -> float:
        messages: list[dict[str, str]] = [
            {"role": "system", "content": INSTRUCTIONS.format(criteria=self.config.criteria)},
            {"role": "user", "content": judge_prompt(conversation, response)},
        ]
        for attempt in range(self.config.parse_retries + 1):
            body = {"model": judge, "messages": messages, "temperature": 0, "max_tokens": self.config.judge_max_tokens}
            answer = await self.service.json("POST", "/chat/completions", json_body=body)
            text = answer_text(answer, self.service, "the judge request")
            score = parse_score(text)
            if score is not None:
                return score
            messages = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": CORRECTION}]
        raise ProviderError(
            f"{self.service.name}'s judge model '{judge}' answered without a readable 0-10 score "
            f"{self.config.parse_retries + 1} time(s); last answer: {text[:200]!r}. Use a judge model that "
            "follows instructions (judge_model in the provider's config)",
            provider=self.service.provider_id,
        )


def transcript(messages: list[Message], where: str, texts: InlinedAttachments) -> str:
    return "\n\n".join(
        f"[{message.role.value}]\n{message_text(message, f'{where}[{index}]', texts)}"
        for index, message in enumerate(messages)
    )


def judge_prompt(conversation: str, response: str) -> str:
    return (
        f"<conversation>\n{conversation}\n</conversation>\n\n"
        f"<response>\n{response}\n</response>\n\n"
        "Rate the response."
    )


def parse_score(text: str) -> float | None:
    """The score in a judge's answer: ``{"score": 7}``, ``Score: 7/10`` or a bare ``7``; None if none fits."""
    for candidate in _JSON_OBJECT.findall(text):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            score = value.get("score")
            if isinstance(score, (int, float)) and not isinstance(score, bool):
                return _in_range(float(score))
            if isinstance(score, str):
                return _number(score)
    labelled = _LABELLED.search(text)
    if labelled:
        return _in_range(float(labelled.group(1)))
    bare = _BARE.fullmatch(text.strip())
    return _in_range(float(bare.group(1))) if bare else None


def _number(text: str) -> float | None:
    try:
        return _in_range(float(text.strip()))
    except ValueError:
        return None


def _in_range(score: float) -> float | None:
    return score if MIN_SCORE <= score <= MAX_SCORE else None


async def bounded_all(calls: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Every call's result in order, at most ``limit`` running at a time; the first failure is raised and
    stops the calls still waiting or running (their answers would go nowhere)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def build(config: TogetherRewardScoringConfig, context: ProviderContext) -> TogetherRewardScoring:
    return TogetherRewardScoring(config, together_service(config, context))
