"""Config of inline::sentence-transformers: embedding models in the server process."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SentenceTransformersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present, else CPU.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per forward pass.")
    max_batch_texts: int = Field(default=2048, ge=1, description="The most texts one embeddings request may hold.")
