"""What the post-training tests of every vendor share: datasets as data: URLs, training requests, and the
provider under test with its fixtures (a stack with it, on a fake that starts each test with no jobs)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fakes.vendor_server import FakeVendor
from remote.conftest import FAST_RETRIES

from llama_stack.client import LlamaStackClient

# The parts of a request that are config objects: an override of one (with merge) changes only the keys it names.
CONFIGS = ("algorithm_config", "optimizer_config", "training_config")


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def data_url(content: bytes) -> str:
    return "data:application/jsonl;base64," + base64.b64encode(content).decode()


def inline_dataset(content: bytes, columns: dict[str, str]) -> dict[str, Any]:
    """A Dataset whose content travels in the request (a data: URL), so no test needs a file or a server."""
    return {"columns": columns, "content_url": data_url(content)}


def training_config(*, batch_size: int) -> dict[str, Any]:
    """training_config with 3 epochs; the batch size is each vendor's, inside its limits."""
    return {
        "n_epochs": 3,
        "batch_size": batch_size,
        "shuffle": True,
        "n_iters": 100,
        "enable_activation_checkpointing": False,
        "memory_efficient_fsdp_wrap": False,
        "fsdp_cpu_offload": False,
    }


def training_request(
    job_uuid: str, fields: dict[str, Any], overrides: dict[str, Any], *, merge: bool = False
) -> dict[str, Any]:
    """A supervised_fine_tune or preference_optimize request: ``fields`` with ``overrides`` on top.

    Every part is a copy, so that a test may change its request without changing the next test's. With
    ``merge``, an override of one of the CONFIGS changes only the keys it names; without, it replaces it.
    """
    request = {"job_uuid": job_uuid, **copy.deepcopy(fields)}
    for key, value in overrides.items():
        if merge and key in CONFIGS and isinstance(request.get(key), dict) and isinstance(value, dict):
            request[key] = {**request[key], **value}
        else:
            request[key] = value
    return request


@dataclass(frozen=True)
class TrainingProvider:
    """One vendor's post_training provider as the tests run it, on the vendor's fake."""

    fake_fixture: str  # the conftest fixture of the vendor's fake: "together", "emissary"
    provider_type: str
    provider_id: str
    api_key: str
    reset: Callable[[FakeVendor], None]  # makes the fake forget its files, datasets, projects and jobs

    def providers(self, fake: FakeVendor, **config: Any) -> dict[str, list[dict[str, Any]]]:
        """The providers block of a distribution with this provider on ``fake``, ``config`` on top of its settings."""
        settings = {"url": fake.url, "api_key": self.api_key, **FAST_RETRIES, **config}
        return {
            "post_training": [
                {"provider_id": self.provider_id, "provider_type": self.provider_type, "config": settings}
            ]
        }

    def fixtures(self) -> tuple[Any, Any]:
        """The fixtures ``fresh`` (autouse: every test starts with no jobs on the fake) and ``client`` (a stack
        with this provider); a test module takes them in with ``fresh, client = PROVIDER.fixtures()``."""

        @pytest.fixture(autouse=True)
        def fresh(request: pytest.FixtureRequest) -> None:
            self.reset(request.getfixturevalue(self.fake_fixture))

        @pytest.fixture
        async def client(request: pytest.FixtureRequest, start_stack: Any) -> LlamaStackClient:
            return await start_stack(self.providers(request.getfixturevalue(self.fake_fixture)))

        return fresh, client
