"""Per-request provider data (a caller's own vendor key) reaches providers, over HTTP and in-process."""

from __future__ import annotations

import json

import httpx
import pytest
from support import write_replay_distribution

from llama_stack.client import LlamaStackClient
from llama_stack.request_context import PROVIDER_DATA_HEADER
from llama_stack.resolver import Stack
from llama_stack.server import create_app

DIALOG = {"message": {"role": "user", "content": "hi"}}


@pytest.fixture
async def stack(tmp_path, replay_registry):
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    await stack.start()
    yield stack
    await stack.shutdown()


def _replay(stack: Stack):
    return stack.providers["replay"].impl


async def test_the_header_reaches_the_provider_for_that_request_only(stack):
    transport = httpx.ASGITransport(app=create_app(stack))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        headers = {PROVIDER_DATA_HEADER: json.dumps({"together_api_key": "mine"})}
        first = await http.post(
            "/inference/chat_completion", json={"model": "replay-model", "dialog": DIALOG}, headers=headers
        )
        second = await http.post("/inference/chat_completion", json={"model": "replay-model", "dialog": DIALOG})
    assert first.status_code == second.status_code == 200
    assert _replay(stack).provider_data_seen == [{"together_api_key": "mine"}, {}]


@pytest.mark.parametrize("header", ["{not json", "[1, 2]"])
async def test_a_malformed_header_is_a_400_naming_it(stack, header):
    transport = httpx.ASGITransport(app=create_app(stack))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(
            "/inference/chat_completion",
            json={"model": "replay-model", "dialog": DIALOG},
            headers={PROVIDER_DATA_HEADER: header},
        )
    assert response.status_code == 400
    assert PROVIDER_DATA_HEADER in response.json()["error"]["message"]
    assert _replay(stack).provider_data_seen == []


async def test_the_http_client_sends_it(stack):
    client = LlamaStackClient.http("http://test", provider_data={"emissary_api_key": "k"})
    client.transport._http._transport = httpx.ASGITransport(app=create_app(stack))  # type: ignore[attr-defined]
    await client.inference.chat_completion(model="replay-model", dialog=DIALOG)
    await client.aclose()
    assert _replay(stack).provider_data_seen == [{"emissary_api_key": "k"}]


async def test_the_library_client_hands_it_over_in_process(tmp_path, replay_registry):
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    client = await LlamaStackClient.library(stack, provider_data={"together_api_key": "lib"})
    await client.inference.chat_completion(model="replay-model", dialog=DIALOG)
    seen = list(_replay(stack).provider_data_seen)
    await client.aclose()
    assert seen == [{"together_api_key": "lib"}]
