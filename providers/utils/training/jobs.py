"""The jobs a post-training provider started, kept in a small SQLite file so that a restarted stack still
answers for them, and the bookkeeping every trainer's status, log and artifact answers share.

Clients know a job by the ``job_uuid`` they chose; the trainer knows it by its own id (``vendor_job_id``: a
vendor's id such as Together's ``ft-...`` or Emissary's ``tr-...``, or a local trainer's own), and keeps
what it needs to reach the job again in ``details`` (such as an Emissary project).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.apis.post_training import Checkpoint

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
    """job_uuid -> the trainer's job, in ``<storage_dir>/post_training_jobs.sqlite``."""

    def __init__(self, storage_dir: Path, provider_id: str):
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.path = storage_dir / DB_NAME
        self.provider_id = provider_id
        # Autocommit: each write is on disk before the request that made it answers.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(_SCHEMA)
        # Jobs being created right now: a second request with the same job_uuid is refused at once
        # instead of starting a second job.
        self._creating: set[str] = set()

    @contextlib.contextmanager
    def creating(self, job_uuid: str) -> Iterator[None]:
        """Hold ``job_uuid`` while its job is created; 409 if it is taken or being created."""
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
            (
                record.job_uuid,
                record.vendor_job_id,
                record.kind,
                record.created_at.isoformat(),
                json.dumps(record.details),
            ),
        )

    def update(self, job_uuid: str, **details: Any) -> TrainingJobRecord:
        """Merge ``details`` into the job's details (a key set to None is removed); the job as it now is.

        A trainer keeps what changes about a job there (a local job's process, whether it was cancelled).
        """
        record = self.get(job_uuid)
        merged = {**record.details, **details}
        merged = {key: value for key, value in merged.items() if value is not None}
        self._db.execute("UPDATE jobs SET details = ? WHERE job_uuid = ?", (json.dumps(merged), job_uuid))
        return TrainingJobRecord(record.job_uuid, record.vendor_job_id, record.kind, record.created_at, merged)

    def get(self, job_uuid: str) -> TrainingJobRecord:
        row = self._row(job_uuid)
        if row is None:
            raise NotFoundError(
                self._unknown(job_uuid), provider=self.provider_id, param="job_uuid", code="job_not_found"
            )
        return _record(row)

    def find_vendor_job(self, vendor_job_id: str) -> TrainingJobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE vendor_job_id = ?", (vendor_job_id,)).fetchone()
        return _record(row) if row else None

    def vendor_job_id(self, name: str) -> str:
        """The vendor job that ``name``, from a client's reference to an earlier job, stands for.

        Clients may name a job by the vendor's id or by the job_uuid they gave this provider: a name that is
        no vendor job of this provider's but one of its job_uuids is that job's vendor id; any other name is
        taken to be a vendor id as it is.
        """
        if self.find_vendor_job(name) is None:
            row = self._row(name)
            if row is not None:
                return _record(row).vendor_job_id
        return name

    def all(self) -> list[TrainingJobRecord]:
        rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at, job_uuid").fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _row(self, job_uuid: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute("SELECT * FROM jobs WHERE job_uuid = ?", (job_uuid,)).fetchone()
        return row

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


# ------------------------------------------------------------------------------------- answers
def iso(moment: datetime | None) -> str:
    """A log line's timestamp (UTC, seconds)."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def in_step_order(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per step, the last one listed for a step winning, in step order."""
    by_step = {checkpoint.iters: checkpoint for checkpoint in checkpoints}
    return [by_step[step] for step in sorted(by_step)]
