"""inline::faiss: the memory-bank service over a FaissStore (SQLite + faiss indexes) in the provider's storage."""

from __future__ import annotations

from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.memory.service import MemoryBanksService

from .config import FaissConfig
from .store import FaissStore


async def build(config: FaissConfig, context: ProviderContext) -> MemoryBanksService:
    """The service, started: the SQLite database opened and every bank's index loaded (or caught up)."""
    store = FaissStore.from_config(config, context.storage_dir)
    service = MemoryBanksService(store, context.deps[Api.inference], config, provider_id=context.provider_id)
    await service.start()
    return service
