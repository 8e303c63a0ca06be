"""Config of inline::sentence-transformers: embedding models in the server process."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SentenceTransformersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present, else CPU.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per forward pass.")
    max_batch_texts: int = Field(default=2048, ge=1, description="The most texts one embeddings request may hold.")
    load_in_background: bool = Field(
        default=True,
        description="true: the server serves its other models while these load (seconds of importing torch); "
        "until a model is loaded its calls answer 503 with Retry-After, and /health shows it loading. "
        "false: the stack's start waits for the models, and one that fails to load fails the start.",
    )
