"""The OpenAI-compatible routes through the official `openai` package, against a live uvicorn server.

The replay distribution drives every mapping branch deterministically (tests/support.py: `tool-model`
calls two tools, `counting-model` counts usage, the replay honours stop / max_tokens / logprobs); the
slow tests at the end run the same SDK calls against `llama-stack run local` and the real SmolLM2.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from support import TOOL_CALLS, uvicorn_serving, write_replay_distribution

from llama_stack.apis.openai import OpenAIChatCompletion
from llama_stack.client import LlamaStackClient
from llama_stack.resolver import Stack
from llama_stack.server import create_app

REPLY = "The capital of France is Paris."
ASK = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
    },
]


@pytest.fixture(scope="module")
async def server(tmp_path_factory, replay_registry):
    """A real uvicorn server in the tests' event loop, serving the replay distribution."""
    stack = Stack.from_distribution(
        write_replay_distribution(tmp_path_factory.mktemp("openai")), registry=replay_registry
    )
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url:
        yield stack, url
    await stack.shutdown()


@pytest.fixture(scope="module")
async def client(server):
    _, url = server
    # No retries: an error must surface at once (and 4xx/501 tell the SDK not to retry anyway).
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def sent(server):
    """The requests the replay provider received, in our Inference API's types."""
    stack, _ = server
    return stack.providers["replay"].impl.requests


# ------------------------------------------------------------------------------------------------- chat


async def test_chat(client, sent):
    answer = await client.chat.completions.create(model="replay-model", messages=ASK)
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == REPLY
    assert choice.message.tool_calls is None and choice.finish_reason == "stop" and choice.logprobs is None
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == "replay-model" and answer.system_fingerprint.startswith("llama-stack-")
    assert answer.created > 1_700_000_000
    assert answer.usage is None  # replay-model does not count tokens
    request = sent[-1]
    assert request.dialog.message.content == ASK[0]["content"] and request.dialog.message_history == []
    # OpenAI's defaults: temperature 1 and top_p 1 sample; no max_tokens means until the model stops.
    assert (request.sampling_params.strategy, request.sampling_params.temperature, request.sampling_params.top_p) == (
        "top_p",
        1.0,
        1.0,
    )
    assert (request.max_tokens, request.stream, request.logprobs, request.stop) == (0, False, False, [])
    assert request.tool_choice == "auto" and request.response_format is None


async def test_several_choices(client, sent):
    # Sampling without a seed: one batch of n copies of the dialog (replay answers row i with "#i").
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, n=3)
    assert [(c.index, c.message.content) for c in answer.choices] == [(i, f"{REPLY} #{i}") for i in range(3)]
    assert len(sent[-1].batch_dialogs) == 3 and sent[-1].batch_dialogs[0].message.content == ASK[0]["content"]
    # With a seed: copy j samples with seed + j (each a batch of one), so the choices differ and repeat.
    before = len(sent)
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, n=2, seed=5, max_tokens=4)
    assert sorted(r.sampling_params.seed for r in sent[before:]) == [5, 6]
    assert all(len(r.batch_dialogs) == 1 and r.max_tokens == 4 for r in sent[before:])
    assert [c.index for c in answer.choices] == [0, 1]
    # Greedy: one answer, n times.
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, n=3, temperature=0)
    assert len(sent[-1].batch_dialogs) == 1 and [c.message.content for c in answer.choices] == [f"{REPLY} #0"] * 3


def by_choice(chunks: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out.setdefault(choice.index, []).append(choice)
    return out


async def test_several_choices_streamed_one_after_another(client, sent):
    before = len(sent)
    stream = await client.chat.completions.create(
        model="counting-model", messages=ASK, n=2, seed=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    choices = by_choice(chunks)
    assert sorted(choices) == [0, 1]
    assert all("".join(c.delta.content or "" for c in choices[i]) == REPLY for i in (0, 1))
    assert all(choices[i][-1].finish_reason == "stop" and choices[i][0].delta.role == "assistant" for i in (0, 1))
    indices = [c.choices[0].index for c in chunks if c.choices]
    assert indices == sorted(indices)  # choice 1 after choice 0
    assert [r.sampling_params.seed for r in sent[before:]] == [3, 4] and all(r.stream for r in sent[before:])
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 12)
    # Greedy: streamed once, its chunks repeated for the other choices.
    before = len(sent)
    stream = await client.completions.create(model="counting-model", prompt="Hi", n=3, temperature=0, stream=True)
    choices = by_choice([chunk async for chunk in stream])
    assert len(sent) == before + 1
    assert ["".join(c.text for c in choices[i]) for i in range(3)] == [REPLY] * 3


async def test_several_choices_of_several_prompts(client, sent):
    answer = await client.completions.create(model="replay-model", prompt=["one", "two"], n=2, echo=True, max_tokens=3)
    assert sent[-1].content_batch == ["one", "one", "two", "two"] and sent[-1].max_tokens == 3
    assert [(c.index, c.text) for c in answer.choices] == [
        (0, f"one{REPLY} #0"),
        (1, f"one{REPLY} #1"),
        (2, f"two{REPLY} #2"),
        (3, f"two{REPLY} #3"),
    ]


async def test_an_alias_answers_under_the_model_id(client, sent):
    answer = await client.chat.completions.create(model="replay-alias", messages=ASK)
    assert answer.model == "replay-model" and sent[-1].model == "replay-model"


async def test_chat_usage(client):
    answer = await client.chat.completions.create(model="counting-model", messages=ASK)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (6, 6, 12)


async def test_chat_streaming(client):
    stream = await client.chat.completions.create(model="replay-model", messages=ASK, stream=True)
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "replay-model" and c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert len(chunks) > 4
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


async def test_the_stream_is_openai_sse_ending_with_done(server):
    _, url = server
    body = {"model": "replay-model", "messages": ASK, "stream": True}
    async with httpx.AsyncClient() as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [line async for line in response.aiter_lines() if line]
    assert all(frame.startswith("data: ") for frame in frames)
    assert frames[-1] == "data: [DONE]"
    first, last = json.loads(frames[1][6:]), json.loads(frames[-2][6:])
    # OpenAI's chunk shape: nulls are sent, but a delta only carries what it sets.
    assert first["choices"] == [{"index": 0, "delta": {"content": "The"}, "logprobs": None, "finish_reason": None}]
    assert first["usage"] is None and "system_fingerprint" in first
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


async def test_include_usage_adds_a_last_chunk_with_no_choices(client):
    stream = await client.chat.completions.create(
        model="counting-model", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    *text, usage = chunks
    assert usage.choices == [] and (
        usage.usage.prompt_tokens,
        usage.usage.completion_tokens,
        usage.usage.total_tokens,
    ) == (6, 6, 12)
    assert all(c.usage is None for c in text) and text[-1].choices[0].finish_reason == "stop"


async def test_the_sync_client_in_a_thread(server):
    _, url = server

    def use() -> tuple[str, str]:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            whole = client.chat.completions.create(model="replay-model", messages=ASK).choices[0].message.content
            stream = client.chat.completions.create(model="replay-model", messages=ASK, stream=True)
            return whole, "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    # Blocking code runs in a thread: the server shares this test's event loop.
    assert await asyncio.to_thread(use) == (REPLY, REPLY)


async def test_the_conversation_maps_onto_our_dialog(client, sent):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 degrees"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
            "name": "ann",
        },
    ]
    await client.chat.completions.create(model="replay-model", messages=messages, tools=TOOLS)
    dialog = sent[-1].dialog
    system, user, assistant, tool = dialog.message_history
    assert (system.role.value, system.content) == ("system", "Be brief.")
    assert (user.role.value, user.content) == ("user", "Weather\nin Paris?")
    assert assistant.role.value == "assistant" and assistant.content == ""
    assert [(c.tool_name, c.arguments, c.call_id) for c in assistant.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "c1")
    ]
    assert (tool.role.value, tool.content) == ("tool", "18 degrees")
    assert [(r.tool_name, r.content, r.call_id) for r in tool.tool_responses] == [("get_weather", "18 degrees", "c1")]
    text, image = dialog.message.content
    assert text == "And this?" and (image.url, image.mime_type) == ("data:image/png;base64,AAAA", "image/png")
    tools = sent[-1].available_tools
    assert [t.tool_name for t in tools] == ["get_weather", "get_time"]
    assert (
        tools[0].description == "The weather in a city." and tools[0].parameters == TOOLS[0]["function"]["parameters"]
    )


async def test_an_answer_sent_back_as_history_is_accepted(client, sent):
    """A client may append the SDK's message object as it came (with its null fields) to the next request."""
    first = await client.chat.completions.create(model="tool-model", messages=ASK, tools=TOOLS)
    message = first.choices[0].message
    follow_up = [*ASK, message, *({"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in message.tool_calls)]
    answer = await client.chat.completions.create(model="replay-model", messages=follow_up)
    assert answer.choices[0].message.content == REPLY
    assert [m.role.value for m in sent[-1].dialog.message_history] == ["user", "assistant", "tool"]


# ------------------------------------------------------------------------------------------------ tools


async def test_tool_calls(client, sent):
    answer = await client.chat.completions.create(model="tool-model", messages=ASK, tools=TOOLS, tool_choice="required")
    (choice,) = answer.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    weather, time_ = choice.message.tool_calls
    assert (weather.id, weather.type, weather.function.name) == ("call_weather_1", "function", "get_weather")
    assert json.loads(weather.function.arguments) == TOOL_CALLS[0]["arguments"]
    assert time_.id.startswith("call_") and time_.function.name == "get_time"  # the provider gave no id
    assert json.loads(time_.function.arguments) == TOOL_CALLS[1]["arguments"]
    assert sent[-1].tool_choice == "required"


async def test_tool_choice_by_name_and_none(client, sent):
    await client.chat.completions.create(
        model="tool-model",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert sent[-1].tool_choice == "get_time"
    answer = await client.chat.completions.create(model="tool-model", messages=ASK, tools=TOOLS, tool_choice="none")
    assert sent[-1].tool_choice == "none"
    assert answer.choices[0].message.content == REPLY and answer.choices[0].finish_reason == "stop"


async def test_parallel_tool_calls_false_keeps_the_first(client):
    answer = await client.chat.completions.create(
        model="tool-model", messages=ASK, tools=TOOLS, parallel_tool_calls=False
    )
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == ["get_weather"]
    stream = await client.chat.completions.create(
        model="tool-model", messages=ASK, tools=TOOLS, parallel_tool_calls=False, stream=True
    )
    deltas = [call for chunk in [c async for c in stream] for call in chunk.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather")]


async def test_streamed_tool_calls(client):
    stream = await client.chat.completions.create(
        model="tool-model", messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert [(d.index, d.type, d.function.name) for d in deltas] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    assert deltas[0].id == "call_weather_1" and deltas[1].id.startswith("call_")
    assert json.loads(deltas[0].function.arguments) == TOOL_CALLS[0]["arguments"]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 0


async def test_the_sdks_stream_helper_accumulates_tool_calls(client):
    async with client.chat.completions.stream(model="tool-model", messages=ASK, tools=TOOLS) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("call_weather_1", "get_weather", TOOL_CALLS[0]["arguments"]),
        (choice.message.tool_calls[1].id, "get_time", TOOL_CALLS[1]["arguments"]),
    ]


# ------------------------------------------------------------------------------- sampling and controls


async def test_sampling_parameters(client, sent):
    await client.chat.completions.create(model="replay-model", messages=ASK, temperature=0)
    assert sent[-1].sampling_params.strategy == "greedy"
    await client.chat.completions.create(model="replay-model", messages=ASK, top_p=0)
    assert sent[-1].sampling_params.strategy == "greedy"
    await client.chat.completions.create(model="replay-model", messages=ASK, temperature=0.7, top_p=0.9, seed=42)
    params = sent[-1].sampling_params
    assert (params.strategy, params.temperature, params.top_p, params.seed) == ("top_p", 0.7, 0.9, 42)
    await client.chat.completions.create(
        model="replay-model", messages=ASK, temperature=0.5, extra_body={"top_k": 40, "repetition_penalty": 1.1}
    )
    params = sent[-1].sampling_params
    assert (params.strategy, params.top_k, params.repetition_penalty) == ("top_k", 40, 1.1)
    await client.chat.completions.create(
        model="replay-model", messages=ASK, frequency_penalty=0.5, presence_penalty=-0.25
    )
    params = sent[-1].sampling_params
    assert (params.frequency_penalty, params.presence_penalty) == (0.5, -0.25)
    await client.chat.completions.create(model="replay-model", messages=ASK, logit_bias={"42": -100, "7": 2.5})
    assert sent[-1].sampling_params.logit_bias == {42: -100.0, 7: 2.5}


async def test_stop_and_max_tokens(client, sent):
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, stop=" France")
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("The capital of", "stop")
    assert sent[-1].stop == [" France"]
    await client.chat.completions.create(model="replay-model", messages=ASK, stop=["x", "y"])
    assert sent[-1].stop == ["x", "y"]
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, max_tokens=3)
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("The capital of", "length")
    await client.chat.completions.create(model="replay-model", messages=ASK, max_completion_tokens=5)
    assert sent[-1].max_tokens == 5
    stream = await client.chat.completions.create(model="replay-model", messages=ASK, max_tokens=2, stream=True)
    assert [c.choices[0].finish_reason async for c in stream][-1] == "length"


async def test_logprobs(client, sent):
    answer = await client.chat.completions.create(model="replay-model", messages=ASK, logprobs=True, top_logprobs=2)
    assert (sent[-1].logprobs, sent[-1].top_logprobs) == (True, 2)
    tokens = answer.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == REPLY
    assert tokens[1].token == " capital" and tokens[1].logprob == pytest.approx(-0.2)
    assert tokens[1].bytes == list(b" capital")
    assert [(a.token, a.logprob) for a in tokens[1].top_logprobs] == [
        (" capital", pytest.approx(-0.2)),
        ("alt1", pytest.approx(-1.2)),
    ]
    stream = await client.chat.completions.create(model="replay-model", messages=ASK, logprobs=True, stream=True)
    streamed = [t for c in [c async for c in stream] if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in tokens] and streamed[0].top_logprobs == []


async def test_response_format_is_passed_on(client, sent):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    await client.chat.completions.create(
        model="replay-model",
        messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )
    assert (sent[-1].response_format.type, sent[-1].response_format.json_schema) == ("json_schema", schema)
    await client.chat.completions.create(model="replay-model", messages=ASK, response_format={"type": "json_object"})
    assert sent[-1].response_format.type == "json_object" and sent[-1].response_format.json_schema is None
    await client.chat.completions.create(model="replay-model", messages=ASK, response_format={"type": "text"})
    assert sent[-1].response_format is None


async def test_harmless_fields_are_accepted(client):
    answer = await client.chat.completions.create(
        model="replay-model",
        messages=ASK,
        user="u1",
        metadata={"k": "v"},
        store=False,
        n=1,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        parallel_tool_calls=True,
        service_tier="auto",
    )
    assert answer.choices[0].message.content == REPLY


# ---------------------------------------------------------------------------------- completions, models


async def test_completions(client, sent):
    answer = await client.completions.create(model="replay-model", prompt="The capital of France is")
    (choice,) = answer.choices
    assert (choice.text, choice.finish_reason, choice.index, choice.logprobs) == (REPLY, "stop", 0, None)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-") and answer.model == "replay-model"
    assert sent[-1].content == "The capital of France is"
    assert sent[-1].max_tokens == 16  # OpenAI's default for completions
    answer = await client.completions.create(model="replay-model", prompt="x", max_tokens=2, echo=True, stop=["zzz"])
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("xThe capital", "length")


async def test_completions_streaming_with_usage(client):
    stream = await client.completions.create(
        model="counting-model", prompt="Say it", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    *text, usage = chunks
    assert "".join(c.choices[0].text for c in text) == REPLY and text[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    assert usage.choices == [] and (usage.usage.prompt_tokens, usage.usage.total_tokens) == (2, 8)


async def test_completions_logprobs_in_the_legacy_shape(client, sent):
    answer = await client.completions.create(model="replay-model", prompt="p", logprobs=2)
    assert (sent[-1].logprobs, sent[-1].top_logprobs) == (True, 2)
    logprobs = answer.choices[0].logprobs
    assert "".join(logprobs.tokens) == REPLY
    assert logprobs.token_logprobs[:2] == [pytest.approx(-0.1), pytest.approx(-0.2)]
    assert logprobs.top_logprobs[0] == {"The": pytest.approx(-0.1), "alt1": pytest.approx(-1.1)}
    assert logprobs.text_offset[:3] == [0, 3, 11]
    stream = await client.completions.create(model="replay-model", prompt="p", logprobs=0, stream=True)
    offsets = [o for c in [c async for c in stream] if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == logprobs.text_offset


async def test_several_prompts_are_several_choices(client):
    answer = await client.completions.create(model="counting-model", prompt=["a", "b c"])
    assert [(c.index, c.text) for c in answer.choices] == [(0, f"{REPLY} #0"), (1, f"{REPLY} #1")]
    assert answer.usage.prompt_tokens == 3


async def test_models(client, server):
    stack, _ = server
    page = await client.models.list()
    models = {m.id: m for m in page.data}
    assert set(models) == {m.model_id for m in stack.config.models}
    replay = models["replay-model"]
    assert (replay.object, replay.owned_by, replay.created > 0) == ("model", "replay", True)
    # Extensions beside OpenAI's fields.
    assert (replay.aliases, replay.context_length) == (["replay-alias"], 4096)


# ------------------------------------------------------------------------------------------------ errors


async def test_an_unknown_model_is_a_not_found_naming_the_served_ones(client):
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=ASK)
    error = info.value
    assert "gpt-4o" in error.message and "replay-model" in error.message
    assert (error.status_code, error.param, error.code) == (404, "model", "model_not_found")
    assert error.body["message"] == error.message.removeprefix("Error code: 404 - ")
    with pytest.raises(openai.NotFoundError, match="replay-model"):
        await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")


@pytest.mark.parametrize(
    ("arguments", "param", "fragment"),
    [
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'user'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "tool_call_id"),
        ({"extra_body": {"best_of": 2}}, "best_of", "unknown field"),
    ],
)
async def test_an_invalid_request_is_a_400_naming_the_parameter(client, arguments, param, fragment):
    # OpenAI answers a request that does not match its schema with a 400 (the SDK's BadRequestError), not a 422.
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**({"model": "replay-model", "messages": ASK} | arguments))
    assert info.value.param == param and fragment in info.value.message
    assert info.value.type == "invalid_request_error"


async def test_a_missing_field_is_named(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.post("/chat/completions", body={"model": "replay-model"}, cast_to=OpenAIChatCompletion)
    assert info.value.param == "messages" and "field required" in info.value.message


@pytest.mark.parametrize(
    ("arguments", "param", "fragment"),
    [
        ({"logit_bias": {"x": 1.0}}, "logit_bias", "token ids"),
        ({"logit_bias": {"42": 101.0}}, "logit_bias", "[-100, 100]"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs: true"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "get_weather",
        ),
        ({"functions": [{"name": "f"}]}, "functions", "use tools"),
        ({"messages": [{"role": "tool", "tool_call_id": "c9", "content": "x"}]}, "messages[0].tool_call_id", "c9"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
            "messages[0].content[0].image_url.url",
            "http",
        ),
    ],
)
async def test_what_cannot_be_honoured_is_a_400_naming_the_parameter(client, arguments, param, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**({"model": "replay-model", "messages": ASK} | arguments))
    assert info.value.param == param and fragment in info.value.message
    assert info.value.code in ("unsupported_parameter", "unsupported_value", "invalid_value")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"echo": True, "logprobs": 1, "stream": True}, "echo"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 0, "echo": True, "stream": True}, "max_tokens"),
    ],
)
async def test_completions_refuse_what_they_cannot_honour(client, arguments, param):
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(**({"model": "replay-model", "prompt": "x"} | arguments))
    assert info.value.param == param


async def test_echoed_prompt_logprobs_need_a_provider_that_scores_prompts(client):
    # The replay provider does not say it scores prompts: a 501 naming it, before it is asked anything.
    with pytest.raises(openai.APIStatusError) as info:
        await client.completions.create(model="replay-model", prompt="x", echo=True, logprobs=1, max_tokens=1)
    assert info.value.status_code == 501
    assert "'replay'" in info.value.message and "cannot score prompts" in info.value.message
    assert info.value.body["param"] == "prompt_logprobs"


async def test_provider_errors_keep_their_status_and_are_not_retried(server):
    _, url = server
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=2) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="failing-501", messages=ASK)
        assert info.value.status_code == 501 and info.value.message.endswith("replayed a 501")
        assert info.value.response.headers["x-should-retry"] == "false" and info.value.body["provider"] == "replay"
        with pytest.raises(openai.ConflictError):  # the SDK would retry a 409 but for the header
            await client.chat.completions.create(model="failing-409", messages=ASK)


async def test_an_error_mid_stream_raises_in_the_sdk(client):
    stream = await client.chat.completions.create(model="breaking-model", messages=ASK, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="the stream broke"):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2  # the role chunk and the first word


async def test_a_client_that_disconnects_stops_the_generation(client, server):
    stack, _ = server
    provider = stack.providers["replay"].impl
    provider.stream_closed.clear()
    stream = await client.chat.completions.create(model="stalling-model", messages=ASK, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    # The provider stalls forever after its first word: only the disconnect can end its stream.
    await asyncio.wait_for(provider.stream_closed.wait(), timeout=10)


async def test_without_inference_the_routes_answer_404(tmp_path, replay_registry):
    path = tmp_path / "empty.yaml"
    path.write_text(f"apis: []\nproviders: {{}}\nstorage: {{dir: {tmp_path / 'state'}}}\n")
    stack = Stack.from_distribution(path, registry=replay_registry)
    await stack.start()
    try:
        transport = httpx.ASGITransport(app=create_app(stack))
        async with openai.AsyncOpenAI(
            base_url="http://test/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport),
        ) as client:
            with pytest.raises(openai.NotFoundError, match="inference API is not served"):
                await client.models.list()
    finally:
        await stack.shutdown()


# ------------------------------------------------------------------------------------ our own client


async def test_our_client_speaks_the_openai_routes_over_http_and_in_process(server, tmp_path, replay_registry):
    _, url = server
    library_dir = tmp_path / "library"
    library_dir.mkdir()
    clients = {
        "http": LlamaStackClient.http(url),
        "library": await LlamaStackClient.library(write_replay_distribution(library_dir), registry=replay_registry),
    }
    try:
        for client in clients.values():
            answer = await client.openai.create_chat_completion(model="tool-model", messages=ASK, tools=TOOLS)
            assert isinstance(answer, OpenAIChatCompletion) and answer.choices[0].finish_reason == "tool_calls"
            chunks = [
                c
                async for c in await client.openai.create_chat_completion(
                    model="replay-model", messages=ASK, stream=True
                )
            ]
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
            models = await client.openai.list_models()
            assert "replay-model" in [m.id for m in models.data]
            completion = await client.openai.create_completion(model="replay-model", prompt="x")
            assert completion.choices[0].text == REPLY
    finally:
        for client in clients.values():
            await client.aclose()


# --------------------------------------------------------------------- the real local distribution (slow)

LOCAL_MODEL = "smollm2-135m-instruct"


@pytest.mark.slow
def test_the_sdk_against_the_local_distribution(local_server):
    with openai.OpenAI(base_url=f"{local_server}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        assert LOCAL_MODEL in [m.id for m in client.models.list().data]
        chat = {"model": LOCAL_MODEL, "messages": ASK, "temperature": 0, "max_tokens": 32}
        whole = client.chat.completions.create(**chat)
        assert "Paris" in whole.choices[0].message.content
        assert whole.choices[0].finish_reason in ("stop", "length")
        chunks = list(client.chat.completions.create(**chat, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == whole.choices[0].message.content  # greedy: the same text either way
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        short = client.chat.completions.create(
            model=LOCAL_MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=3
        )
        assert short.choices[0].finish_reason == "length"
        sampled = client.chat.completions.create(model=LOCAL_MODEL, messages=ASK, max_tokens=16, seed=1)
        assert sampled.choices[0].message.content
        completion = client.completions.create(
            model=LOCAL_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
        )
        streamed = "".join(
            c.choices[0].text
            for c in client.completions.create(
                model=LOCAL_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
            )
        )
        assert completion.choices[0].text and streamed == completion.choices[0].text
        with pytest.raises(openai.NotFoundError, match=LOCAL_MODEL):
            client.chat.completions.create(model="gpt-4o", messages=ASK)


@pytest.mark.slow
def test_scoring_continuations_as_evaluation_harnesses_do(local_server):
    """lm-evaluation-harness's loglikelihood requests: the context and a continuation as one prompt, echo,
    logprobs 1 and max_tokens 1 (or 0); the continuation's tokens are read off the echoed prompt."""
    context = "Question: What is the capital of France?\nAnswer:"
    with openai.OpenAI(base_url=f"{local_server}/v1", api_key="unused", max_retries=0, timeout=120) as client:

        def score(continuation: str, max_tokens: int = 1) -> tuple[float, Any]:
            answer = client.completions.create(
                model=LOCAL_MODEL,
                prompt=context + continuation,
                echo=True,
                logprobs=1,
                max_tokens=max_tokens,
                temperature=0,
            )
            logprobs = answer.choices[0].logprobs
            first = next(i for i, at in enumerate(logprobs.text_offset) if at >= len(context))
            last = len(logprobs.tokens) - max_tokens  # the prompt's tokens end there
            assert "".join(logprobs.tokens[first:last]) == continuation
            for token_logprob, top in zip(
                logprobs.token_logprobs[first:last], logprobs.top_logprobs[first:last], strict=True
            ):
                assert len(top) == 1 and max(top.values()) >= token_logprob  # the most likely token at that place
            return sum(logprobs.token_logprobs[first:last]), answer

        paris, answer = score(" Paris")
        choice = answer.choices[0]
        assert choice.text.startswith(context + " Paris") and choice.logprobs.token_logprobs[0] is None
        assert answer.usage.completion_tokens == 1 and len(choice.logprobs.tokens) == answer.usage.prompt_tokens + 1
        london, _ = score(" London")
        banana, scored_only = score(" Banana bread", max_tokens=0)
        assert paris > london > banana
        assert scored_only.choices[0].text == context + " Banana bread" and scored_only.usage.completion_tokens == 0


@pytest.mark.slow
def test_several_choices_from_the_local_model(local_server):
    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    with openai.OpenAI(base_url=f"{local_server}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        one = client.chat.completions.create(model=LOCAL_MODEL, messages=story, max_tokens=12, seed=11)
        three = client.chat.completions.create(model=LOCAL_MODEL, messages=story, max_tokens=12, seed=11, n=3)
        texts = [c.message.content for c in three.choices]
        assert texts[0] == one.choices[0].message.content  # choice 0 samples with the seed itself
        assert len(set(texts)) == 3
        assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
        assert three.usage.completion_tokens == sum(
            len(c.logprobs.content)
            for c in client.chat.completions.create(
                model=LOCAL_MODEL, messages=story, max_tokens=12, seed=11, n=3, logprobs=True
            ).choices
        )
        streamed = by_choice(
            list(
                client.chat.completions.create(
                    model=LOCAL_MODEL, messages=story, max_tokens=12, seed=11, n=3, stream=True
                )
            )
        )
        assert ["".join(c.delta.content or "" for c in streamed[i]) for i in range(3)] == texts  # the same choices
        # More seeded choices than the model's queue holds (max_queue 16): they run one after another.
        many = client.completions.create(model=LOCAL_MODEL, prompt="Once upon a time", max_tokens=2, n=20, seed=1)
        assert [c.index for c in many.choices] == list(range(20))
        unseeded = client.completions.create(model=LOCAL_MODEL, prompt="Once upon a time", max_tokens=10, n=3)
        assert [c.index for c in unseeded.choices] == [0, 1, 2] and len({c.text for c in unseeded.choices}) > 1
