"""Reward scoring on remote::emissary: a reward-classifier deployment scores each generation.

The request's ``model`` names the classification deployment. Each (dialog, generation) pair is one
``POST /v1/classification {model, input, data_format: "probs"}`` whose input is the conversation and the
generation as a transcript (``user: ...``, blank line, ``assistant: <generation>``); the score is the
probability of ``config.score_label``, or, when unset, of the last label the classifier reports (a
binary reward classifier lists its "good" label last: LABEL_0/LABEL_1, rejected/chosen). Scores are
therefore between 0 and 1. Emissary can train regression models but serves no endpoint for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from llama_stack.apis.common import Message
from llama_stack.apis.errors import NotFoundError, ProviderError
from llama_stack.apis.reward_scoring import (
    KScoredPromptGenerations,
    RewardScoringRequest,
    RewardScoringResponse,
    ScoredMessage,
)
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError

from .config import EmissaryRewardScoringConfig
from .safety import bounded_all, class_probabilities, message_contents, message_text
from .service import emissary_service


class EmissaryRewardScoring:
    def __init__(self, config: EmissaryRewardScoringConfig, service: RemoteService):
        self.config = config
        self.service = service
        self._inliner = AttachmentInliner(config.attachments)

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        contents = []
        for i, item in enumerate(request.prompt_generations):
            at = f"prompt_generations[{i}]"
            contents += message_contents([*item.dialog.message_history, item.dialog.message], f"{at}.dialog.messages")
            contents += message_contents(item.k_generations, f"{at}.k_generations")
        texts = await self._inliner.fetch(contents, model=request.model)

        calls: list[Callable[[], Awaitable[float]]] = []
        for i, item in enumerate(request.prompt_generations):
            at = f"prompt_generations[{i}]"
            conversation = transcript([*item.dialog.message_history, item.dialog.message], f"{at}.dialog.messages", texts)
            for j, generation in enumerate(item.k_generations):
                response = message_text(generation, f"{at}.k_generations[{j}]", texts)
                text = f"{conversation}\n\nassistant: {response}" if conversation else f"assistant: {response}"
                calls.append(partial(self._score, request.model, text))
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

    async def _score(self, model: str, text: str) -> float:
        body = {"model": model, "input": text, "data_format": "probs"}
        try:
            answer = await self.service.json("POST", "/v1/classification", json_body=body)
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise NotFoundError(
                f"{self.service.name} has no classification deployment '{model}' (404: {exc.vendor_message}); "
                "model must name a deployed reward classifier",
                param="model",
                provider=self.service.provider_id,
            ) from None
        probs = class_probabilities(answer, self.service)
        label = self.config.score_label
        if label is None:
            return list(probs.values())[-1]
        if label not in probs:
            raise ProviderError(
                f"{self.service.name}'s classifier '{model}' reports the labels {', '.join(probs)}, not the "
                f"score_label '{label}'; set score_label in the provider's config to one of them",
                provider=self.service.provider_id,
            )
        return probs[label]


def transcript(messages: list[Message], where: str, texts: InlinedAttachments) -> str:
    """The dialog as ``role: text`` turns (system prompts included: they frame what a good answer is)."""
    return "\n\n".join(
        f"{message.role.value}: {message_text(message, f'{where}[{index}]', texts)}"
        for index, message in enumerate(messages)
    )


async def build(config: EmissaryRewardScoringConfig, context: ProviderContext) -> EmissaryRewardScoring:
    return EmissaryRewardScoring(config, emissary_service(config, context))
