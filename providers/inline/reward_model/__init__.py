"""inline::reward-model: reward scoring by sequence-classification reward models read from local folders.

Only the declaration here; torch and transformers are imported on the thread that loads a distribution's
reward models (in the background by default).
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import RewardModelConfig

PROVIDER_TYPE = "inline::reward-model"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="reward_scoring",
            provider_type=PROVIDER_TYPE,
            config_class=RewardModelConfig,
            factory="llama_stack.providers.inline.reward_model.provider:build",
            requirements=("llama-stack-runtime[torch]",),
            description="Reward scoring by local sequence-classification reward models (transformers), batched.",
        )
    )
