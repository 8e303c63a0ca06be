"""Shared fixtures (helpers live in support.py, importable because pytest puts tests/ on sys.path)."""

import shutil
import tempfile
from collections.abc import Iterator

import pytest
from local_model_requests import TORCH_CUDA
from support import ReplayPlugin, serving

from llama_stack.plugins import discover_providers


def pytest_report_header(config):
    if TORCH_CUDA:
        return "inline::torch: a CUDA GPU is here; its tests run on it too (the torch-cuda variants)"
    return "inline::torch: no CUDA GPU here (torch.cuda.is_available() is False): its CUDA variants are not run"


@pytest.fixture(scope="session")
def replay_registry():
    return discover_providers(extra_plugins=[ReplayPlugin()])


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """`llama-stack run local` in a subprocess (the real SmolLM2 model); its base URL."""
    storage = tmp_path_factory.mktemp("local-state")
    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"]) as server:
        yield server.url


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
