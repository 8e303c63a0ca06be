"""What a step minimises, one micro-batch at a time: the summed loss of its rows (the loop divides by the
whole batch's count, so that micro-batches and processes add up to the loss of the batch) and what it tells.

SFT: the cross-entropy of each loss-carrying token (count: those tokens). DPO: :mod:`.dpo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .data import IGNORE, Batch, Example, Item, collate


@dataclass
class Sums:
    """Sums over rows: the loss and whatever else a step reports (added over micro-batches and processes)."""

    loss: float = 0.0
    tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, other: Sums) -> None:
        self.loss += other.loss
        self.tokens += other.tokens
        for name, value in other.extra.items():
            self.extra[name] = self.extra.get(name, 0.0) + value


class Objective(Protocol):
    def count(self, items: Sequence[Item]) -> float:
        """What the loss is a mean over, in these rows (loss tokens, or pairs)."""
        ...

    def losses(self, model: Any, items: Sequence[Item]) -> tuple[torch.Tensor, Sums]:
        """A forward pass: the summed loss of the rows (to back-propagate) and its sums."""
        ...


def token_losses(model: Any, batch: Batch) -> torch.Tensor:
    """Each row's summed cross-entropy over its loss-carrying tokens, (rows,)."""
    # No cache: it is for generation, and training would only spend memory on it.
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    # Position i predicts token i + 1: the labels move left (the last position predicts nothing) rather than
    # the logits right, which would copy the largest tensor of the step.
    targets = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return losses.view(targets.shape).sum(dim=1)


class SFT:
    def __init__(self, pad_id: int, device: torch.device):
        self.pad_id = pad_id
        self.device = device

    def count(self, items: Sequence[Item]) -> float:
        return float(sum(item.loss_tokens for item in items))

    def losses(self, model: Any, items: Sequence[Item]) -> tuple[torch.Tensor, Sums]:
        examples = [item for item in items if isinstance(item, Example)]
        loss = token_losses(model, collate(examples, self.pad_id, self.device)).sum()
        return loss, Sums(loss=float(loss.detach()), tokens=sum(example.tokens for example in examples))
