"""inline::faiss: memory banks on this machine: SQLite keeps documents, chunks and vectors; faiss searches them.

Only the declaration; faiss and numpy are imported when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import FaissConfig

PROVIDER_TYPE = "inline::faiss"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="memory_banks",
            provider_type=PROVIDER_TYPE,
            config_class=FaissConfig,
            factory="llama_stack.providers.inline.faiss.provider:build",
            depends_on=("inference",),
            requirements=("llama-stack-runtime[faiss]",),
            description="Memory banks in SQLite with faiss indexes (exact or HNSW), keyword search and filters.",
        )
    )
