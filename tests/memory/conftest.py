"""Fixtures for memory banks: a real PostgreSQL with pgvector (pgserver), started once per session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A PostgreSQL server (pgserver's binaries, which include pgvector) for this session; its URI.

    Its data lives in a directory of its own, not under pytest's basetemp, which a concurrent pytest run may
    prune while this server still uses it.
    """
    import pgserver

    data = tempfile.mkdtemp(prefix="llama-stack-pg-")
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
