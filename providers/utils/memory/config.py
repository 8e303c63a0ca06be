"""Bank defaults every memory-bank provider's config carries; a bank registered with its own settings wins."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MemoryBankDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_model: str = Field(
        default="all-minilm-l6-v2",
        description="The embedding model (a model id of this distribution, model_type embedding) new banks use.",
    )
    chunk_size_tokens: int = Field(
        default=200, ge=16, le=8192, description="Tokens per chunk (200 fits MiniLM's 256 word-piece window)."
    )
    overlap_tokens: int = Field(default=32, ge=0, description="Tokens each chunk repeats from the one before.")
    index: Literal["flat", "hnsw"] = Field(default="flat", description="flat: exact search; hnsw: approximate.")
    hybrid: bool = Field(default=False, description="Merge keyword matches with vector matches by rank.")
    rerank_model: str | None = Field(default=None, description="A rerank model that reorders retrieved chunks.")
    max_document_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="The largest document accepted.")
