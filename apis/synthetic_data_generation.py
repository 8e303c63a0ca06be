"""Synthetic data generation: sample generations for prompts, score them, keep those that pass a filter."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, Message, Schema
from .dispatch import FirstProvider, dispatch
from .reward_scoring import KScoredPromptGenerations
from .routes import webmethod

FilteringFunction = Literal["none", "random", "top_k", "top_p", "top_k_top_p", "sigmoid"]


class SyntheticDataGenerationRequest(Schema):
    """Request to generate synthetic data. A small batch of prompts and a filtering function"""

    prompts: list[Message]
    filtering_function: FilteringFunction = Field(default="none", title="The type of filtering function.")
    # The seed leaves this an untyped, optional object: how to score the generations (e.g. the reward model).
    reward_scoring: JsonObject | None = None


class SyntheticDataGenerationResponse(Schema):
    """Response from the synthetic data generation. Batch of (prompt, response, score) tuples that pass the threshold."""

    synthetic_data: list[KScoredPromptGenerations] = Field(default_factory=list)
    statistics: JsonObject | None = None


@runtime_checkable
class SyntheticDataGeneration(Protocol):
    @webmethod("POST", "/synthetic_data_generation/generate")
    @dispatch(FirstProvider())
    async def generate(self, request: SyntheticDataGenerationRequest) -> SyntheticDataGenerationResponse:
        """Generate and score responses to the prompts; answers those that pass the filter."""
        ...
