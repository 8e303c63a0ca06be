"""inline::code-interpreter: the ``code_interpreter`` tool, Python run in a local sandbox.

Only the declaration; the sandbox is probed when a distribution selects the provider. Linux only: the
sandbox uses namespaces (``unshare``) and resource limits. See docs/providers/code-interpreter.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import CodeInterpreterConfig

PROVIDER_TYPE = "inline::code-interpreter"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="tool_runtime",
            provider_type=PROVIDER_TYPE,
            config_class=CodeInterpreterConfig,
            factory="llama_stack.providers.inline.code_interpreter.provider:build",
            description=(
                "code_interpreter: Python in a sandbox (no network, own mount/pid namespaces, CPU, memory, "
                "process, file-size and wall-clock limits)."
            ),
        )
    )
