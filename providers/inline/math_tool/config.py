"""Config of inline::math: how big an expression may be, and how long and large its evaluation may grow."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MathToolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(
        default=5.0, gt=0, le=600, description="Seconds one evaluation may run before its worker is killed."
    )
    workers: int = Field(
        default=1, ge=1, le=16, description="Worker processes (each with sympy loaded): evaluations run at once."
    )
    max_queue: int = Field(
        default=32, ge=0, description="Evaluations that may wait for a worker; beyond that a call is answered 503."
    )
    max_memory_mb: int | None = Field(
        default=1024,
        ge=128,
        description="Address space of each worker process in MiB (RLIMIT_AS); null leaves it unlimited.",
    )
    max_expression_length: int = Field(default=1000, ge=1, le=100_000, description="Characters per expression.")
    max_depth: int = Field(
        default=40,
        ge=1,
        le=150,
        description="How deeply brackets (parentheses, lists, calls) in an expression may nest.",
    )
    max_digits: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="Digits a number written in, or a constant power computed by, an expression may have.",
    )
    max_precision: int = Field(
        default=100, ge=1, le=10_000, description="The most significant digits of a numeric answer."
    )
    max_output_chars: int = Field(
        default=4000, ge=100, description="Characters of each answer (exact, numeric) kept; the rest is cut off."
    )
