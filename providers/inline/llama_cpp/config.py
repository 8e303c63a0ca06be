"""Configuration of inline::llama-cpp (no heavy imports: the runtime validates it before building)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.providers.utils.inference.attachments import AttachmentConfig


class LlamaCppConfig(BaseModel):
    """The ``config:`` block of an ``inline::llama-cpp`` provider; it applies to every model it serves."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(
        default=2048,
        ge=0,
        description=(
            "Context window in tokens (prompt plus answer); 0 uses the model's training context. "
            "llama.cpp rounds it up to a multiple of 256."
        ),
    )
    n_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for generation; unset uses llama.cpp's default (half the CPU cores).",
    )
    n_batch: int = Field(
        default=512,
        ge=1,
        description="Prompt tokens evaluated per llama.cpp decode call.",
    )
    max_queue: int = Field(
        default=16,
        ge=0,
        description=(
            "How many requests may wait per model beyond the one being generated (llama.cpp decodes one "
            "request at a time per model); a request beyond that is refused with 503 Service Unavailable."
        ),
    )
    repack_weights: bool = Field(
        default=False,
        description=(
            "Let llama.cpp move weights into its CPU 'extra' buffer types (repacked for AVX512/AMX kernels). Off by "
            "default: on CPUs with AMX (Sapphire Rapids and later) llama-cpp-python 0.3.36 crashes (SIGSEGV) in "
            "them on any prompt of more than one token."
        ),
    )
    verbose: bool = Field(
        default=False,
        description="Let llama.cpp log model loading and timings to stderr.",
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description=(
            "Where text attachments may come from (file:// roots; http(s):// only with allow_http, to public "
            "hosts or allowed_hosts; size limit, timeout and deadline); their text is inlined into the prompt."
        ),
    )
