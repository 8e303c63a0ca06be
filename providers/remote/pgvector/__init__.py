"""remote::pgvector: memory banks in PostgreSQL + pgvector, for several servers sharing state.

Only the declaration; psycopg is imported when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import PGVectorConfig

PROVIDER_TYPE = "remote::pgvector"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="memory_banks",
            provider_type=PROVIDER_TYPE,
            config_class=PGVectorConfig,
            factory="llama_stack.providers.remote.pgvector.provider:build",
            depends_on=("inference",),
            requirements=("llama-stack-runtime[pgvector]",),
            description="Memory banks in PostgreSQL with pgvector (exact or HNSW), full-text search and filters.",
        )
    )
