"""Reward scoring on remote::emissary: a reward-classifier deployment scores each generation.

The request's ``model`` names the classification deployment. Each (dialog, generation) pair is one
``POST /v1/classification {model, input, data_format: "probs"}`` whose input is the conversation and the
generation as a transcript (``user: ...``, blank line, ``assistant: <generation>``); the score is the
probability of ``config.score_label``, or, when unset, of the last label the classifier reports (a
binary reward classifier lists its "good" label last: LABEL_0/LABEL_1, rejected/chosen). Scores are
therefore between 0 and 1. Emissary can train regression models but serves no endpoint for them.
"""

from __future__ import annotations

from functools import partial

from llama_stack.apis.errors import NotFoundError, ProviderError
from llama_stack.apis.reward_scoring import RewardScoringRequest, RewardScoringResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.reward_scoring import score_generations

from .classification import classify
from .config import EmissaryRewardScoringConfig
from .service import emissary_service


class EmissaryRewardScoring(RemoteAdapter[EmissaryRewardScoringConfig]):
    def __init__(self, config: EmissaryRewardScoringConfig, service: RemoteService):
        super().__init__(config, service)
        self._inliner = AttachmentInliner(config.attachments)

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        # The dialog as ``role: text`` turns (system prompts included: they frame what a good answer is).
        return await score_generations(
            request,
            self._inliner,
            partial(self._score, request.model),
            model=request.model,
            turn="{role}: {text}",
            limit=self.config.max_concurrency,
        )

    async def _score(self, model: str, conversation: str, response: str) -> float:
        text = f"{conversation}\n\nassistant: {response}" if conversation else f"assistant: {response}"
        probs = await classify(self.service, model, text, missing=partial(self._missing_deployment, model))
        label = self.config.score_label
        if label is None:
            return list(probs.values())[-1]
        if label not in probs:
            raise ProviderError(
                f"{self.service.name}'s classifier '{model}' reports the labels {', '.join(probs)}, not the "
                f"score_label '{label}'; set score_label in the provider's config to one of them",
                provider=self._id,
            )
        return probs[label]

    def _missing_deployment(self, model: str, exc: VendorStatusError) -> NotFoundError:
        # The request named the deployment, so this is the caller's mistake (404 on ``model``).
        return NotFoundError(
            f"{self.service.name} has no classification deployment '{model}' (404: {exc.vendor_message}); "
            "model must name a deployed reward classifier",
            param="model",
            provider=self._id,
        )


async def build(config: EmissaryRewardScoringConfig, context: ProviderContext) -> EmissaryRewardScoring:
    return EmissaryRewardScoring(config, emissary_service(config, context))
