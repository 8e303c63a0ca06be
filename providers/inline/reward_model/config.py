"""Config of inline::reward-model (no heavy imports: the runtime validates it before building)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.providers.utils.inference.attachments import AttachmentConfig


class RewardModelConfig(BaseModel):
    """The ``config:`` block of an ``inline::reward-model`` provider; it applies to every reward model it serves."""

    model_config = ConfigDict(extra="forbid")

    model_roots: list[Path] | None = Field(
        default=None,
        description=(
            "Folders the model entries' provider_model_id must lie inside (links and '..' resolved); a folder "
            "elsewhere fails the start. Unset: any local folder the distribution's YAML names."
        ),
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
        description="Where the models run: 'auto' (the first CUDA GPU when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "The weights' type: 'auto' is float32 on the CPU and bfloat16 on a CUDA GPU that supports it "
            "(float16 on one that does not). Scores are computed from the logits in float32 either way."
        ),
    )
    batch_size: int = Field(
        default=8, ge=1, le=1024, description="(dialog, generation) pairs per forward pass; a request runs in batches."
    )
    max_length: int = Field(
        default=2048,
        ge=8,
        description=(
            "The most tokens of one (dialog, generation) pair the model reads; longer ones lose their oldest tokens "
            "(the start of the dialog), so that the generation being scored is kept. The model's own limit (its "
            "max_position_embeddings) wins when smaller; a model entry's metadata.max_length sets its own."
        ),
    )
    max_pairs: int = Field(
        default=1024,
        ge=1,
        description="The most generations (all prompts' k_generations together) one request may score; more is a 400.",
    )
    max_request_chars: int = Field(
        default=4_000_000,
        ge=1,
        description=(
            "The most characters one request may hand the model, each generation counted with its dialog (a dialog "
            "with k generations is read k times); more is a 400, before anything is tokenized."
        ),
    )
    max_queue: int = Field(
        default=16,
        ge=0,
        description=(
            "Requests that may wait per model while another is scored (one runs at a time); beyond that a request "
            "is refused with 503."
        ),
    )
    load_in_background: bool = Field(
        default=True,
        description=(
            "true: the server serves its other models while these load; until a model is loaded its calls answer "
            "503 with Retry-After, and /health shows it loading. false: the stack's start waits for the models, and "
            "one that fails to load fails the start."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in messages are fetched and put into the text the model reads.",
    )
