"""Reward scoring: score sampled generations of dialogs with a reward model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import Field

from .common import Dialog, Message, Schema
from .dispatch import ByModel, dispatch
from .routes import webmethod

# Bounds checked before any scoring starts: each generation costs a judge's or a reward model's forward pass.
MAX_PROMPTS = 4096
MAX_GENERATIONS = 128


class DialogGenerations(Schema):
    """A dialog and k generations sampled for it."""

    dialog: Dialog
    k_generations: list[Message] = Field(max_length=MAX_GENERATIONS, description=f"At most {MAX_GENERATIONS}.")


class ScoredMessage(Schema):
    message: Message
    score: float


class KScoredPromptGenerations(Schema):
    prompt: Message
    k_scored_generations: list[ScoredMessage] = Field(default_factory=list)


class RewardScoringRequest(Schema):
    """Request to score a reward function. A list of prompts and a list of responses per prompt."""

    prompt_generations: list[DialogGenerations] = Field(max_length=MAX_PROMPTS, description=f"At most {MAX_PROMPTS}.")
    # The seed enumerates llama3_405b_reward; any model id the distribution serves is accepted.
    model: str = Field(description="A reward model id the distribution serves.")


class RewardScoringResponse(Schema):
    """Response from the reward scoring. Batch of (prompt, response, score) tuples that pass the threshold."""

    scored_generations: list[KScoredPromptGenerations] = Field(default_factory=list)


@runtime_checkable
class RewardScoring(Protocol):
    @webmethod("POST", "/reward_scoring/score")
    @dispatch(ByModel())
    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        """Score each dialog's generations with a reward model."""
        ...
