"""remote::together: Together's hosted API behind inference, safety, post-training, reward scoring and tools.

Only declarations here; each API's adapter is imported when a distribution selects it. The adapters need
nothing beyond the runtime's core dependencies (httpx), so a remote-only install pulls in no torch, faiss
or llama.cpp. See docs/providers/README.md (together-*.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderSpec, hookimpl
from llama_stack.providers.utils.remote import remote_provider_specs

from .config import (
    TogetherInferenceConfig,
    TogetherPostTrainingConfig,
    TogetherRewardScoringConfig,
    TogetherSafetyConfig,
    TogetherToolRuntimeConfig,
)

PROVIDER_TYPE = "remote::together"
_MODULE = "llama_stack.providers.remote.together"

_APIS = (
    (
        "inference",
        TogetherInferenceConfig,
        "Chat and text completion (streaming, tools, logprobs), embeddings and rerank on Together's models.",
    ),
    ("safety", TogetherSafetyConfig, "llama_guard shields through a Together moderation model."),
    (
        "post_training",
        TogetherPostTrainingConfig,
        "Supervised fine-tuning (full, LoRA) and DPO as Together fine-tuning jobs, with file upload.",
    ),
    ("reward_scoring", TogetherRewardScoringConfig, "Scores generations with a judge prompt."),
    (
        "tool_runtime",
        TogetherToolRuntimeConfig,
        "image_gen through Together's image models, code_interpreter through its code execution sandbox.",
    ),
)


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    for spec in remote_provider_specs(PROVIDER_TYPE, _MODULE, _APIS):
        if spec.api == Api.post_training:
            # A training request may name a dataset created with /datasets/create by its uuid.
            spec = dataclasses.replace(spec, optional_depends_on=(Api.datasets,))
        register(spec)
