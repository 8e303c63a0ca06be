"""The Python client: one code path over HTTP (a real uvicorn server) and in-process."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from support import uvicorn_serving, write_replay_distribution

from llama_stack.apis.errors import NotFoundError, ProviderError, ServiceUnavailableError, ValidationError
from llama_stack.apis.inference import ChatCompletionRequest, ChatCompletionResponse
from llama_stack.client import LlamaStackClient, SyncLlamaStackClient
from llama_stack.resolver import Stack
from llama_stack.server import create_app

DIALOG = {"message": {"role": "user", "content": "What is the capital of France?"}}


@pytest.fixture
async def server(tmp_path, replay_registry):
    """A real uvicorn server in this event loop, serving the replay distribution."""
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url:
        yield stack, url
    await stack.shutdown()


@pytest.fixture
async def clients(server, tmp_path, replay_registry):
    _, url = server
    http = LlamaStackClient.http(url)
    library_dir = tmp_path / "library"
    library_dir.mkdir()
    library = await LlamaStackClient.library(write_replay_distribution(library_dir), registry=replay_registry)
    yield {"http": http, "library": library}
    await http.aclose()
    await library.aclose()


async def test_both_transports_give_the_same_answers(clients):
    results = {}
    for name, client in clients.items():
        chat = await client.inference.chat_completion(model="replay-model", dialog=DIALOG)
        by_object = await client.inference.chat_completion(ChatCompletionRequest(model="replay-model", dialog=DIALOG))
        stream = await client.inference.chat_completion(model="replay-model", dialog=DIALOG, stream=True)
        chunks = [chunk async for chunk in stream]
        batch = await client.inference.batch_completion(model="replay-model", content_batch=["a", "b"])
        models = await client.list_models()
        results[name] = (chat, by_object, chunks, batch, models)
    assert results["http"] == results["library"]
    chat, by_object, chunks, batch, _ = results["http"]
    assert isinstance(chat, ChatCompletionResponse) and chat == by_object
    assert "".join(c.text_delta for c in chunks) == chat.content
    assert [b.content[-2:] for b in batch] == ["#0", "#1"]


async def test_both_transports_raise_the_same_errors(clients):
    for client in clients.values():
        with pytest.raises(NotFoundError, match=r"served models: .*replay-model"):
            await client.inference.chat_completion(model="nope", dialog=DIALOG)
        with pytest.raises(ValidationError) as info:
            await client.inference.chat_completion(
                model="replay-model", dialog={"message": {"role": "robot", "content": "x"}}
            )
        assert info.value.details[0]["loc"] == "dialog.message.role"
        chunks = []
        with pytest.raises(ProviderError, match="the stream broke") as broken:
            async for chunk in await client.inference.chat_completion(
                model="breaking-model", dialog=DIALOG, stream=True
            ):
                chunks.append(chunk)
        assert len(chunks) == 1 and broken.value.provider == "replay"
        with pytest.raises(NotFoundError, match="datasets API is not served"):
            await client.datasets.get_dataset(dataset_id="x")


async def test_a_client_that_disconnects_stops_the_generation(server, replay_registry):
    stack, url = server
    provider = stack.providers["replay"].impl
    provider.stream_closed.clear()
    body = {"model": "stalling-model", "dialog": DIALOG, "stream": True}
    async with httpx.AsyncClient(base_url=url) as http:
        async with http.stream("POST", "/inference/chat_completion", json=body) as response:
            first = await response.aiter_lines().__anext__()
            assert first.startswith("data: ")
        # The provider stalls forever after its first chunk: only the disconnect can end its stream.
        await asyncio.wait_for(provider.stream_closed.wait(), timeout=10)
        assert (await http.get("/health")).status_code == 200


async def test_the_sync_client_wraps_everything(server):
    _, url = server

    def use() -> tuple[str, str]:
        with SyncLlamaStackClient.http(url) as client:
            answer = client.inference.chat_completion(model="replay-model", dialog=DIALOG)
            streamed = "".join(
                c.text_delta for c in client.inference.chat_completion(model="replay-model", dialog=DIALOG, stream=True)
            )
            return answer.content, streamed

    # Blocking code runs in a thread: the server shares this test's event loop.
    content, streamed = await asyncio.to_thread(use)
    assert content == streamed == "The capital of France is Paris."


async def test_a_busy_provider_says_when_to_retry_over_http(server):
    _, url = server
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/inference/chat_completion", json={"model": "busy-model", "dialog": DIALOG})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    client = LlamaStackClient.http(url)
    with pytest.raises(ServiceUnavailableError) as busy:
        await client.inference.chat_completion(model="busy-model", dialog=DIALOG)
    await client.aclose()
    assert busy.value.retry_after == 5.0 and busy.value.provider == "replay"
