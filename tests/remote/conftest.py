"""Fixtures for the remote providers: the vendors' fake servers, and stacks pointed at them.

Each fake runs once per session; every test gets it reset (no faults, no recorded requests), and the test
fails if any request the fake received broke the vendor's spec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.emissary import make_emissary_fake
from fakes.together import make_together_fake
from fakes.vendor_server import FakeVendor

from llama_stack.client import LlamaStackClient
from llama_stack.resolver import Stack


def _checked(fake: FakeVendor) -> Iterator[FakeVendor]:
    fake.reset()
    yield fake
    violations = list(fake.violations)
    fake.reset()
    assert not violations, f"requests to the fake {fake.name} broke its spec:\n" + "\n".join(violations)


@pytest.fixture(scope="session")
def together_server() -> Iterator[FakeVendor]:
    fake = make_together_fake().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def emissary_server() -> Iterator[FakeVendor]:
    fake = make_emissary_fake().start()
    yield fake
    fake.stop()


@pytest.fixture
def together(together_server: FakeVendor) -> Iterator[FakeVendor]:
    yield from _checked(together_server)


@pytest.fixture
def emissary(emissary_server: FakeVendor) -> Iterator[FakeVendor]:
    yield from _checked(emissary_server)


# Fast retries for tests: the backoff logic runs, the waits are milliseconds.
FAST_RETRIES = {"max_retries": 2, "retry_backoff": 0.001, "timeout": 5.0}


def write_distribution(
    directory: Path,
    providers: dict[str, list[dict[str, Any]]],
    models: list[dict[str, Any]] | None = None,
    name: str = "remote-test",
) -> Path:
    """A distribution YAML serving ``providers`` ({api: [{provider_id, provider_type, config}]})."""
    path = directory / f"{name}.yaml"
    document = {
        "version": 1,
        "name": name,
        "apis": list(providers),
        "providers": providers,
        "models": models or [],
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
async def start_stack(tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_stack(providers, models)`` -> a library client on a started stack, shut down after."""
    clients: list[LlamaStackClient] = []

    async def start(
        providers: dict[str, list[dict[str, Any]]],
        models: list[dict[str, Any]] | None = None,
        provider_data: dict[str, Any] | None = None,
    ) -> LlamaStackClient:
        path = write_distribution(tmp_path, providers, models, name=f"remote-test-{len(clients)}")
        client = await LlamaStackClient.library(Stack.from_distribution(path), provider_data=provider_data)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
