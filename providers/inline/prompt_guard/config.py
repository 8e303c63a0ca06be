"""Configuration of inline::prompt-guard (no heavy imports: the runtime validates it before building)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_stack.providers.utils.inference.attachments import AttachmentConfig

# What the shield classifies: see docs/providers/prompt-guard.md.
Scope = Literal["last_user", "user", "user_and_tool"]


class PromptGuardConfig(BaseModel):
    """The ``config:`` block of an ``inline::prompt-guard`` provider."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path = Field(
        description=(
            "A local directory holding a transformers sequence-classification model whose labels are BENIGN, "
            "INJECTION and JAILBREAK (Prompt-Guard-86M's): config.json, the weights and the tokenizer. Nothing is "
            "downloaded."
        ),
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
        description="Where the classifier runs: 'auto' (the first CUDA GPU when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    jailbreak_threshold: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="A JAILBREAK probability at or above this is a violation; requests may override it in params.",
    )
    injection_threshold: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="An INJECTION probability at or above this is a violation; requests may override it in params.",
    )
    scope: Scope = Field(
        default="user",
        description=(
            "Which messages are classified: 'user' (every user message, the default), 'last_user' (the last user "
            "message only), or 'user_and_tool' (user messages and what tools returned, where indirect injections "
            "arrive). System and assistant messages are never classified."
        ),
    )
    window_tokens: int = Field(
        default=512,
        ge=8,
        description=(
            "Tokens per window, special tokens included; a longer text is scanned in overlapping windows and its "
            "score per label is the highest of its windows. At most the model's own input limit."
        ),
    )
    window_overlap: int = Field(
        default=64,
        ge=0,
        description="Tokens each window shares with the one before it, so a phrase cut by a window's edge is seen whole.",
    )
    batch_size: int = Field(default=8, ge=1, le=256, description="Windows classified per forward pass.")
    max_input_chars: int = Field(
        default=100_000,
        ge=1,
        description="The most characters one request may give the classifier (all messages it classifies); more is a 400.",
    )
    max_windows: int = Field(
        default=128,
        ge=1,
        description="The most windows one request may need (after tokenizing); more is a 400, before the model runs.",
    )
    max_queue: int = Field(
        default=16,
        ge=0,
        description=(
            "Requests that may wait while another is classified (one runs at a time); beyond that a request is "
            "refused with 503 and Retry-After."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in messages are fetched and classified with the message.",
    )

    @model_validator(mode="after")
    def _overlap_leaves_progress(self) -> PromptGuardConfig:
        # Each window must move past the last by at least half a window, or long texts need twice the windows.
        if self.window_overlap > self.window_tokens // 2:
            raise ValueError(
                f"window_overlap ({self.window_overlap}) must be at most half of window_tokens ({self.window_tokens})"
            )
        return self
