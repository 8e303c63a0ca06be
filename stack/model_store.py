"""The models registered at run time (``POST /models/register``), kept so that a restarted server serves them again.

One SQLite table in the distribution's storage folder, a row per model: the Model as the client sent it (not as
its provider answered: the provider fills in what it finds when it loads the model again). Rows are read back in
the order they were written. Writes are a single row each, small enough to run on the event loop.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from llama_stack.apis.inspect import Model

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    registered_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class StoredModel:
    """A row: the model, or (a row written by another version that no longer reads) why it cannot be read."""

    model_id: str
    provider_id: str
    model: Model | None
    error: str | None = None


class ModelStore:
    """model_id -> the Model a client registered."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def models(self) -> list[StoredModel]:
        rows = self._db.execute("SELECT model_id, model FROM models ORDER BY rowid").fetchall()
        stored = []
        for model_id, text in rows:
            try:
                model = Model.model_validate_json(text)
            except ValidationError as exc:
                stored.append(StoredModel(model_id, "", None, f"its stored entry no longer reads: {exc}"))
                continue
            stored.append(StoredModel(model_id, model.provider_id, model))
        return stored

    def add(self, model: Model) -> None:
        self._db.execute(
            "INSERT INTO models (model_id, model, registered_at) VALUES (?, ?, ?)",
            (model.model_id, model.model_dump_json(), datetime.now(timezone.utc).isoformat()),
        )

    def remove(self, model_id: str) -> None:
        self._db.execute("DELETE FROM models WHERE model_id = ?", (model_id,))

    def close(self) -> None:
        self._db.close()
