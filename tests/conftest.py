"""Shared fixtures (helpers live in support.py, importable because pytest puts tests/ on sys.path)."""

import os
import subprocess

import pytest

from llama_stack.plugins import discover_providers
from support import ReplayPlugin, free_port, llama_stack_command, wait_for_health


@pytest.fixture(scope="session")
def replay_registry():
    return discover_providers(extra_plugins=[ReplayPlugin()])


@pytest.fixture(scope="session")
def local_server(tmp_path_factory):
    """`llama-stack run local` in a subprocess (the real SmolLM2 model); its base URL."""
    port = free_port()
    storage = tmp_path_factory.mktemp("local-state")
    process = subprocess.Popen(
        [*llama_stack_command(), "run", "local", "--port", str(port), "--env", f"LLAMA_STACK_STORAGE={storage}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
