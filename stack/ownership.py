"""Which provider owns each resource created through the stack (a bank, a job, a dataset, an agent).

Calls that name a resource go to its owner, so the owner is written down when the resource is created and
read back after a restart: one SQLite table in the distribution's storage folder. Writes are a single row
each, small enough to run on the event loop; the file is opened in WAL mode so a reader never waits.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    api TEXT NOT NULL,
    resource TEXT NOT NULL,
    key TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    PRIMARY KEY (api, resource, key)
)
"""


class OwnerStore:
    """resource id -> provider_id, per API and kind of resource."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def owner(self, api: str, resource: str, key: str) -> str | None:
        row = self._db.execute(
            "SELECT provider_id FROM owners WHERE api = ? AND resource = ? AND key = ?", (api, resource, key)
        ).fetchone()
        return row[0] if row else None

    def record(self, api: str, resource: str, key: str, provider_id: str) -> None:
        self._db.execute(
            "INSERT INTO owners (api, resource, key, provider_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (api, resource, key) DO UPDATE SET provider_id = excluded.provider_id",
            (api, resource, key, provider_id),
        )

    def forget(self, api: str, resource: str, key: str) -> None:
        self._db.execute("DELETE FROM owners WHERE api = ? AND resource = ? AND key = ?", (api, resource, key))

    def keys(self, api: str, resource: str, limit: int = 20) -> list[str]:
        """Some of the ids known for a kind of resource (for a 404 that names what exists)."""
        rows = self._db.execute(
            "SELECT key FROM owners WHERE api = ? AND resource = ? ORDER BY key LIMIT ?", (api, resource, limit)
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self._db.close()
