"""Synthetic data generation: sample generations for prompts, score them, keep those that pass a filter.

The seed's request names the prompts, the filtering function and an untyped ``reward_scoring`` object. The
extensions below say what the seed leaves to the provider: which model generates and how (``model``,
``num_generations``, ``sampling_params``, ``max_tokens``), which model scores (``reward_scoring.model``), the
filter's parameters (``filtering_params``), where the results go (``save``: datasets that post-training takes)
and whether progress streams (``stream``). Each defaults to the provider's config.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, Message, ProviderId, Schema
from .datasets import DatasetId
from .dispatch import FirstProvider, dispatch
from .inference import MAX_TOKENS_LIMIT, SamplingParams
from .reward_scoring import KScoredPromptGenerations
from .routes import webmethod

FilteringFunction = Literal["none", "random", "top_k", "top_p", "top_k_top_p", "sigmoid"]

# Bounds checked before the first generation: each prompt costs num_generations generations and as many scores.
MAX_PROMPTS = 1024
MAX_GENERATIONS_PER_PROMPT = 32


class RewardScoringSettings(Schema):
    """The seed's ``reward_scoring`` object: how the generations are scored."""

    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="A reward model the distribution serves (/reward_scoring/score); unset: the provider's.",
    )


class FilteringParams(Schema):
    """Extension: the parameters of the filtering functions (each reads only its own; see the provider's docs).

    Every function works on one prompt's scored generations at a time.
    """

    k: int = Field(
        default=1, ge=1, le=MAX_GENERATIONS_PER_PROMPT, description="top_k, top_k_top_p, random: how many to keep."
    )
    p: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="top_p, top_k_top_p: the share of the score mass to keep (0: the best only).",
    )
    temperature: float = Field(
        default=1.0,
        gt=0.0,
        le=1000.0,
        description="top_p, top_k_top_p: the softmax temperature of the scores; sigmoid: its scale.",
    )
    center: float = Field(default=0.5, ge=-1e6, le=1e6, description="sigmoid: the score kept with probability 1/2.")
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="random, sigmoid: makes the draw repeatable."
    )


class SaveSettings(Schema):
    """Extension: keep the results as datasets (inline::datasets) that post-training takes by uuid."""

    dataset_uuid: DatasetId | None = Field(
        default=None,
        description="The kept generations as rows of a 'dialog' column (the prompt and the generation) with their 'score'.",
    )
    preference_dataset_uuid: DatasetId | None = Field(
        default=None,
        description=(
            "Per prompt, its best and its worst generation (before filtering) as 'chosen' and 'rejected' dialogs, "
            "for DPO; prompts whose generations all score the same are left out."
        ),
    )
    provider_id: ProviderId | None = Field(
        default=None, description="The datasets provider that keeps them; unset: the first."
    )


class SyntheticDataGenerationRequest(Schema):
    """Request to generate synthetic data. A small batch of prompts and a filtering function"""

    prompts: list[Message] = Field(max_length=MAX_PROMPTS, description=f"At most {MAX_PROMPTS}.")
    filtering_function: FilteringFunction = Field(default="none", title="The type of filtering function.")
    # The seed leaves this an untyped, optional object: how to score the generations.
    reward_scoring: RewardScoringSettings | None = None
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Extension: the model that generates; unset: the provider's.",
    )
    num_generations: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GENERATIONS_PER_PROMPT,
        description="Extension: generations per prompt (k); unset: the provider's.",
    )
    sampling_params: SamplingParams | None = Field(
        default=None, description="Extension: how each generation samples; unset: the provider's."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description="Extension: the most tokens per generation; unset: the provider's.",
    )
    filtering_params: FilteringParams = Field(default_factory=FilteringParams)
    save: SaveSettings | None = None
    stream: bool = Field(default=False, description="Extension: progress events while generating, then the result.")


class SyntheticDataGenerationResponse(Schema):
    """Response from the synthetic data generation. Batch of (prompt, response, score) tuples that pass the threshold."""

    synthetic_data: list[KScoredPromptGenerations] = Field(default_factory=list)
    statistics: JsonObject | None = None


class GenerationProgress(Schema):
    """Extension: how far a generation run is."""

    prompts_done: int
    prompts_total: int
    generations_done: int
    generations_per_second: float
    elapsed_s: float


class SyntheticDataGenerationStreamChunk(Schema):
    """Extension: one event of a streamed run: progress while it runs, then the result (the last chunk)."""

    event: Literal["progress", "result"]
    progress: GenerationProgress | None = None
    result: SyntheticDataGenerationResponse | None = None


@runtime_checkable
class SyntheticDataGeneration(Protocol):
    @webmethod("POST", "/synthetic_data_generation/generate", streams=True)
    @dispatch(FirstProvider())
    async def generate(
        self, request: SyntheticDataGenerationRequest
    ) -> SyntheticDataGenerationResponse | AsyncIterator[SyntheticDataGenerationStreamChunk]:
        """Generate and score responses to the prompts; answers those that pass the filter."""
        ...
