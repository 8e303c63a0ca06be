"""What the main process tells the server and the job's reader: status.json, metrics.jsonl, log lines and
loss.png. The other processes of a job keep quiet (their :class:`Progress` writes nothing)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import plot
from .spec import (
    LOSS_PLOT,
    METRICS_FILE,
    STATUS_FILE,
    JobState,
    JobStatus,
    StepMetrics,
    ValidationMetrics,
    now,
    write_json,
)

log = logging.getLogger(__name__)

# A fast job logs a progress line at most this often (the first and last step of each epoch always).
_LOG_EVERY_S = 2.0
# status.json is rewritten at most this often while steps go by (and at every epoch's end).
_STATUS_EVERY_S = 1.0


@contextmanager
def _no_sigterm() -> Iterator[None]:
    """Hold SIGTERM while a file is replaced: the handler writes the final status, and must not run in the
    middle of a write that would then replace it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Progress:
    def __init__(self, job_dir: Path, main: bool):
        self.job_dir = job_dir
        self.main = main
        self.status = JobStatus(state="running", started_at=now(), updated_at=now())
        self.history: list[tuple[int, float]] = []
        self.validation_history: list[tuple[int, float]] = []
        self.n_epochs = 0
        self._last_status = 0.0
        self._last_line = 0.0
        self._final = False
        self._metrics = (job_dir / METRICS_FILE).open("a", encoding="utf-8") if main else None

    # -- status.json --------------------------------------------------------------------------------

    def update(self, **changes: Any) -> None:
        """Change the status and write it now."""
        if not self.main:
            return
        with _no_sigterm():  # the final status, once written (by the SIGTERM handler too), stays
            if self._final:
                return
            self.status = self.status.model_copy(update={**changes, "updated_at": now()})
            write_json(self.job_dir / STATUS_FILE, self.status)
        self._last_status = time.monotonic()

    def resources(self, **values: Any) -> None:
        self.update(resources={**self.status.resources, **values})

    def finish(self, state: JobState, error: str | None = None) -> None:
        """The last status: nothing the process writes later replaces it."""
        if not self.main:
            return
        with _no_sigterm():
            self.update(state=state, error=error, completed_at=now())
            self._final = True

    @property
    def finished(self) -> bool:
        return self._final

    # -- steps --------------------------------------------------------------------------------------

    def step(self, metrics: StepMetrics, epoch_steps: tuple[int, int]) -> None:
        """One optimizer step done: its metrics line, the status (now and then) and a log line (now and then).

        ``epoch_steps``: this step's number within its epoch and the epoch's steps."""
        if not self.main:
            return
        self.history.append((metrics.step, metrics.loss))
        self._append(metrics)
        clock = time.monotonic()
        if clock - self._last_status >= _STATUS_EVERY_S:
            self.update(step=metrics.step, epoch=metrics.epoch)
        else:
            self.status = self.status.model_copy(update={"step": metrics.step, "epoch": metrics.epoch})
        edge = epoch_steps[0] in (1, epoch_steps[1])
        if edge or clock - self._last_line >= _LOG_EVERY_S:
            self._last_line = clock
            log.info("%s", self.line(metrics))

    def line(self, metrics: StepMetrics) -> str:
        total = self.status.total_steps
        left = metrics.elapsed_s / metrics.step * (total - metrics.step) if metrics.step else 0.0
        text = (
            f"step {metrics.step}/{total} epoch {metrics.epoch}/{self.n_epochs} loss {metrics.loss:.4f} "
            f"lr {metrics.lr:.1e} tokens/s {metrics.tokens_per_s:.0f} "
            f"elapsed {_clock(metrics.elapsed_s)} left {_clock(left)}"
        )
        if metrics.reward_accuracy is not None:
            text += f" reward_accuracy {metrics.reward_accuracy:.2f} reward_margin {metrics.reward_margin:.4f}"
        return text

    def validation(self, metrics: ValidationMetrics) -> None:
        if not self.main:
            return
        self.validation_history.append((metrics.step, metrics.validation_loss))
        self._append(metrics)
        text = (
            f"validation epoch {metrics.epoch}/{self.n_epochs} step {metrics.step} loss {metrics.validation_loss:.4f}"
        )
        if metrics.reward_accuracy is not None:
            text += f" reward_accuracy {metrics.reward_accuracy:.2f}"
        log.info("%s", text)

    def epoch_end(self) -> None:
        """Status now, and the loss curve redrawn."""
        if not self.main:
            return
        self.update(step=self.status.step, epoch=self.status.epoch)
        self.draw()

    def draw(self) -> None:
        if self.main and self.history:
            with _no_sigterm():
                plot.draw(self.job_dir / LOSS_PLOT, self.history, self.validation_history)

    def _append(self, metrics: StepMetrics | ValidationMetrics) -> None:
        assert self._metrics is not None
        self._metrics.write(metrics.model_dump_json(exclude_none=True) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))
