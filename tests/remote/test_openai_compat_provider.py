"""remote::openai-compat against real OpenAI-compatible servers.

The upstream is this project's own server (its /v1 routes) serving the replay distribution from
tests/support.py in a uvicorn task of the tests' event loop: its answers are deterministic (the replay
honours stop / max_tokens / logprobs, ``tool-model`` calls two tools, ``counting-model`` counts usage,
``busy-model`` answers 503, ``breaking-model`` breaks its stream) and it validates every request the provider
sends as strictly as the OpenAI routes validate any client's (unknown fields are refused). A recording ASGI
wrapper keeps the exact requests the upstream received.

A small Starlette app stands in for servers whose answers our own server never gives (tool-call arguments
streamed in pieces, embeddings out of order, answers in the wrong shape, llama.cpp's ``repeat_penalty``).
The slow tests at the end go through ``llama-stack run local`` and the real SmolLM2.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from remote.conftest import FAST_RETRIES
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import TOOL_CALLS, free_port, uvicorn_serving, write_replay_distribution

from llama_stack.apis.common import Attachment, ToolCall
from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import TokenLogprob, TopLogprob
from llama_stack.client import LlamaStackClient
from llama_stack.config import ConfigError
from llama_stack.resolver import Stack
from llama_stack.server import create_app

REPLY = "The capital of France is Paris."
WORDS = ["The", " capital", " of", " France", " is", " Paris."]
ASK = {"message": {"role": "user", "content": "What is the capital of France?"}}
UPSTREAM_KEY = "sk-upstream-secret"

WEATHER = {
    "tool_name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"tool_name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}

# Downstream model id -> the upstream (replay) model it names.
MODELS = {
    "remote-replay": "replay-model",
    "remote-tools": "tool-model",
    "remote-counting": "counting-model",
    "remote-busy": "busy-model",
    "remote-breaking": "breaking-model",
    "remote-refusing": "failing-400",
    "remote-unsupported": "failing-501",
}


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_COMPAT_API_KEY", raising=False)


# ------------------------------------------------------------------------------------------- upstreams


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upstream:
    url: str
    stack: Stack
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    @property
    def replay(self) -> Any:
        return self.stack.providers["replay"].impl

    def calls(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def reset(self) -> None:
        self.received.clear()
        self.replay.requests.clear()
        self.most_in_flight = 0


def recording(app: Any, upstream: Upstream) -> Any:
    """An ASGI wrapper that keeps every request (headers, body) and how many were in flight at once."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        record = Received(scope["method"], scope["path"], headers)
        upstream.received.append(record)

        async def receive_and_keep() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                record.body += message.get("body", b"")
            return message

        upstream.in_flight += 1
        upstream.most_in_flight = max(upstream.most_in_flight, upstream.in_flight)
        try:
            await app(scope, receive_and_keep, send)
        finally:
            upstream.in_flight -= 1

    return wrapped


async def serve(app: Any) -> tuple[str, Any]:
    """Serve an ASGI app with uvicorn in this event loop; (base URL, a coroutine function that stops it)."""
    running = contextlib.AsyncExitStack()
    url = await running.enter_async_context(uvicorn_serving(app))
    return url, running.aclose


async def start_upstream(directory: Path, registry: Any, api_keys: list[str] | None = None) -> tuple[Upstream, Any]:
    stack = Stack.from_distribution(write_replay_distribution(directory, api_keys), registry=registry)
    await stack.start()
    upstream = Upstream(url="", stack=stack)
    url, stop_server = await serve(recording(create_app(stack), upstream))
    upstream.url = url

    async def stop() -> None:
        await stop_server()
        await stack.shutdown()

    return upstream, stop


@pytest.fixture(scope="module")
async def upstream_server(tmp_path_factory, replay_registry) -> AsyncIterator[Upstream]:
    upstream, stop = await start_upstream(tmp_path_factory.mktemp("upstream"), replay_registry)
    yield upstream
    await stop()


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="module")
async def keyed_upstream_server(tmp_path_factory, replay_registry) -> AsyncIterator[Upstream]:
    """The same upstream, but every route wants `Authorization: Bearer sk-upstream-secret`."""
    upstream, stop = await start_upstream(tmp_path_factory.mktemp("keyed"), replay_registry, [UPSTREAM_KEY])
    yield upstream
    await stop()


@pytest.fixture
def keyed_upstream(keyed_upstream_server: Upstream) -> Upstream:
    keyed_upstream_server.reset()
    return keyed_upstream_server


def provider(url: str, **config: Any) -> dict[str, Any]:
    return {
        "inference": [
            {
                "provider_id": "upstream",
                "provider_type": "remote::openai-compat",
                "config": {"url": url, **FAST_RETRIES, **config},
            }
        ]
    }


def models(mapping: dict[str, str] = MODELS, model_type: str = "llm") -> list[dict[str, Any]]:
    return [
        {"model_id": ours, "provider_id": "upstream", "provider_model_id": theirs, "model_type": model_type}
        for ours, theirs in mapping.items()
    ]


@pytest.fixture
def connect(start_stack, upstream):
    """``await connect(**config)``: a client of a stack whose remote::openai-compat points at the upstream."""

    async def make(
        model_list: list[dict[str, Any]] | None = None, provider_data: dict[str, Any] | None = None, **config: Any
    ):
        client = await start_stack(
            provider(f"{upstream.url}/v1", **config), model_list or models(), provider_data=provider_data
        )
        upstream.reset()  # start-up's GET /models is not what a test asks about
        return client

    return make


def chat_bodies(upstream: Upstream) -> list[dict[str, Any]]:
    return [r.json for r in upstream.calls("/v1/chat/completions")]


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


# ---------------------------------------------------------------------------------------------- chat


async def test_chat_answers_through_the_upstream_with_the_exact_request(connect, upstream):
    client = await connect()
    answer = await client.inference.chat_completion(model="remote-replay", dialog=ASK)
    assert answer.content == REPLY
    assert answer.stop_reason == "finished_ok" and answer.tool_calls == [] and answer.usage is None
    (sent,) = upstream.calls("/v1/chat/completions")
    assert sent.method == "POST"
    assert sent.json == {
        "model": "replay-model",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0.0,
    }
    assert "authorization" not in sent.headers  # no key configured and none required
    (received,) = upstream.replay.requests
    assert received.model == "replay-model" and received.sampling_params.strategy == "greedy"


async def test_streamed_chat_arrives_word_by_word_with_usage(connect, upstream):
    client = await connect()
    chunks = await collect(await client.inference.chat_completion(model="remote-counting", dialog=ASK, stream=True))
    assert [c.text_delta for c in chunks[:-1]] == WORDS
    assert all(c.stop_reason == "not_stopped" for c in chunks[:-1])  # as every remote adapter streams
    assert chunks[-1].text_delta == "" and chunks[-1].stop_reason == "finished_ok"
    assert chunks[-1].usage.model_dump() == {"prompt_tokens": 6, "completion_tokens": 6}
    (body,) = chat_bodies(upstream)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_usage_can_be_turned_off_for_servers_that_refuse_stream_options(connect, upstream):
    client = await connect(stream_usage=False)
    chunks = await collect(await client.inference.chat_completion(model="remote-counting", dialog=ASK, stream=True))
    assert "".join(c.text_delta for c in chunks) == REPLY
    assert chunks[-1].usage is None
    (body,) = chat_bodies(upstream)
    assert body["stream"] is True and "stream_options" not in body


async def test_a_closed_stream_stops_reading_the_upstream(connect, upstream):
    client = await connect()
    stream = await client.inference.chat_completion(model="remote-replay", dialog=ASK, stream=True)
    first = await stream.__anext__()
    await stream.aclose()
    assert first.text_delta == "The"
    # The provider is free for the next request at once.
    assert (await client.inference.chat_completion(model="remote-replay", dialog=ASK)).content == REPLY


async def test_dialog_roles_and_system_prompt_reach_the_upstream(connect, upstream):
    client = await connect()
    dialog = {
        "message_history": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        "message": {"role": "user", "content": ["Part one.", " Part two."]},
    }
    await client.inference.chat_completion(model="remote-replay", dialog=dialog)
    (body,) = chat_bodies(upstream)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Part one. Part two."},
    ]


# --------------------------------------------------------------------------------------------- tools


async def test_tool_calls_come_back_with_their_ids(connect, upstream):
    client = await connect()
    answer = await client.inference.chat_completion(model="remote-tools", dialog=ASK, available_tools=[WEATHER, TIME])
    assert answer.content == "" and answer.stop_reason == "finished_ok"
    assert [(c.tool_name, c.arguments) for c in answer.tool_calls] == [
        (c["tool_name"], c["arguments"]) for c in TOOL_CALLS
    ]
    assert answer.tool_calls[0].call_id == "call_weather_1"
    assert answer.tool_calls[1].call_id.startswith("call_")  # the upstream made one up
    (body,) = chat_bodies(upstream)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "The weather in a city.",
            },
        },
        {"type": "function", "function": {"name": "get_time", "parameters": TIME["parameters"]}},
    ]
    assert body["tool_choice"] == "auto"


async def test_streamed_tool_calls_arrive_in_order_after_the_text(connect, upstream):
    client = await connect()
    stream = await client.inference.chat_completion(
        model="remote-tools", dialog=ASK, available_tools=[WEATHER, TIME], stream=True
    )
    chunks = await collect(stream)
    calls = [(c.tool_call_index, c.tool_call.tool_name, c.tool_call.arguments) for c in chunks if c.tool_call]
    assert calls == [(0, "get_weather", TOOL_CALLS[0]["arguments"]), (1, "get_time", TOOL_CALLS[1]["arguments"])]
    assert chunks[-1].stop_reason == "finished_ok" and chunks[-1].usage.completion_tokens == 0


async def test_tool_choice_and_built_in_tools_are_mapped(connect, upstream):
    client = await connect()
    await client.inference.chat_completion(
        model="remote-tools",
        dialog=ASK,
        available_tools=[WEATHER, {"tool_name": "web_search"}],
        tool_choice="get_weather",
    )
    none = await client.inference.chat_completion(
        model="remote-tools", dialog=ASK, available_tools=[WEATHER], tool_choice="none"
    )
    named, refused = chat_bodies(upstream)
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert named["tools"][1] == {
        "type": "function",
        "function": {
            "name": "web_search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to search for."}},
                "required": ["query"],
            },
        },
    }
    assert refused["tool_choice"] == "none" and none.tool_calls == [] and none.content == REPLY
    assert [r.tool_choice for r in upstream.replay.requests] == ["get_weather", "none"]


async def test_tool_results_are_linked_to_their_calls(connect, upstream):
    client = await connect()
    dialog = {
        "message_history": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"tool_name": "get_weather", "arguments": {"city": "Paris"}, "call_id": "call_w"},
                    {"tool_name": "get_time", "arguments": {"zone": "Europe/Paris"}},
                ],
            },
            # Results may leave out call_id: they are matched by tool name.
            {"role": "tool", "content": "", "tool_responses": [{"tool_name": "get_time", "content": "14:00"}]},
            {
                "role": "tool",
                "content": "",
                "tool_responses": [{"tool_name": "get_weather", "content": "Sunny", "call_id": "call_w"}],
            },
        ],
        "message": {"role": "user", "content": "Thanks. Summarize."},
    }
    await client.inference.chat_completion(model="remote-replay", dialog=dialog, available_tools=[WEATHER, TIME])
    (body,) = chat_bodies(upstream)
    assert body["messages"][1:4] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_1_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1_1", "content": "14:00"},
        {"role": "tool", "tool_call_id": "call_w", "content": "Sunny"},
    ]
    # The upstream linked them back to the same calls.
    history = upstream.replay.requests[0].dialog.message_history
    assert [(r.tool_name, r.call_id) for m in history[2:4] for r in m.tool_responses] == [
        ("get_time", "call_1_1"),
        ("get_weather", "call_w"),
    ]


async def test_a_tool_result_that_answers_no_call_is_refused_before_sending(connect, upstream):
    client = await connect()
    dialog = {
        "message_history": [{"role": "user", "content": "Hi"}],
        "message": {"role": "tool", "content": "", "tool_responses": [{"tool_name": "get_time", "content": "14:00"}]},
    }
    with pytest.raises(BadRequestError) as caught:
        await client.inference.chat_completion(model="remote-replay", dialog=dialog)
    assert "dialog.message.tool_responses[0].call_id" in caught.value.message
    assert "answers no tool call" in caught.value.message and caught.value.provider == "upstream"
    assert upstream.received == []


# ------------------------------------------------------------------------------ sampling and options


async def test_sampling_fields_and_extensions_reach_the_upstream(connect, upstream):
    client = await connect()
    sampling = {
        "strategy": "top_k",
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 42,
        "frequency_penalty": 0.4,
        "presence_penalty": -0.2,
    }
    await client.inference.chat_completion(model="remote-replay", dialog=ASK, sampling_params=sampling, max_tokens=50)
    (body,) = chat_bodies(upstream)
    fields = (
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "max_tokens",
    )
    assert {k: body[k] for k in fields} == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 42,
        "frequency_penalty": 0.4,
        "presence_penalty": -0.2,
        "max_tokens": 50,
    }
    received = upstream.replay.requests[0].sampling_params
    assert (received.strategy, received.top_k, received.repetition_penalty, received.seed) == ("top_k", 40, 1.1, 42)
    assert (received.frequency_penalty, received.presence_penalty) == (0.4, -0.2)  # through our own /v1 route


async def test_without_sampling_extensions_top_k_is_refused_before_sending(connect, upstream):
    client = await connect(sampling_extensions="none")
    sampling = {"strategy": "top_k", "temperature": 0.7, "top_k": 40}
    with pytest.raises(BadRequestError) as caught:
        await client.inference.chat_completion(model="remote-replay", dialog=ASK, sampling_params=sampling)
    assert "sampling_params.top_k" in caught.value.message and "sampling_extensions" in caught.value.message
    assert upstream.received == []
    # What OpenAI's API has still goes through.
    await client.inference.chat_completion(
        model="remote-replay", dialog=ASK, sampling_params={"strategy": "top_p", "temperature": 0.5}
    )
    (body,) = chat_bodies(upstream)
    assert body["temperature"] == 0.5 and body["top_p"] == 0.95 and "top_k" not in body


async def test_stop_and_max_tokens(connect, upstream):
    client = await connect()
    stopped = await client.inference.chat_completion(model="remote-replay", dialog=ASK, stop=[" France", "zzz"])
    assert stopped.content == "The capital of" and stopped.stop_reason == "finished_ok"
    cut = await client.inference.chat_completion(model="remote-replay", dialog=ASK, max_tokens=3)
    assert cut.content == "The capital of" and cut.stop_reason == "max_tokens"
    chunks = await collect(
        await client.inference.chat_completion(model="remote-replay", dialog=ASK, max_tokens=2, stream=True)
    )
    assert chunks[-1].stop_reason == "max_tokens"
    first, second, _ = chat_bodies(upstream)
    assert first["stop"] == [" France", "zzz"] and second["max_tokens"] == 3


async def test_logprobs_with_top_alternatives(connect, upstream):
    client = await connect()
    answer = await client.inference.chat_completion(model="remote-replay", dialog=ASK, logprobs=True, top_logprobs=2)
    assert [t.token for t in answer.logprobs.content] == WORDS
    assert answer.logprobs.content[1] == TokenLogprob(
        token=" capital",
        logprob=-0.2,
        top_logprobs=[TopLogprob(token=" capital", logprob=-0.2), TopLogprob(token="alt1", logprob=-1.2)],
    )
    chunks = await collect(
        await client.inference.chat_completion(
            model="remote-replay", dialog=ASK, logprobs=True, top_logprobs=3, stream=True
        )
    )
    streamed = [t for c in chunks if c.logprobs for t in c.logprobs.content]
    assert [t.token for t in streamed] == WORDS
    assert [a.token for a in streamed[0].top_logprobs] == ["The", "alt1", "alt2"]
    plain, stream = chat_bodies(upstream)
    assert (plain["logprobs"], plain["top_logprobs"], stream["top_logprobs"]) == (True, 2, 3)


async def test_response_format_json_schema(connect, upstream):
    client = await connect()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    await client.inference.chat_completion(
        model="remote-replay", dialog=ASK, response_format={"type": "json_schema", "json_schema": schema}
    )
    await client.inference.chat_completion(model="remote-replay", dialog=ASK, response_format={"type": "json_object"})
    with_schema, with_object = chat_bodies(upstream)
    assert with_schema["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert with_object["response_format"] == {"type": "json_object"}
    assert [r.response_format.type for r in upstream.replay.requests] == ["json_schema", "json_object"]
    assert upstream.replay.requests[0].response_format.json_schema == schema


# --------------------------------------------------------------------------------------- attachments


PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake image").decode()


async def test_images_travel_as_image_url_parts(connect, upstream):
    client = await connect()
    message = {"role": "user", "content": ["What is in this picture?", {"url": PNG, "mime_type": "image/png"}]}
    await client.inference.chat_completion(model="remote-replay", dialog={"message": message})
    (body,) = chat_bodies(upstream)
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
        }
    ]
    assert upstream.replay.requests[0].dialog.message.content == [
        "What is in this picture?",
        Attachment(url=PNG, mime_type="image/png"),
    ]


async def test_text_attachments_are_inlined(connect, upstream):
    client = await connect()
    note = "data:text/plain;base64," + base64.b64encode(b"Paris is in France.").decode()
    message = {"role": "user", "content": ["Read this:", {"url": note, "mime_type": "text/plain"}]}
    await client.inference.chat_completion(model="remote-replay", dialog={"message": message})
    (body,) = chat_bodies(upstream)
    assert body["messages"][0]["content"] == (
        "Read this:\n\n[Attachment: data:text/plain (inline) (text/plain)]\nParis is in France.\n[End of attachment]"
    )


@pytest.mark.parametrize(
    ("message", "where", "why"),
    [
        (
            {"role": "user", "content": {"url": "file:///tmp/cat.png", "mime_type": "image/png"}},
            "dialog.message.content",
            "data: URL",
        ),
        (
            {"role": "system", "content": [{"url": PNG, "mime_type": "image/png"}]},
            "dialog.message.content[0]",
            "only be sent in user messages",
        ),
    ],
)
async def test_images_the_server_cannot_take_are_refused_before_sending(connect, upstream, message, where, why):
    client = await connect()
    with pytest.raises(BadRequestError) as caught:
        await client.inference.chat_completion(model="remote-replay", dialog={"message": message})
    assert caught.value.message.startswith(where) and why in caught.value.message
    assert upstream.received == []


# ---------------------------------------------------------------------------------------- completions


async def test_completion_plain_and_streamed(connect, upstream):
    client = await connect()
    answer = await client.inference.completion(model="remote-counting", content="The capital of France is")
    assert answer.content == REPLY and answer.stop_reason == "finished_ok"
    assert answer.usage.model_dump() == {"prompt_tokens": 5, "completion_tokens": 6}
    chunks = await collect(await client.inference.completion(model="remote-counting", content="Hi", stream=True))
    assert [c.text_delta for c in chunks[:-1]] == WORDS
    assert chunks[-1].stop_reason == "finished_ok" and chunks[-1].usage.prompt_tokens == 1
    plain, streamed = [r.json for r in upstream.calls("/v1/completions")]
    # Our max_tokens 0 means "until the model stops"; /completions would stop after 16 without one.
    assert plain == {
        "model": "counting-model",
        "prompt": "The capital of France is",
        "temperature": 0.0,
        "max_tokens": 1024,
    }
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}


async def test_completion_logprobs_stop_and_max_tokens(connect, upstream):
    client = await connect(completion_max_tokens=64)
    answer = await client.inference.completion(
        model="remote-replay", content="Q", logprobs=True, top_logprobs=2, stop=[" is"]
    )
    assert answer.content == "The capital of France"
    assert [t.token for t in answer.logprobs.content] == WORDS[:4]
    assert answer.logprobs.content[0].top_logprobs == [
        TopLogprob(token="The", logprob=-0.1),
        TopLogprob(token="alt1", logprob=-1.1),
    ]
    cut = await client.inference.completion(model="remote-replay", content="Q", max_tokens=2)
    assert cut.content == "The capital" and cut.stop_reason == "max_tokens"
    chunks = await collect(
        await client.inference.completion(model="remote-replay", content="Q", logprobs=True, stream=True)
    )
    assert [t.token for c in chunks if c.logprobs for t in c.logprobs.content] == WORDS
    first, second, _ = [r.json for r in upstream.calls("/v1/completions")]
    assert (first["logprobs"], first["stop"], first["max_tokens"]) == (2, [" is"], 64)
    assert second["max_tokens"] == 2


async def test_a_completion_prompt_with_an_image_is_refused(connect, upstream):
    client = await connect()
    with pytest.raises(BadRequestError) as caught:
        await client.inference.completion(
            model="remote-replay", content=["Describe", {"url": PNG, "mime_type": "image/png"}]
        )
    assert "content[1]" in caught.value.message and "chat_completion" in caught.value.message
    assert upstream.received == []


# -------------------------------------------------------------------------------------------- batches


async def test_batches_answer_in_input_order_with_bounded_concurrency(connect, upstream):
    client = await connect(max_concurrency=2)
    prompts = ["one", "one two", "one two three", "one two three four", "one two three four five"]
    answers = await client.inference.batch_completion(model="remote-counting", content_batch=prompts, max_tokens=3)
    assert [a.usage.prompt_tokens for a in answers] == [1, 2, 3, 4, 5]
    assert all(a.content == "The capital of" and a.stop_reason == "max_tokens" for a in answers)
    assert sorted(r.json["prompt"] for r in upstream.calls("/v1/completions")) == prompts
    assert upstream.most_in_flight <= 2

    upstream.reset()
    dialogs = [{"message": {"role": "user", "content": "a " * n}} for n in (3, 1, 2)]
    chats = await client.inference.batch_chat_completion(
        model="remote-tools", batch_dialogs=dialogs, available_tools=[WEATHER, TIME]
    )
    assert [len(c.tool_calls) for c in chats] == [2, 2, 2]
    assert all(c.tool_calls[0].call_id == "call_weather_1" for c in chats)
    assert len(chat_bodies(upstream)) == 3 and upstream.most_in_flight <= 2


async def test_a_failing_batch_item_fails_the_batch(connect, upstream):
    client = await connect()
    with pytest.raises(BadRequestError) as caught:
        await client.inference.batch_completion(model="remote-refusing", content_batch=["a", "b"])
    assert caught.value.provider == "upstream" and "replayed a 400" in caught.value.message


# --------------------------------------------------------------------------------------------- errors


async def test_an_unknown_upstream_model_is_a_404_naming_the_provider(connect, upstream):
    client = await connect(models({"typo": "no-such-model"}), check_models=False)
    with pytest.raises(NotFoundError) as caught:
        await client.inference.chat_completion(model="typo", dialog=ASK)
    error = caught.value
    assert error.status == 404 and error.provider == "upstream" and error.code == "model_not_found"
    assert "provider 'upstream' (OpenAI-compatible server at http://127.0.0.1:" in error.message
    assert "does not serve model 'no-such-model'" in error.message
    assert "The model 'no-such-model' is not served by this distribution" in error.message  # the upstream's own words


async def test_start_up_refuses_a_model_the_upstream_does_not_list(start_stack, upstream):
    with pytest.raises(ConfigError) as caught:
        await start_stack(provider(f"{upstream.url}/v1"), models({"typo": "no-such-model"}))
    message = str(caught.value)
    assert "model 'typo'" in message and "does not serve 'no-such-model'" in message
    assert "replay-model" in message and "check_models: false" in message
    assert [r.path for r in upstream.received] == ["/v1/models"]


async def test_start_up_accepts_upstream_aliases(start_stack, upstream):
    client = await start_stack(provider(f"{upstream.url}/v1"), models({"via-alias": "replay-alias"}))
    assert (await client.inference.chat_completion(model="via-alias", dialog=ASK)).content == REPLY


async def test_start_up_goes_on_when_the_upstream_is_down(start_stack):
    # The upstream may start later; requests then say it cannot be reached.
    client = await start_stack(provider(f"http://127.0.0.1:{free_port()}/v1", max_retries=0), models({"m": "m"}))
    with pytest.raises(ServiceUnavailableError) as caught:
        await client.inference.chat_completion(model="m", dialog=ASK)
    assert (
        caught.value.status == 503
        and "cannot be reached" in caught.value.message
        and caught.value.provider == "upstream"
    )


async def test_rerank_models_are_refused_at_start_up(start_stack, upstream):
    with pytest.raises(ConfigError) as caught:
        await start_stack(provider(f"{upstream.url}/v1"), models({"ranker": "replay-reranker"}, model_type="rerank"))
    assert "cannot serve rerank models" in str(caught.value)


async def test_an_overloaded_upstream_is_a_503_after_the_retries(connect, upstream):
    client = await connect()
    with pytest.raises(ServiceUnavailableError) as caught:
        await client.inference.chat_completion(model="remote-busy", dialog=ASK)
    assert caught.value.status == 503 and caught.value.provider == "upstream"
    assert "after 2 retries" in caught.value.message and "model is busy" in caught.value.message
    assert len(upstream.calls("/v1/chat/completions")) == 3
    # Streams are retried the same way before their first byte.
    with pytest.raises(ServiceUnavailableError):
        await client.inference.chat_completion(model="remote-busy", dialog=ASK, stream=True)


async def test_upstream_refusals_keep_their_status_and_message(connect, upstream):
    client = await connect()
    with pytest.raises(BadRequestError) as refused:
        await client.inference.chat_completion(model="remote-refusing", dialog=ASK)
    assert refused.value.provider == "upstream" and "replayed a 400" in refused.value.message
    with pytest.raises(NotSupportedError) as unsupported:
        await client.inference.chat_completion(model="remote-unsupported", dialog=ASK)
    assert unsupported.value.status == 501 and "replayed a 501" in unsupported.value.message
    # The server's own validation (max_tokens beyond its model's context window of 4096) comes back as a 400 too.
    with pytest.raises(BadRequestError) as invalid:
        await client.inference.chat_completion(model="remote-replay", dialog=ASK, max_tokens=5_000)
    assert "context window" in invalid.value.message
    assert len(upstream.calls("/v1/chat/completions")) == 3  # 4xx/501 are not retried


async def test_a_stream_that_breaks_upstream_raises_mid_stream(connect, upstream):
    client = await connect()
    stream = await client.inference.chat_completion(model="remote-breaking", dialog=ASK, stream=True)
    first = await stream.__anext__()
    assert first.text_delta == "The"
    with pytest.raises(ProviderError) as caught:
        await stream.__anext__()
    assert "the stream broke" in caught.value.message and caught.value.provider == "upstream"


# ----------------------------------------------------------------------------------------------- keys


async def test_the_configured_key_is_sent_as_a_bearer_token(start_stack, keyed_upstream):
    client = await start_stack(
        provider(f"{keyed_upstream.url}/v1", api_key=UPSTREAM_KEY), models({"m": "replay-model"})
    )
    assert (await client.inference.chat_completion(model="m", dialog=ASK)).content == REPLY
    assert {r.headers["authorization"] for r in keyed_upstream.received} == {f"Bearer {UPSTREAM_KEY}"}


async def test_a_request_can_bring_its_own_key(start_stack, keyed_upstream):
    config = provider(f"{keyed_upstream.url}/v1", check_models=False)
    client = await start_stack(
        config, models({"m": "replay-model"}), provider_data={"openai_compat_api_key": UPSTREAM_KEY}
    )
    assert (await client.inference.completion(model="m", content="Hi")).content == REPLY
    # A stream is read after the call returns, outside the request's context: the key went with its start.
    chunks = await collect(await client.inference.chat_completion(model="m", dialog=ASK, stream=True))
    assert "".join(c.text_delta for c in chunks) == REPLY
    sent = keyed_upstream.calls("/v1/completions") + keyed_upstream.calls("/v1/chat/completions")
    assert [r.headers["authorization"] for r in sent] == [f"Bearer {UPSTREAM_KEY}"] * 2


async def test_the_environment_variable_is_read(start_stack, keyed_upstream, monkeypatch):
    monkeypatch.setenv("OPENAI_COMPAT_API_KEY", UPSTREAM_KEY)
    client = await start_stack(provider(f"{keyed_upstream.url}/v1"), models({"m": "replay-model"}))
    assert (await client.inference.chat_completion(model="m", dialog=ASK)).content == REPLY


async def test_a_server_that_wants_a_key_nobody_gave_says_how_to_give_one(start_stack, keyed_upstream):
    client = await start_stack(provider(f"{keyed_upstream.url}/v1", check_models=False), models({"m": "replay-model"}))
    with pytest.raises(ProviderError) as caught:
        await client.inference.chat_completion(model="m", dialog=ASK)
    error = caught.value
    assert error.status == 502 and error.code == "provider_auth_failed" and error.provider == "upstream"
    assert "wants an API key" in error.message and "OPENAI_COMPAT_API_KEY" in error.message
    assert "authorization" not in keyed_upstream.received[0].headers


async def test_a_required_key_is_asked_for_before_anything_is_sent(start_stack, keyed_upstream):
    config = provider(f"{keyed_upstream.url}/v1", api_key_required=True)
    client = await start_stack(config, models({"m": "replay-model"}))
    with pytest.raises(AuthenticationError) as caught:
        await client.inference.chat_completion(model="m", dialog=ASK)
    assert "has no API key" in caught.value.message and "openai_compat_api_key" in caught.value.message
    assert keyed_upstream.received == []


async def test_a_wrong_key_never_shows_up_in_the_error(start_stack, keyed_upstream):
    client = await start_stack(
        provider(f"{keyed_upstream.url}/v1", api_key="sk-wrong-secret", check_models=False),
        models({"m": "replay-model"}),
    )
    with pytest.raises(ProviderError) as caught:
        await client.inference.chat_completion(model="m", dialog=ASK)
    assert "rejected its configured API key" in caught.value.message
    assert "sk-wrong-secret" not in caught.value.message


# ----------------------------------------------------------------------------------------- embeddings


async def test_embeddings_through_the_upstream(connect, upstream):
    client = await connect(models({"remote-embedder": "replay-embedder"}, model_type="embedding"))
    answer = await client.inference.embeddings(model="remote-embedder", contents=["a banana", "hi"])
    assert answer.embeddings == [[8.0, 2.0, 4.0, 1.0], [2.0, 1.0, 0.0, 1.0]]
    (sent,) = upstream.calls("/v1/embeddings")
    assert sent.json == {"model": "replay-embedder", "input": ["a banana", "hi"], "encoding_format": "float"}


# ------------------------------------------------------------------------- a scripted OpenAI server


class Scripted:
    """A tiny OpenAI-compatible server whose answers each test scripts (what our own server never sends)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: Request) -> Response:
        body = await request.json() if request.method == "POST" else {}
        self.bodies.append(body)
        answer = self.answers[request.url.path]
        if isinstance(answer, list):  # server-sent events
            events = "".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in answer)
            return Response(events, media_type="text/event-stream")
        return JSONResponse(answer)

    def app(self) -> Starlette:
        paths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"]
        return Starlette(routes=[Route(p, self.handle, methods=["GET", "POST"]) for p in paths])


@pytest.fixture(scope="module")
async def scripted_server() -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted()
    url, stop = await serve(scripted.app())
    yield scripted, url
    await stop()


@pytest.fixture
def scripted(scripted_server, start_stack):
    server, url = scripted_server
    server.answers.clear()
    server.bodies.clear()

    async def connect(model_type: str = "llm", **config: Any) -> tuple[Scripted, LlamaStackClient]:
        client = await start_stack(
            provider(f"{url}/v1", check_models=False, **config), models({"m": "their-model"}, model_type)
        )
        return server, client

    return connect


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def test_tool_call_deltas_are_accumulated_by_index(scripted):
    server, client = await scripted()
    server.answers["/v1/chat/completions"] = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "b", "type": "function", "function": {"name": "get_time", "arguments": '{"zo'}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'ne": "UTC"}'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, finish="tool_calls"),
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
        "[DONE]",
    ]
    chunks = await collect(
        await client.inference.chat_completion(model="m", dialog=ASK, available_tools=[WEATHER, TIME], stream=True)
    )
    assert [(c.tool_call_index, c.tool_call) for c in chunks if c.tool_call] == [
        (0, ToolCall(tool_name="get_weather", arguments={"city": "Paris"}, call_id="a")),
        (1, ToolCall(tool_name="get_time", arguments={"zone": "UTC"}, call_id="b")),
    ]
    assert chunks[-1].stop_reason == "finished_ok" and chunks[-1].usage.model_dump() == {
        "prompt_tokens": 9,
        "completion_tokens": 4,
    }


async def test_a_tool_call_with_unreadable_arguments_keeps_them_as_raw_text(scripted):
    server, client = await scripted()
    server.answers["/v1/chat/completions"] = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city: Paris"},
                        },
                        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    answer = await client.inference.chat_completion(model="m", dialog=ASK, available_tools=[WEATHER, TIME])
    # The call stays a call (its id, name and what the model wrote), as every remote provider keeps it.
    assert answer.tool_calls == [
        ToolCall(tool_name="get_weather", arguments={"raw_arguments": "{city: Paris"}, call_id="a"),
        ToolCall(tool_name="get_time", arguments={}, call_id="b"),
    ]
    assert answer.content == ""


async def test_finish_reason_length_is_max_tokens(scripted):
    server, client = await scripted()
    server.answers["/v1/completions"] = {"id": "x", "choices": [{"index": 0, "text": "abc", "finish_reason": "length"}]}
    answer = await client.inference.completion(model="m", content="Q")
    assert (answer.content, answer.stop_reason, answer.usage) == ("abc", "max_tokens", None)


async def test_llama_cpp_extension_fields(scripted):
    server, client = await scripted(sampling_extensions="llama.cpp")
    server.answers["/v1/chat/completions"] = {
        "id": "x",
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
    }
    sampling = {"strategy": "top_k", "temperature": 0.8, "top_k": 20, "repetition_penalty": 1.3}
    await client.inference.chat_completion(model="m", dialog=ASK, sampling_params=sampling)
    (body,) = server.bodies
    assert (body["top_k"], body["repeat_penalty"]) == (20, 1.3) and "repetition_penalty" not in body


async def test_embeddings_are_put_back_in_input_order(scripted):
    server, client = await scripted(model_type="embedding")
    server.answers["/v1/embeddings"] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, 0.5]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
        ],
    }
    answer = await client.inference.embeddings(model="m", contents=["first", "second"])
    assert answer.embeddings == [[1.0, 0.0], [0.5, 0.5]]
    assert server.bodies == [{"model": "their-model", "input": ["first", "second"], "encoding_format": "float"}]


async def test_embeddings_that_do_not_match_the_texts_are_a_502(scripted):
    server, client = await scripted(model_type="embedding")
    server.answers["/v1/embeddings"] = {"data": [{"index": 0, "embedding": [1.0]}]}
    with pytest.raises(ProviderError) as caught:
        await client.inference.embeddings(model="m", contents=["first", "second"])
    assert (
        "answered POST /embeddings with 1 embeddings" in caught.value.message and "for 2 texts" in caught.value.message
    )


async def test_an_answer_in_the_wrong_shape_is_a_502(scripted):
    server, client = await scripted()
    server.answers["/v1/chat/completions"] = {"id": "x", "result": "hello"}
    with pytest.raises(ProviderError) as caught:
        await client.inference.chat_completion(model="m", dialog=ASK)
    assert caught.value.status == 502 and caught.value.provider == "upstream"
    assert 'answered POST /chat/completions without a choice: {"id": "x", "result": "hello"}' in caught.value.message


async def test_a_stream_without_its_end_marker_is_a_502(scripted):
    server, client = await scripted()
    server.answers["/v1/chat/completions"] = [chunk({"content": "Hel"}), chunk({"content": "lo"})]
    stream = await client.inference.chat_completion(model="m", dialog=ASK, stream=True)
    with pytest.raises(ProviderError) as caught:
        await collect(stream)
    assert "without [DONE]" in caught.value.message


# ------------------------------------------------------------------------------- the real SmolLM2 (slow)

LOCAL_MODEL = "smollm2-135m-instruct"
QUESTION = {"message": {"role": "user", "content": "What is the capital of France?"}}


@pytest.fixture
async def through_local(local_server, start_stack):
    """A stack whose remote::openai-compat points at `llama-stack run local`'s /v1."""
    return await start_stack(
        provider(f"{local_server}/v1", timeout=120.0),
        [{"model_id": "smol", "provider_id": "upstream", "provider_model_id": LOCAL_MODEL}],
    )


@pytest.mark.slow
async def test_smollm2_chat_plain_and_streamed_through_openai_compat(through_local):
    whole = await through_local.inference.chat_completion(model="smol", dialog=QUESTION)
    assert "Paris" in whole.content and whole.stop_reason == "finished_ok"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    chunks = await collect(await through_local.inference.chat_completion(model="smol", dialog=QUESTION, stream=True))
    assert len(chunks) > 3
    # Greedy decoding streams exactly the text it answers in one piece.
    assert "".join(c.text_delta for c in chunks) == whole.content
    assert chunks[-1].stop_reason == "finished_ok" and chunks[-1].usage == whole.usage


@pytest.mark.slow
async def test_smollm2_completion_through_openai_compat(through_local):
    answer = await through_local.inference.completion(model="smol", content="The capital of France is", max_tokens=8)
    assert answer.content and answer.usage.completion_tokens <= 8
    chunks = await collect(
        await through_local.inference.completion(
            model="smol", content="The capital of France is", max_tokens=8, stream=True
        )
    )
    assert "".join(c.text_delta for c in chunks) == answer.content
    assert chunks[-1].stop_reason == answer.stop_reason


@pytest.mark.slow
async def test_smollm2_scores_a_prompt_through_openai_compat(through_local):
    """prompt_logprobs travel as echo with logprobs, as vLLM (and this runtime's /v1) take them."""
    prompt = "The capital of France is Paris"
    plain = await through_local.inference.completion(model="smol", content=prompt, max_tokens=3)
    scored = await through_local.inference.completion(
        model="smol", content=prompt, max_tokens=3, prompt_logprobs=2, logprobs=True, top_logprobs=1
    )
    assert scored.content == plain.content  # the echoed prompt is not part of the answer
    assert "".join(e.token for e in scored.prompt_logprobs) == prompt
    assert scored.prompt_logprobs[0].logprob is None and scored.prompt_logprobs[0].top_logprobs == []
    assert all(e.logprob < 0 and len(e.top_logprobs) == 2 for e in scored.prompt_logprobs[1:])
    assert "".join(e.token for e in scored.logprobs.content) == scored.content
    assert all(len(e.top_logprobs) == 1 for e in scored.logprobs.content)  # the answer's own alternatives: 1


async def test_an_echo_that_is_not_the_prompt_is_a_502(scripted):
    server, client = await scripted()
    server.answers["/v1/completions"] = {
        "id": "x",
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": "something else",
                "finish_reason": "stop",
                "logprobs": {
                    "tokens": ["something", " else"],
                    "token_logprobs": [None, -1.0],
                    "top_logprobs": [None, {" else": -1.0}],
                },
            }
        ],
    }
    with pytest.raises(ProviderError) as caught:
        await client.inference.completion(model="m", content="Hello there", prompt_logprobs=0)
    assert caught.value.status == 502 and "cannot score prompts" in caught.value.message
    assert server.bodies[-1]["echo"] is True and server.bodies[-1]["logprobs"] == 0
