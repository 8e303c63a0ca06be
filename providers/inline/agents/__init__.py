"""inline::agents: the agentic system in the server process. A turn runs the agent's input shields, retrieves from
its memory banks, calls its model, runs the built-in tools the model calls (through the tool runtime) until the
model answers, then runs its output shields; every step is recorded and, with ``stream: true``, streamed as it
happens. Agents are kept in SQLite. See docs/providers/agents.md.

Only the declaration; the implementation is imported when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import AgentsConfig

PROVIDER_TYPE = "inline::agents"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="agentic_system",
            provider_type=PROVIDER_TYPE,
            config_class=AgentsConfig,
            factory="llama_stack.providers.inline.agents.provider:build",
            depends_on=("inference",),
            optional_depends_on=("memory_banks", "safety", "tool_runtime"),
            description="Agents: shields, memory retrieval, model calls and tool round trips per turn, kept in SQLite.",
        )
    )
