"""A job's status, logs and artifacts, read from its record and the files of its folder.

What the answers say, by what is there:

=================================================  ===========================================================
record / files                                     status
=================================================  ===========================================================
waiting in the queue; or started, no status.json   ``scheduled``
status.json ``running``, the lock held             ``running``
status.json ``completed``                          ``completed``
status.json ``failed``                             ``failed``, error = the process's error
cancelled (before it started, or while it ran)     ``failed``, error ``cancelled ...``
lock free, status.json not final (or none)         ``failed``, error "the training process ended without
                                                   finishing (exit code N / killed by signal S / ...)"
=================================================  ===========================================================
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llama_stack.apis.post_training import (
    Checkpoint,
    PostTrainingJobStatus,
    PostTrainingJobStatusResponse,
    TrainingProgress,
)
from llama_stack.providers.inline.torch.training.spec import (
    LOSS_PLOT,
    OUTPUT_LOG,
    JobStatus,
    checkpoint_dirs,
    job_is_running,
    read_status,
)
from llama_stack.providers.utils.training.jobs import TrainingJobRecord, iso

from .runner import CANCELLED, LAUNCHED, describe_exit, load_spec, read_exit

log = logging.getLogger(__name__)

MAX_LOSS_PLOT_BYTES = 8 * 1024 * 1024


def checkpoints(folder: Path) -> list[Checkpoint]:
    """The job's complete checkpoints as file:// URLs, in step order."""
    return [Checkpoint(iters=step, path=path.as_uri()) for step, path in checkpoint_dirs(folder)]


def _read_status(folder: Path) -> JobStatus | None:
    try:
        return read_status(folder)
    except (OSError, ValidationError, ValueError) as exc:
        log.warning("%s: unreadable status: %s", folder, exc)
        return None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def job_status(record: TrainingJobRecord, folder: Path, resources: dict[str, Any]) -> PostTrainingJobStatusResponse:
    """The job's status from its record and folder; ``resources`` are what its launch allocated."""
    details = record.details
    state = details.get("state")
    found = checkpoints(folder)
    answer: dict[str, Any] = {
        "job_uuid": record.job_uuid,
        "scheduled_at": record.created_at,
        "checkpoints": found,
        "resources_allocated": resources,
    }
    cancelled_at = _moment(details.get("cancelled_at"))
    if state == CANCELLED:
        return PostTrainingJobStatusResponse(
            **answer,
            status=PostTrainingJobStatus.failed,
            completed_at=cancelled_at,
            error=f"cancelled at {iso(cancelled_at)}, before it started",
        )
    if state != LAUNCHED:  # waiting, or being started
        return PostTrainingJobStatusResponse(**answer, status=PostTrainingJobStatus.scheduled)
    if details.get("launch_error"):
        return PostTrainingJobStatusResponse(
            **answer,
            status=PostTrainingJobStatus.failed,
            completed_at=_moment(details.get("ended_at")),
            error=f"the training process could not be started: {details['launch_error']}",
        )
    status = _read_status(folder)
    if status is not None:
        answer["started_at"] = status.started_at
        answer["progress"] = TrainingProgress(epoch=status.epoch, step=status.step, total_steps=status.total_steps)
        answer["resources_allocated"] = {**resources, **status.resources}
    cancelled = f"cancelled at {iso(cancelled_at)}; {len(found)} checkpoint(s) kept" if cancelled_at else None
    if status is not None and status.state == "completed":
        return PostTrainingJobStatusResponse(
            **answer, status=PostTrainingJobStatus.completed, completed_at=status.completed_at or status.updated_at
        )
    if status is not None and status.state in ("failed", "cancelled"):
        error = cancelled or (
            "cancelled" if status.state == "cancelled" else status.error or "the training process failed (see its logs)"
        )
        return PostTrainingJobStatusResponse(
            **answer,
            status=PostTrainingJobStatus.failed,
            completed_at=status.completed_at or status.updated_at,
            error=error,
        )
    if job_is_running(folder):
        return PostTrainingJobStatusResponse(
            **answer, status=PostTrainingJobStatus.running if status else PostTrainingJobStatus.scheduled
        )
    exit_file = read_exit(folder)
    how = describe_exit(details.get("returncode"), exit_file) or "gone after a server restart, its exit not recorded"
    ended_at = _moment((exit_file or {}).get("ended_at")) or _moment(details.get("ended_at"))
    if cancelled:
        error = f"{cancelled} (the training process: {how})"
    else:
        error = f"the training process ended without finishing ({how})"
        if how.startswith("exit code"):  # it exited on its own: its last words are likely why
            last = last_log_line(folder)
            error += f"; its log ends: {last}" if last else ""
    return PostTrainingJobStatusResponse(
        **answer, status=PostTrainingJobStatus.failed, completed_at=ended_at, error=error
    )


def last_log_line(folder: Path) -> str | None:
    """The process's last non-empty line of output (the supervisor's own notes aside), at most 500 characters."""
    lines = [line for line in log_lines(folder, 20, 16 * 1024) if line.strip() and not line.startswith("[supervise]")]
    return lines[-1].strip()[:500] if lines else None


def launch_resources(record: TrainingJobRecord, folder: Path) -> dict[str, Any]:
    """What the job was given at launch, and what it trains."""
    details = record.details
    resources: dict[str, Any] = {"job_folder": str(folder)}
    for key in ("device", "processes", "nodes", "pid", "other_nodes_run"):
        if details.get(key) is not None:
            resources[key] = details[key]
    spec = load_spec(folder)
    if spec is not None:
        resources["algorithm"] = spec.algorithm
        resources["base_model"] = spec.base.model_id or spec.base.reference
        if spec.base.adapter:
            resources["base_adapter"] = spec.base.adapter
    return resources


def log_lines(folder: Path, max_lines: int, max_bytes: int) -> list[str]:
    """The last ``max_lines`` lines of the job's output, read from its last ``max_bytes`` bytes."""
    path = folder / OUTPUT_LOG
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line read is cut
    # Progress bars redraw with carriage returns: a line shows its last state.
    return [line.rsplit("\r", 1)[-1] for line in lines[-max_lines:]]


def loss_curve(folder: Path) -> str | None:
    """loss.png as a data: URL, once the job has drawn one (and it is not unreasonably large)."""
    path = folder / LOSS_PLOT
    try:
        if path.stat().st_size > MAX_LOSS_PLOT_BYTES:
            log.warning("%s is over %d bytes: not sent", path, MAX_LOSS_PLOT_BYTES)
            return None
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
