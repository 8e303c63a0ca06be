"""Configs of the local shields: inline::llama-guard and inline::code-shield (cheap to import: pydantic only)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_stack.providers.utils.inference.attachments import AttachmentConfig

# Llama Guard 3's category codes, S1..S14.
CategoryCode = Annotated[str, Field(pattern=r"^\s*[Ss]([1-9]|1[0-4])\s*$")]


class LlamaGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        description=(
            "The model_id (or alias) of the distribution's Llama Guard model, e.g. a Llama-Guard-3-1B GGUF served "
            "by inline::llama-cpp. The shield sends it the whole guard prompt as a text completion."
        ),
    )
    excluded_categories: list[CategoryCode] = Field(
        default_factory=list,
        description=(
            "Categories (S1..S14) left out of the guard prompt and ignored in its verdicts; a request's "
            "params.excluded_categories adds more."
        ),
    )

    @field_validator("excluded_categories")
    @classmethod
    def _not_every_category(cls, codes: list[str]) -> list[str]:
        if len({code.strip().upper() for code in codes}) >= 14:
            raise ValueError("every category S1..S14 is excluded: the shield would check nothing")
        return codes

    describe_categories: bool = Field(
        default=False,
        description=(
            "Put a one-line description under each category's name in the prompt. Llama Guard 3 was trained on "
            "the names alone; descriptions help guard models that were not."
        ),
    )
    max_tokens: int = Field(
        default=20,
        ge=4,
        le=256,
        description="The most tokens the verdict may use ('unsafe' and a line of codes fit in about 20).",
    )
    max_messages: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="The most recent messages put into the prompt; older ones are left out (the verdict is on the last).",
    )
    max_chars: int = Field(
        default=16_000,
        ge=100,
        le=4_000_000,
        description=(
            "The most characters of conversation put into the prompt: older messages are left out to fit; a last "
            "message longer than this alone is a violation (it cannot be checked), never a pass."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in checked messages are read (images are refused: the guard reads text).",
    )


class CodeShieldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_whole_messages: bool = Field(
        default=False,
        description=(
            "Scan each message's whole text as code, not only its fenced code blocks; a request's "
            "params.scan_whole_messages overrides it."
        ),
    )
    max_code_chars: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="The most characters of code scanned per request; more is a violation (not scanned, not passed).",
    )
    max_blocks: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="The most pieces of code (fenced blocks, tool-call code) scanned per request; more is a violation.",
    )
    timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="Seconds a scan may take (pattern matching and semgrep together); past it the scan is a violation.",
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in scanned messages are read (images are refused: the scanner reads text).",
    )
