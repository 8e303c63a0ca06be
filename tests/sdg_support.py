"""Test-only providers that make synthetic data generation deterministic.

``inline::canned`` (inference) answers the j-th chat call for a prompt with the j-th entry of the prompt's
script (``metadata: {scripts: {prompt text: [answers]}}``, repeating the last one), and records what it was
asked; ``inline::canned-batch`` does the same and also serves batch_chat_completion. ``inline::canned-scorer``
(reward scoring) reads a generation's score from its text: ``score=<number>`` (``nan`` included), else 0.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from llama_stack.apis.common import Content
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.reward_scoring import (
    KScoredPromptGenerations,
    RewardScoringRequest,
    RewardScoringResponse,
    ScoredMessage,
)
from llama_stack.plugins import ProviderSpec, hookimpl

MODEL = "canned-model"
SCORER = "canned-scorer"
_SCORE = re.compile(r"score=(\S+)")


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def text_of(content: Content) -> str:
    return content if isinstance(content, str) else str(content)


class CannedInference:
    def __init__(self) -> None:
        self.scripts: dict[str, dict[str, list[str]]] = {}
        self.seen: dict[tuple[str, str], int] = {}
        self.calls: list[ChatCompletionRequest] = []

    async def register_model(self, model: Model) -> None:
        self.scripts[model.model_id] = dict(model.metadata.get("scripts", {}))

    def _answer(self, model: str, prompt: str) -> str:
        script = self.scripts[model].get(prompt, [f"An answer to {prompt}"])
        j = self.seen.get((model, prompt), 0)
        self.seen[(model, prompt)] = j + 1
        return script[min(j, len(script) - 1)]

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        return CompletionResponse(content=self._answer(request.model, text_of(request.content)))

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        self.calls.append(request)
        return ChatCompletionResponse(content=self._answer(request.model, text_of(request.dialog.message.content)))


class CannedBatchInference(CannedInference):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[BatchChatCompletionRequest] = []

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        self.batches.append(request)
        return [
            ChatCompletionResponse(content=self._answer(request.model, text_of(d.message.content)))
            for d in request.batch_dialogs
        ]


class CannedScorer:
    def __init__(self) -> None:
        self.requests: list[RewardScoringRequest] = []

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        self.requests.append(request)
        return RewardScoringResponse(
            scored_generations=[
                KScoredPromptGenerations(
                    prompt=item.dialog.message,
                    k_scored_generations=[
                        ScoredMessage(message=g, score=_score(text_of(g.content))) for g in item.k_generations
                    ],
                )
                for item in request.prompt_generations
            ]
        )


def _score(text: str) -> float:
    found = _SCORE.search(text)
    return float(found.group(1)) if found else 0.0


def build_canned(config: EmptyConfig, context: Any) -> CannedInference:
    return CannedInference()


def build_canned_batch(config: EmptyConfig, context: Any) -> CannedBatchInference:
    return CannedBatchInference()


def build_scorer(config: EmptyConfig, context: Any) -> CannedScorer:
    return CannedScorer()


class CannedPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        for api, provider_type, factory in (
            ("inference", "inline::canned", "sdg_support:build_canned"),
            ("inference", "inline::canned-batch", "sdg_support:build_canned_batch"),
            ("reward_scoring", "inline::canned-scorer", "sdg_support:build_scorer"),
        ):
            register(
                ProviderSpec(
                    api=api, provider_type=provider_type, config_class=EmptyConfig, factory=factory, description="Test."
                )
            )


CANNED_PLUGIN = CannedPlugin()


def sdg_distribution(
    directory: Path,
    scripts: dict[str, list[str]],
    *,
    batches: bool = True,
    sdg_config: dict[str, Any] | None = None,
    with_datasets: bool = True,
) -> Path:
    apis = ["inference", "reward_scoring", "synthetic_data_generation"] + (["datasets"] if with_datasets else [])
    providers: dict[str, Any] = {
        "inference": [
            {
                "provider_id": "canned",
                "provider_type": "inline::canned-batch" if batches else "inline::canned",
                "config": {},
            }
        ],
        "reward_scoring": [{"provider_id": "scorer", "provider_type": "inline::canned-scorer", "config": {}}],
        "synthetic_data_generation": [
            {
                "provider_id": "sdg",
                "provider_type": "inline::synthetic-data",
                "config": {"model": MODEL, "reward_model": SCORER, **(sdg_config or {})},
            }
        ],
    }
    if with_datasets:
        providers["datasets"] = [{"provider_id": "datasets", "provider_type": "inline::datasets", "config": {}}]
    document = {
        "name": "sdg-test",
        "apis": apis,
        "providers": providers,
        "models": [
            {"model_id": MODEL, "provider_id": "canned", "metadata": {"scripts": scripts}},
            {"model_id": SCORER, "provider_id": "scorer", "model_type": "reward"},
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "sdg.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
