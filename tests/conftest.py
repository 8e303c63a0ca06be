"""Shared fixtures (helpers live in support.py, importable because pytest puts tests/ on sys.path)."""

import pytest

from llama_stack.plugins import discover_providers
from support import ReplayPlugin


@pytest.fixture(scope="session")
def replay_registry():
    return discover_providers(extra_plugins=[ReplayPlugin()])
