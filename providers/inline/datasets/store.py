"""The datasets' SQLite table: one row per dataset, keyed by its uuid (never used as a file name)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from llama_stack.apis.datasets import Dataset

_SCHEMA = """CREATE TABLE IF NOT EXISTS datasets (
    uuid TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    format TEXT NOT NULL,
    created_at TEXT NOT NULL
)"""


@dataclass(frozen=True)
class StoredDataset:
    """A dataset as it was last read: its rows counted, its bytes hashed (to tell when they change)."""

    uuid: str
    dataset: Dataset
    row_count: int
    sha256: str
    format: str
    created_at: datetime


class DatasetStore:
    """Datasets survive a restart; rows are small, so each call opens, commits and closes at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, stored: StoredDataset) -> bool:
        """Store the dataset; False when one with its uuid exists already."""
        with closing(self._connect()) as db, db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO datasets (uuid, dataset, row_count, sha256, format, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.uuid,
                    stored.dataset.model_dump_json(),
                    stored.row_count,
                    stored.sha256,
                    stored.format,
                    stored.created_at.isoformat(),
                ),
            )
            return cursor.rowcount == 1

    def get(self, uuid: str) -> StoredDataset | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT uuid, dataset, row_count, sha256, format, created_at FROM datasets WHERE uuid = ?", (uuid,)
            ).fetchone()
        return None if row is None else _stored(row)

    def all(self) -> list[StoredDataset]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT uuid, dataset, row_count, sha256, format, created_at FROM datasets ORDER BY created_at, uuid"
            ).fetchall()
        return [_stored(row) for row in rows]

    def uuids(self) -> list[str]:
        with closing(self._connect()) as db:
            return [row[0] for row in db.execute("SELECT uuid FROM datasets ORDER BY created_at, uuid").fetchall()]

    def update_content(self, uuid: str, row_count: int, sha256: str, fmt: str) -> None:
        """What a dataset holds now that its URL's content changed (and passed the checks again)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE datasets SET row_count = ?, sha256 = ?, format = ? WHERE uuid = ?",
                (row_count, sha256, fmt, uuid),
            )

    def remove(self, uuid: str) -> bool:
        with closing(self._connect()) as db, db:
            return db.execute("DELETE FROM datasets WHERE uuid = ?", (uuid,)).rowcount == 1


def _stored(row: tuple[str, str, int, str, str, str]) -> StoredDataset:
    uuid, dataset, row_count, sha256, fmt, created_at = row
    return StoredDataset(
        uuid=uuid,
        dataset=Dataset.model_validate_json(dataset),
        row_count=row_count,
        sha256=sha256,
        format=fmt,
        created_at=datetime.fromisoformat(created_at),
    )
