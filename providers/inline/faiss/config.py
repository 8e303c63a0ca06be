"""Config of inline::faiss: memory banks in SQLite (documents, chunks, vectors) with faiss indexes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from llama_stack.providers.utils.memory.config import MemoryBankDefaults


class FaissConfig(MemoryBankDefaults):
    db_path: Path | None = Field(
        default=None, description="The SQLite file; unset: memory.sqlite in the provider's storage directory."
    )
    hnsw_m: int = Field(
        default=32,
        ge=4,
        le=128,
        description="HNSW banks: graph neighbours per vector (more: better recall, more memory).",
    )
    hnsw_ef_construction: int = Field(
        default=64,
        ge=8,
        le=2048,
        description="HNSW banks: candidates considered while inserting (more: better graph, slower inserts).",
    )
    hnsw_ef_search: int = Field(
        default=128,
        ge=1,
        le=8192,
        description="HNSW banks: candidates considered per query (more: better recall, slower queries).",
    )
    index_save_changes: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Save a bank's index file after this many vectors were added or removed since its last save (and at "
            "least a tenth of the bank); a restart then only catches up on the changes since."
        ),
    )
