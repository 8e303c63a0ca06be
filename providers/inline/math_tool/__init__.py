"""inline::math: the ``math`` tool: exact and numeric answers with sympy, in a worker process.

Only the declaration; sympy is imported in the worker when a distribution selects the provider. See
docs/providers/math.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import MathToolConfig

PROVIDER_TYPE = "inline::math"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="tool_runtime",
            provider_type=PROVIDER_TYPE,
            config_class=MathToolConfig,
            factory="llama_stack.providers.inline.math_tool.tool:build",
            requirements=("llama-stack-runtime[math]",),
            description="math: exact and numeric answers with sympy (expressions parsed safely, time-limited).",
        )
    )
