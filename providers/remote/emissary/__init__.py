"""remote::emissary: Emissary's API behind inference, safety, reward scoring and post-training.

Only declarations here; each API's adapter is imported when a distribution selects it (httpx only: no
torch, faiss or llama.cpp). See docs/providers/README.md (emissary-*.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderSpec, hookimpl
from llama_stack.providers.utils.remote import remote_provider_specs

from .config import (
    EmissaryInferenceConfig,
    EmissaryPostTrainingConfig,
    EmissaryRewardScoringConfig,
    EmissarySafetyConfig,
)

PROVIDER_TYPE = "remote::emissary"
_MODULE = "llama_stack.providers.remote.emissary"

_APIS = (
    (
        "inference",
        EmissaryInferenceConfig,
        "Chat and text completion (streaming emulated), embeddings, and fine-tuned models through deployments.",
    ),
    ("safety", EmissarySafetyConfig, "Shields through a classification deployment."),
    ("reward_scoring", EmissaryRewardScoringConfig, "Scores generations with a classifier."),
    (
        "post_training",
        EmissaryPostTrainingConfig,
        "Supervised fine-tuning jobs (and GRPO as an extension), their checkpoints and cancel.",
    ),
)


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    for spec in remote_provider_specs(PROVIDER_TYPE, _MODULE, _APIS):
        if spec.api == Api.post_training:
            # A training request may name a dataset created with /datasets/create by its uuid.
            spec = dataclasses.replace(spec, optional_depends_on=(Api.datasets,))
        register(spec)
