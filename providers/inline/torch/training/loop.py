"""The training loop: epochs of optimizer steps over shuffled batches, each step's rows split over the
processes and into micro-batches (gradients accumulate), the learning rate decaying from lr to lr_min,
validation at each epoch's end and checkpoints on a cadence.

A step's loss is a mean over the whole batch (its loss tokens for SFT, its pairs for DPO): each micro-batch
back-propagates its summed loss divided by the batch's count, times the number of processes (whose gradients
DDP and FSDP average). Splitting a batch into micro-batches or over processes therefore changes no gradient.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoints
from .data import Item, Pair, Rows, epoch_batches, micro_batches, shard
from .distributed import World, accumulating, total
from .objective import Objective, Sums
from .progress import Progress
from .spec import BaseModelSpec, CheckpointInfo, JobSpec, OptimizerSpec, StepMetrics, ValidationMetrics

log = logging.getLogger(__name__)


def learning_rate(step: int, total_steps: int, lr: float, lr_min: float) -> float:
    """Cosine decay: lr at the first step, lr_min at the last."""
    if total_steps <= 1:
        return lr
    progress = (step - 1) / (total_steps - 1)
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_for(spec: OptimizerSpec, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Weight decay applies to every trained parameter (for adam it is L2 on the gradient, for adamw decoupled)."""
    if spec.type == "adam":
        return torch.optim.Adam(parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.type == "adamw":
        return torch.optim.AdamW(parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(parameters, lr=spec.lr, weight_decay=spec.weight_decay)


def steps_per_epoch(rows: int, spec: JobSpec) -> int:
    steps = -(-rows // spec.loop.batch_size)
    return min(steps, spec.loop.n_iters) if spec.loop.n_iters else steps


@dataclass
class Context:
    """What the loop works with besides the model."""

    spec: JobSpec
    job_dir: Path
    world: World
    device: torch.device
    tokenizer: Any
    adapter: bool
    progress: Progress
    check_cancelled: Callable[[], None]


class Trainer:
    def __init__(self, context: Context, model: Any, objective: Objective):
        self.context = context
        self.spec = context.spec
        self.world = context.world
        self.model = model
        self.objective = objective
        loop = self.spec.loop
        # Rows per forward pass on this process: the micro-batch, or its whole share of a batch.
        self.micro_size = loop.micro_batch_size or -(-loop.batch_size // self.world.size)
        parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer_for(self.spec.optimizer, parameters)

    def run(self, train: Rows, validation: Rows | None) -> None:
        spec, progress = self.spec, self.context.progress
        per_epoch = steps_per_epoch(len(train), spec)
        total_steps = per_epoch * spec.loop.n_epochs
        schedule = [
            epoch_batches(len(train), spec.loop.batch_size, spec.loop.shuffle, spec.seed, epoch)[:per_epoch]
            for epoch in range(1, spec.loop.n_epochs + 1)
        ]
        progress.n_epochs = spec.loop.n_epochs
        progress.update(total_steps=total_steps)
        log.info(
            "%d training rows, %d steps (%d per epoch, %d rows each, micro-batches of %d per process)",
            len(train),
            total_steps,
            per_epoch,
            spec.loop.batch_size,
            self.micro_size,
        )
        self._prepare(train, validation, schedule)
        self.model.train()
        step = 0
        started = time.monotonic()
        for epoch, batches in enumerate(schedule, start=1):
            for number, rows in enumerate(batches, start=1):
                step += 1
                lr = learning_rate(step, total_steps, spec.optimizer.lr, spec.optimizer.lr_min)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                began = time.monotonic()
                sums, count = self._step([train.items[i] for i in rows], step)
                seconds = time.monotonic() - began
                progress.step(self._metrics(step, epoch, lr, sums, count, seconds, started), (number, len(batches)))
                every = spec.loop.checkpoint_every_steps
                if every and step % every == 0:
                    self._checkpoint(step, epoch)
            if validation is not None:
                self._validate(validation, step, epoch)
            self._checkpoint(step, epoch)
            progress.epoch_end()

    def _prepare(self, train: Rows, validation: Rows | None, schedule: list[list[list[int]]]) -> None:
        """DPO's reference scores of every pair the schedule reads (and every validation pair)."""
        prepare = getattr(self.objective, "prepare", None)
        if prepare is None:
            return
        used = sorted({i for batches in schedule for rows in batches for i in rows})
        pairs: list[Pair] = [train.items[i] for i in used]
        if validation is not None:
            pairs += validation.items
        prepare(self.model, pairs, self.micro_size, self.context.check_cancelled)

    def _step(self, rows: list[Item], step: int) -> tuple[Sums, float]:
        """One optimizer step over a batch; on a CUDA out-of-memory error (one process), the micro-batch halves
        and the step starts over."""
        share = shard(rows, self.world.rank, self.world.size)
        count = total(self.world, self.objective.count(share))[0]
        while True:
            try:
                sums = self._accumulate(share, count)
                break
            except torch.OutOfMemoryError:
                if self.world.distributed or self.micro_size == 1 or self.context.device.type != "cuda":
                    raise
                smaller = self.micro_size // 2
            # Out of the except block: the error's frames (and the tensors they hold) are gone.
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            log.warning(
                "out of GPU memory with micro-batches of %d rows: step %d again with %d",
                self.micro_size,
                step,
                smaller,
            )
            self.micro_size = smaller
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, count

    def _accumulate(self, share: list[Item], count: float) -> Sums:
        scale = self.world.size / max(count, 1.0)
        chunks = list(micro_batches(share, self.micro_size))
        sums = Sums()
        for j, chunk in enumerate(chunks):
            self.context.check_cancelled()
            with accumulating(self.model, self.world, last=j == len(chunks) - 1):
                loss, part = self.objective.losses(self.model, chunk)
                (loss * scale).backward()
            sums.add(part)
        return sums

    def _metrics(
        self, step: int, epoch: int, lr: float, sums: Sums, count: float, seconds: float, started: float
    ) -> StepMetrics:
        names = sorted(sums.extra)
        loss, tokens, *extra = total(self.world, sums.loss, sums.tokens, *(sums.extra[name] for name in names))
        values = dict(zip(names, extra, strict=True))
        denominator = max(count, 1.0)
        return StepMetrics(
            step=step,
            epoch=epoch,
            loss=loss / denominator,
            lr=lr,
            tokens=int(tokens),
            tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
            elapsed_s=time.monotonic() - started,
            reward_accuracy=values["correct"] / denominator if "correct" in values else None,
            reward_margin=values["margin"] / denominator if "margin" in values else None,
        )

    def _validate(self, validation: Rows, step: int, epoch: int) -> None:
        share = shard(validation.items, self.world.rank, self.world.size)
        count = total(self.world, self.objective.count(share))[0]
        sums = Sums()
        self.model.eval()
        with torch.no_grad():
            for chunk in micro_batches(share, self.micro_size):
                self.context.check_cancelled()
                sums.add(self.objective.losses(self.model, chunk)[1])
        self.model.train()
        loss, correct = total(self.world, sums.loss, sums.extra.get("correct", 0.0))
        denominator = max(count, 1.0)
        accuracy = correct / denominator if "correct" in sums.extra else None
        self.context.progress.validation(
            ValidationMetrics(step=step, epoch=epoch, validation_loss=loss / denominator, reward_accuracy=accuracy)
        )

    def _checkpoint(self, step: int, epoch: int) -> None:
        self.context.check_cancelled()
        spec = self.spec
        adapter = self.context.adapter
        # An adapter applies to the plain base (a starting adapter went on training inside it); full weights
        # name where they came from.
        base = BaseModelSpec(
            reference=spec.base.reference,
            model_id=spec.base.model_id,
            adapter=None if adapter else spec.base.adapter,
        )
        info = CheckpointInfo(
            job_uuid=spec.job_uuid,
            step=step,
            epoch=epoch,
            kind="adapter" if adapter else "full",
            algorithm=spec.algorithm,
            base=base,
        )
        checkpoints.save(
            self.context.job_dir, self.model, self.context.tokenizer, self.world, info, spec.loop.keep_checkpoints
        )
