"""Config of inline::faiss: memory banks in SQLite (documents, chunks, vectors) with faiss indexes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from llama_stack.providers.utils.memory.config import MemoryBankDefaults


class FaissConfig(MemoryBankDefaults):
    db_path: Path | None = Field(
        default=None, description="The SQLite file; unset: memory.sqlite in the provider's storage directory."
    )
