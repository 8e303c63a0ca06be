"""Shared fixtures (helpers live in support.py, importable because pytest puts tests/ on sys.path)."""

import pytest

from llama_stack.plugins import discover_providers
from support import ReplayPlugin, serving


@pytest.fixture(scope="session")
def replay_registry():
    return discover_providers(extra_plugins=[ReplayPlugin()])


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """`llama-stack run local` in a subprocess (the real SmolLM2 model); its base URL."""
    storage = tmp_path_factory.mktemp("local-state")
    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"]) as server:
        yield server.url
