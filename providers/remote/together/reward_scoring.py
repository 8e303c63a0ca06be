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

import json
import re
from functools import partial

from llama_stack.apis.errors import ProviderError
from llama_stack.apis.reward_scoring import RewardScoringRequest, RewardScoringResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner
from llama_stack.providers.utils.remote import RemoteService
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.openai_answers import message_content
from llama_stack.providers.utils.remote.reward_scoring import score_generations

from .config import TogetherRewardScoringConfig
from .service import together_service

MIN_SCORE, MAX_SCORE = 0.0, 10.0

INSTRUCTIONS = (
    "You are an impartial judge. You rate how well an AI assistant's response answers the conversation "
    'before it: a good response is {criteria}. Reply with only a JSON object {{"score": N}}, where N is an '
    "integer from 0 (useless or harmful) to 10 (excellent). Write nothing else."
)
CORRECTION = (
    'That reply has no score I can read. Reply with only a JSON object {"score": N}, where N is an integer '
    "from 0 to 10, and nothing else."
)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_LABELLED = re.compile(r"\bscore\b[^0-9\-]{0,12}(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?\.?")


class TogetherRewardScoring(RemoteAdapter[TogetherRewardScoringConfig]):
    def __init__(self, config: TogetherRewardScoringConfig, service: RemoteService):
        super().__init__(config, service)
        self._inliner = AttachmentInliner(config.attachments)

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        judge = self.config.judge_model or request.model
        return await score_generations(
            request,
            self._inliner,
            partial(self._score, judge),
            model=judge,
            turn="[{role}]\n{text}",
            limit=self.config.max_concurrency,
        )

    async def _score(self, judge: str, conversation: str, response: str) -> float:
        messages: list[dict[str, str]] = [
            {"role": "system", "content": INSTRUCTIONS.format(criteria=self.config.criteria)},
            {"role": "user", "content": judge_prompt(conversation, response)},
        ]
        for _attempt in range(self.config.parse_retries + 1):
            body = {"model": judge, "messages": messages, "temperature": 0, "max_tokens": self.config.judge_max_tokens}
            answer = await self.service.json("POST", "/chat/completions", json_body=body)
            text = message_content(answer, self.service, "the judge request")
            score = parse_score(text)
            if score is not None:
                return score
            messages = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": CORRECTION}]
        raise ProviderError(
            f"{self.service.name}'s judge model '{judge}' answered without a readable 0-10 score "
            f"{self.config.parse_retries + 1} time(s); last answer: {text[:200]!r}. Use a judge model that "
            "follows instructions (judge_model in the provider's config)",
            provider=self._id,
        )


def judge_prompt(conversation: str, response: str) -> str:
    return (
        f"<conversation>\n{conversation}\n</conversation>\n\n<response>\n{response}\n</response>\n\nRate the response."
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


async def build(config: TogetherRewardScoringConfig, context: ProviderContext) -> TogetherRewardScoring:
    return TogetherRewardScoring(config, together_service(config, context))
