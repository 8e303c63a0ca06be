"""Checks of a training request that hold for every trainer, local or at a vendor: each a 400 naming the
field, made before any dataset is read, uploaded or trained on.

A trainer calls them among its own checks (what only it cannot honour), in the order it wants problems
reported.
"""

from __future__ import annotations

from typing import Any

from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.post_training import (
    OptimizerConfig,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
    TrainingConfig,
)

TrainingRequest = PostTrainingSFTRequest | PostTrainingRLHFRequest


def refuse_hyperparam_search(hyperparam_search_config: dict[str, Any], *, trainer: str, provider: str) -> None:
    """No trainer searches hyperparameters: one job per setting instead."""
    if hyperparam_search_config:
        raise BadRequestError(
            f"{trainer} has no hyperparameter search: send an empty hyperparam_search_config and start one job "
            "per setting instead",
            provider=provider,
            param="hyperparam_search_config",
        )


def check_learning_rate(optimizer_config: OptimizerConfig, *, provider: str) -> None:
    if optimizer_config.lr <= 0:
        raise BadRequestError("optimizer_config.lr must be above 0", provider=provider, param="optimizer_config.lr")


def check_training_loop(training_config: TrainingConfig, *, provider: str) -> None:
    """At least one epoch of batches of at least one row."""
    if training_config.n_epochs < 1 or training_config.batch_size < 1:
        raise BadRequestError(
            "training_config.n_epochs and batch_size must be at least 1", provider=provider, param="training_config"
        )
