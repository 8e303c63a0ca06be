"""Shared fixtures (helpers live in support.py, importable because pytest puts tests/ on sys.path)."""

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
