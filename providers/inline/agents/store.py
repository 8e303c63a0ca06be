"""The agents' SQLite table: one row per agent, its create request as JSON."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from llama_stack.apis.agentic_system import AgenticSystemCreateRequest

_SCHEMA = "CREATE TABLE IF NOT EXISTS agents (uuid TEXT PRIMARY KEY, request TEXT NOT NULL)"


class AgentStore:
    """Agents survive a restart; rows are small, so each call opens, commits and closes at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, agent: AgenticSystemCreateRequest) -> bool:
        """Store the agent; False when one with its uuid exists already."""
        with closing(self._connect()) as db, db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO agents (uuid, request) VALUES (?, ?)", (agent.uuid, agent.model_dump_json())
            )
            return cursor.rowcount == 1

    def get(self, uuid: str) -> AgenticSystemCreateRequest | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT request FROM agents WHERE uuid = ?", (uuid,)).fetchone()
        return None if row is None else AgenticSystemCreateRequest.model_validate_json(row[0])

    def remove(self, uuid: str) -> bool:
        with closing(self._connect()) as db, db:
            return db.execute("DELETE FROM agents WHERE uuid = ?", (uuid,)).rowcount == 1
