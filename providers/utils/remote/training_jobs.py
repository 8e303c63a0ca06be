"""What remote post-training providers share: a job store that survives restarts, and request checks.

The vendors know their jobs by their own ids (Together ``ft-...``, Emissary ``tr-...``); clients know them
by the ``job_uuid`` they chose. :class:`TrainingJobStore` keeps that mapping (and what the provider needs
to reach the job again, such as an Emissary project) in a small SQLite file in the provider's storage
folder, so a restarted stack still answers for the jobs it started earlier.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.apis.post_training import OptimizerConfig, OptimizerType

DB_NAME = "post_training_jobs.sqlite"
_SHOWN_IN_404 = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_uuid TEXT PRIMARY KEY,
    vendor_job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
)
"""


@dataclass(frozen=True)
class TrainingJobRecord:
    job_uuid: str
    vendor_job_id: str
    kind: str  # "sft", "dpo" or "grpo"
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the Emissary project the job is in


class TrainingJobStore:
    """job_uuid -> the vendor's job, in ``<storage_dir>/post_training_jobs.sqlite``."""

    def __init__(self, storage_dir: Path, provider_id: str):
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.path = storage_dir / DB_NAME
        self.provider_id = provider_id
        # Autocommit: each write is on disk before the request that made it answers.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(_SCHEMA)
        # Jobs being created right now: a second request with the same job_uuid is refused at once
        # instead of creating a second vendor job.
        self._creating: set[str] = set()

    @contextlib.contextmanager
    def creating(self, job_uuid: str) -> Iterator[None]:
        """Hold ``job_uuid`` while its vendor job is created; 409 if it is taken or being created."""
        if not job_uuid.strip():
            raise BadRequestError("job_uuid must not be empty", provider=self.provider_id, param="job_uuid")
        if job_uuid in self._creating or self._row(job_uuid) is not None:
            raise ConflictError(
                f"a post-training job {job_uuid!r} already exists on provider '{self.provider_id}'; "
                "choose another job_uuid",
                provider=self.provider_id,
                param="job_uuid",
                code="job_exists",
            )
        self._creating.add(job_uuid)
        try:
            yield
        finally:
            self._creating.discard(job_uuid)

    def add(self, record: TrainingJobRecord) -> None:
        self._db.execute(
            "INSERT INTO jobs (job_uuid, vendor_job_id, kind, created_at, details) VALUES (?, ?, ?, ?, ?)",
            (record.job_uuid, record.vendor_job_id, record.kind, record.created_at.isoformat(), json.dumps(record.details)),
        )

    def get(self, job_uuid: str) -> TrainingJobRecord:
        row = self._row(job_uuid)
        if row is None:
            raise NotFoundError(self._unknown(job_uuid), provider=self.provider_id, param="job_uuid", code="job_not_found")
        return _record(row)

    def find_vendor_job(self, vendor_job_id: str) -> TrainingJobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE vendor_job_id = ?", (vendor_job_id,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[TrainingJobRecord]:
        rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at, job_uuid").fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _row(self, job_uuid: str) -> tuple[Any, ...] | None:
        return self._db.execute("SELECT * FROM jobs WHERE job_uuid = ?", (job_uuid,)).fetchone()

    def _unknown(self, job_uuid: str) -> str:
        known = [row[0] for row in self._db.execute("SELECT job_uuid FROM jobs ORDER BY created_at").fetchall()]
        where = f"provider '{self.provider_id}'"
        if not known:
            return f"no post-training job {job_uuid!r} on {where}: it has started no jobs yet"
        shown = ", ".join(repr(j) for j in known[:_SHOWN_IN_404])
        more = f" and {len(known) - _SHOWN_IN_404} more" if len(known) > _SHOWN_IN_404 else ""
        return f"no post-training job {job_uuid!r} on {where}; it knows {len(known)} job(s): {shown}{more}"


def _record(row: tuple[Any, ...]) -> TrainingJobRecord:
    job_uuid, vendor_job_id, kind, created_at, details = row
    return TrainingJobRecord(job_uuid, vendor_job_id, kind, datetime.fromisoformat(created_at), json.loads(details))


# ------------------------------------------------------------------------------------- request checks
def refuse_unsupported_common(
    *,
    vendor: str,
    provider: str,
    optimizer_config: OptimizerConfig,
    hyperparam_search_config: dict[str, Any],
) -> None:
    """Refuse (400) what neither vendor can do, before anything is uploaded or created."""
    if hyperparam_search_config:
        raise BadRequestError(
            f"{vendor} has no hyperparameter search: send an empty hyperparam_search_config and start one job "
            "per setting instead",
            provider=provider,
            param="hyperparam_search_config",
        )
    # The vendors train with AdamW; Adam is the same optimizer when there is no weight decay.
    optimizer = optimizer_config.optimizer_type
    if optimizer == OptimizerType.sgd or (optimizer == OptimizerType.adam and optimizer_config.weight_decay):
        raise BadRequestError(
            f"{vendor} trains with AdamW only; optimizer_type {optimizer.value!r}"
            + (" with weight_decay" if optimizer == OptimizerType.adam else "")
            + " cannot be honoured: send optimizer_type 'adamw'",
            provider=provider,
            param="optimizer_config.optimizer_type",
        )
    if optimizer_config.lr <= 0:
        raise BadRequestError("optimizer_config.lr must be above 0", provider=provider, param="optimizer_config.lr")


def parse_timestamp(value: Any) -> datetime | None:
    """A vendor's ISO 8601 string or UNIX seconds as an aware datetime; None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def iso(moment: datetime | None) -> str:
    """A log line's timestamp (UTC, seconds)."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
