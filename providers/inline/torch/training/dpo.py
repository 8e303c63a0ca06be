"""Direct preference optimisation: the loss of :class:`~.spec.DPOSpec`, and the reference model's answers.

For a pair, with log pi and log ref the summed log-probabilities of an answer's tokens under the model being
trained and under the reference model:

    h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))
    z = beta * h - margin, clipped to [-clip, clip] when clip > 0
    loss = -(1 - label_smoothing) * log sigmoid(z) - label_smoothing * log sigmoid(-z)

The reference is the model as training starts: the base (a new LoRA/DoRA adapter starts as the identity), the
base with the starting adapter (DPO after an SFT adapter continues that adapter), or the whole model (a full
DPO). It never changes, so its log-probabilities are computed once, before the first step, for every pair
that training and validation will read (each process scores its share; they exchange the numbers): no frozen
second copy of the model sits in memory, and no step pays a second forward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .data import Item, Pair, collate, micro_batches
from .distributed import World, gather
from .objective import Sums, token_losses
from .spec import DPOSpec

log = logging.getLogger(__name__)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    spec: DPOSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's loss, and its reward margin beta * h (what the policy prefers the chosen answer by)."""
    h = (chosen - reference_chosen) - (rejected - reference_rejected)
    z = spec.beta * h - spec.margin
    if spec.clip > 0:
        z = z.clamp(-spec.clip, spec.clip)
    loss = -(1 - spec.label_smoothing) * F.logsigmoid(z) - spec.label_smoothing * F.logsigmoid(-z)
    return loss, spec.beta * h.detach()


def answer_logps(model: Any, pairs: Sequence[Pair], pad_id: int, device: torch.device) -> torch.Tensor:
    """Summed log-probabilities of the chosen answers then of the rejected ones, (2 * pairs,): one forward
    pass over both."""
    examples = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    return -token_losses(model, collate(examples, pad_id, device))


class DPO:
    def __init__(self, spec: DPOSpec, pad_id: int, device: torch.device, world: World):
        self.spec = spec
        self.pad_id = pad_id
        self.device = device
        self.world = world

    def count(self, items: Sequence[Item]) -> float:
        return float(sum(1 for item in items if not item.filler))

    def losses(self, model: Any, items: Sequence[Item]) -> tuple[torch.Tensor, Sums]:
        pairs = [item for item in items if isinstance(item, Pair)]
        n = len(pairs)
        logps = answer_logps(model, pairs, self.pad_id, self.device)
        reference = torch.tensor(
            [pair.reference or (0.0, 0.0) for pair in pairs], dtype=logps.dtype, device=logps.device
        )
        loss, reward = dpo_loss(logps[:n], logps[n:], reference[:, 0], reference[:, 1], self.spec)
        weight = torch.tensor([0.0 if pair.filler else 1.0 for pair in pairs], device=logps.device)
        total = (loss * weight).sum()
        sums = Sums(
            loss=float(total.detach()),
            tokens=sum(pair.tokens for pair in pairs),
            extra={"correct": float(((reward > 0) * weight).sum()), "margin": float((reward * weight).sum())},
        )
        return total, sums

    def prepare(self, model: Any, pairs: Sequence[Pair], micro_size: int, check_cancelled: Callable[[], None]) -> None:
        """Score every pair's answers under the model as it is now (the reference), in eval mode."""
        started = time.monotonic()
        world = self.world
        mine = list(range(world.rank, len(pairs), world.size))
        share = -(-len(pairs) // world.size)
        scored: dict[int, tuple[float, float]] = {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            positions = mine + [mine[0] if mine else 0] * (share - len(mine))  # every process as many passes
            for chunk in micro_batches(positions, micro_size):
                check_cancelled()
                logps = answer_logps(model, [pairs[j] for j in chunk], self.pad_id, self.device).tolist()
                n = len(chunk)
                for k, j in enumerate(chunk):
                    scored[j] = (logps[k], logps[n + k])
        model.train(was_training)
        for part in gather(world, scored):
            for j, values in part.items():
                pairs[j].reference = values
        log.info("reference log-probabilities of %d pairs in %.1f s", len(pairs), time.monotonic() - started)
