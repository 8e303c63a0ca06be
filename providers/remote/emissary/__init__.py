"""remote::emissary: Emissary's API behind inference, safety, reward scoring and post-training.

Only declarations here; each API's adapter is imported when a distribution selects it (httpx only: no
torch, faiss or llama.cpp). See docs/providers/emissary.md.
"""

from __future__ import annotations

from typing import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import EmissaryInferenceConfig, EmissaryPostTrainingConfig, EmissaryRewardScoringConfig, EmissarySafetyConfig

PROVIDER_TYPE = "remote::emissary"
_MODULE = "llama_stack.providers.remote.emissary"

_APIS = (
    ("inference", EmissaryInferenceConfig, "inference",
     "Chat and text completion (streaming emulated), embeddings, and fine-tuned models through deployments."),
    ("safety", EmissarySafetyConfig, "safety", "Shields through a classification deployment."),
    ("reward_scoring", EmissaryRewardScoringConfig, "reward_scoring", "Scores generations with a classifier."),
    ("post_training", EmissaryPostTrainingConfig, "post_training",
     "Supervised fine-tuning jobs (and GRPO as an extension), their checkpoints and cancel."),
)


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    for api, config_class, module, description in _APIS:
        register(
            ProviderSpec(
                api=api,
                provider_type=PROVIDER_TYPE,
                config_class=config_class,
                factory=f"{_MODULE}.{module}:build",
                description=description,
            )
        )
