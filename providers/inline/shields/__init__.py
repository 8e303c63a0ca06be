"""Local safety shields: inline::llama-guard (a Llama Guard model the distribution serves judges the conversation)
and inline::code-shield (CodeShield's rules scan the code in messages).

Only declarations here; each shield's module is imported when a distribution selects it, and codeshield (with
semgrep) only when inline::code-shield is built. See docs/providers/llama-guard.md and code-shield.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import CodeShieldConfig, LlamaGuardConfig

_MODULE = "llama_stack.providers.inline.shields"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="safety",
            provider_type="inline::llama-guard",
            config_class=LlamaGuardConfig,
            factory=f"{_MODULE}.llama_guard:build",
            depends_on=("inference",),
            description="llama_guard shields: the Llama Guard 3 prompt sent to a guard model the distribution serves.",
        )
    )
    register(
        ProviderSpec(
            api="safety",
            provider_type="inline::code-shield",
            config_class=CodeShieldConfig,
            factory=f"{_MODULE}.code_shield:build",
            requirements=("llama-stack-runtime[code-shield]",),
            description="code_guard shields: CodeShield's insecure-code rules (regex and semgrep) over code in messages.",
        )
    )
