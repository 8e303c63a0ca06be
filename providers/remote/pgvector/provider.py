"""remote::pgvector: the memory-bank service over a PGVectorStore (PostgreSQL with the pgvector extension)."""

from __future__ import annotations

from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.memory.service import MemoryBanksService

from .config import PGVectorConfig
from .store import PGVectorStore


async def build(config: PGVectorConfig, context: ProviderContext) -> MemoryBanksService:
    """The service, started: connected, the extension and the tables in place (created when missing)."""
    store = PGVectorStore(config, provider_id=context.provider_id)
    service = MemoryBanksService(store, context.deps[Api.inference], config, provider_id=context.provider_id)
    await service.start()
    return service
