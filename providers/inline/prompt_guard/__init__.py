"""inline::prompt-guard: prompt_guard shields by a Prompt Guard classifier (Prompt-Guard-86M) in the server process.

Only the declaration here; torch and transformers are imported when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import PromptGuardConfig

PROVIDER_TYPE = "inline::prompt-guard"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="safety",
            provider_type=PROVIDER_TYPE,
            config_class=PromptGuardConfig,
            factory="llama_stack.providers.inline.prompt_guard.provider:build",
            requirements=("llama-stack-runtime[torch]",),
            description="prompt_guard shields: a local Prompt Guard classifier (BENIGN / INJECTION / JAILBREAK).",
        )
    )
