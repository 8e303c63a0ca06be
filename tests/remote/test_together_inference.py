"""remote::together inference against the fake Together API: what is sent, what comes back, what is refused.

Most tests go through the library client (real HTTP to the fake); the slow ones at the end run
`llama-stack run` on distributions/together.yaml pointed at the fake, and call it with the HTTP client and
the official openai SDK.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes.together import API_KEY
from fakes.together_handlers import embedding_of, relevance
from fakes.vendor_server import Fault
from remote.conftest import FAST_RETRIES
from support import REPO, serving

from llama_stack.apis.common import StopReason, ToolCall
from llama_stack.apis.errors import AuthenticationError, BadRequestError, NotFoundError, ProviderError
from llama_stack.apis.inference import BatchCompletionRequest
from llama_stack.apis.inspect import Model
from llama_stack.client import LlamaStackClient
from llama_stack.config import load_distribution, validate_provider_configs
from llama_stack.plugins import ProviderContext, discover_providers
from llama_stack.providers.remote.together.config import TogetherInferenceConfig
from llama_stack.providers.remote.together.inference import TogetherInference
from llama_stack.providers.remote.together.service import together_service
from llama_stack.request_context import PROVIDER_DATA_HEADER

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
EMBEDDING_MODEL = "togethercomputer/m2-bert-80M-8k-retrieval"
RERANK_MODEL = "Salesforce/Llama-Rank-V1"

MODELS = [
    {"model_id": "chat", "provider_id": "together", "provider_model_id": CHAT_MODEL, "model_type": "llm"},
    {
        "model_id": "embedder",
        "provider_id": "together",
        "provider_model_id": EMBEDDING_MODEL,
        "model_type": "embedding",
    },
    {"model_id": "reranker", "provider_id": "together", "provider_model_id": RERANK_MODEL, "model_type": "rerank"},
    {"model_id": "gone", "provider_id": "together", "provider_model_id": "missing/model", "model_type": "llm"},
]

WEATHER = {
    "tool_name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "tool_name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
}


def providers(together: Any, **config: Any) -> dict[str, Any]:
    settings = {"url": together.url, "api_key": API_KEY, **FAST_RETRIES, **config}
    return {"inference": [{"provider_id": "together", "provider_type": "remote::together", "config": settings}]}


@pytest.fixture
async def client(together, start_stack) -> LlamaStackClient:
    return await start_stack(providers(together), MODELS)


def sent(together: Any, path: str = "/chat/completions") -> list[dict[str, Any]]:
    """The JSON bodies the fake received on a route, in order."""
    return [r.json for r in together.calls("POST", "/v1" + path)]


def user(text: str) -> dict[str, Any]:
    return {"message": {"role": "user", "content": text}}


# ------------------------------------------------------------------------------------------------ chat
async def test_chat_sends_the_dialog_and_maps_the_answer_back(client, together):
    dialog = {
        "message_history": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": ["Hello", " there"]},
            {"role": "assistant", "content": "Hi!"},
        ],
        "message": {"role": "user", "content": "What is 1 + 1?"},
    }
    answer = await client.inference.chat_completion(model="chat", dialog=dialog)

    assert answer.content == "You said: What is 1 + 1?"
    assert answer.stop_reason == StopReason.finished_ok
    assert answer.tool_calls == [] and answer.logprobs is None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 7)
    # Greedy by default: temperature 0 and nothing else; max_tokens 0 is left out.
    assert sent(together) == [
        {
            "model": CHAT_MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "What is 1 + 1?"},
            ],
            "temperature": 0.0,
        }
    ]
    assert together.calls("POST", "/v1/chat/completions")[0].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (
            {"strategy": "greedy", "repetition_penalty": 1.2, "seed": 3},
            {"temperature": 0.0, "repetition_penalty": 1.2, "seed": 3},
        ),
        (
            {"strategy": "greedy", "frequency_penalty": 0.5, "presence_penalty": 0.25, "logit_bias": {"13": -100}},
            {"temperature": 0.0, "frequency_penalty": 0.5, "presence_penalty": 0.25, "logit_bias": {"13": -100}},
        ),
        (
            {"strategy": "top_p", "temperature": 0.7, "top_p": 0.9, "seed": 42},
            {"temperature": 0.7, "top_p": 0.9, "seed": 42},
        ),
        (
            {"strategy": "top_k", "temperature": 0.5, "top_k": 40, "top_p": 0.8},
            {"temperature": 0.5, "top_p": 0.8, "top_k": 40},
        ),
    ],
    ids=["greedy", "penalties", "top_p", "top_k"],
)
async def test_sampling_fields_are_sent_exactly_as_mapped(client, together, sampling, expected):
    await client.inference.chat_completion(
        model="chat", dialog=user("hi"), sampling_params=sampling, max_tokens=16, stop=["\n\n", "END"]
    )
    (body,) = sent(together)
    assert {k: v for k, v in body.items() if k not in ("model", "messages")} == {
        **expected,
        "max_tokens": 16,
        "stop": ["\n\n", "END"],
    }


async def test_stop_and_max_tokens_end_the_answer_with_their_stop_reasons(client):
    stopped = await client.inference.chat_completion(model="chat", dialog=user("one two three"), stop=[" two"])
    assert (stopped.content, stopped.stop_reason) == ("You said: one", StopReason.finished_ok)
    cut = await client.inference.chat_completion(model="chat", dialog=user("one two three"), max_tokens=3)
    assert (cut.content, cut.stop_reason) == ("You said: one", StopReason.max_tokens)


async def test_streaming_chat_yields_the_text_in_pieces_then_the_stop_reason_and_usage(client, together):
    chunks = [
        c async for c in await client.inference.chat_completion(model="chat", dialog=user("stream this"), stream=True)
    ]

    texts = [c.text_delta for c in chunks if c.text_delta]
    assert texts == ["You", " said:", " stream", " this"]
    assert all(c.stop_reason == StopReason.not_stopped for c in chunks[:-1])
    assert chunks[-1].text_delta == "" and chunks[-1].stop_reason == StopReason.finished_ok
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 4)
    assert sent(together)[0]["stream"] is True


async def test_attachments_are_refused_before_calling_together(client, together):
    dialog = {
        "message": {
            "role": "user",
            "content": ["Describe this", {"url": "data:image/png;base64,iVBORw0KGgo=", "mime_type": "image/png"}],
        }
    }
    with pytest.raises(BadRequestError) as refused:
        await client.inference.chat_completion(model="chat", dialog=dialog)
    assert refused.value.status == 400
    assert refused.value.param == "dialog.message.content[1]"
    assert "provider 'together' (Together)" in refused.value.message and "image/png" in refused.value.message
    assert sent(together) == []


# ------------------------------------------------------------------------------------------ tool calls
async def test_a_tool_call_round_trip_reuses_togethers_call_id(client, together):
    first = await client.inference.chat_completion(
        model="chat", dialog=user("Use get_weather for Paris"), available_tools=[WEATHER, {"tool_name": "web_search"}]
    )
    assert first.content == "" and first.stop_reason == StopReason.finished_ok
    assert first.tool_calls == [
        ToolCall(tool_name="get_weather", arguments={"city": "Use get_weather for Paris"}, call_id="call_fake_0")
    ]
    offered = sent(together)[0]
    assert offered["tool_choice"] == "auto"
    assert offered["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER["parameters"],
            },
        },
        {
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
        },
    ]

    dialog = {
        "message_history": [
            {"role": "user", "content": "Use get_weather for Paris"},
            {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in first.tool_calls]},
        ],
        "message": {
            "role": "tool",
            "content": "",
            "tool_responses": [{"tool_name": "get_weather", "content": "18C, sunny", "call_id": "call_fake_0"}],
        },
    }
    second = await client.inference.chat_completion(model="chat", dialog=dialog, available_tools=[WEATHER])
    assert second.content == "The tools answered: 18C, sunny" and second.tool_calls == []
    assert sent(together)[1]["messages"] == [
        {"role": "user", "content": "Use get_weather for Paris"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_fake_0",
                    "type": "function",
                    "index": 0,
                    "function": {"name": "get_weather", "arguments": '{"city": "Use get_weather for Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_fake_0"},
    ]


async def test_calls_without_ids_get_deterministic_ids_that_their_results_reuse(client, together):
    calls = [
        {"tool_name": "get_weather", "arguments": {"city": "Paris"}},
        {"tool_name": "get_time", "arguments": {"zone": "CET"}},
    ]
    dialog = {
        "message_history": [
            {"role": "user", "content": "Weather and time?"},
            {"role": "assistant", "content": "", "tool_calls": calls},
            # Results in the other order, without ids: matched by tool name.
            {
                "role": "tool",
                "content": "",
                "tool_responses": [
                    {"tool_name": "get_time", "content": "12:00"},
                    {"tool_name": "get_weather", "content": "sunny"},
                ],
            },
        ],
        "message": {"role": "user", "content": "Thanks, summarise."},
    }
    for _ in range(2):
        await client.inference.chat_completion(model="chat", dialog=dialog, available_tools=[WEATHER, TIME])
    first, again = sent(together)
    assert first == again  # the same dialog is the same request
    messages = first["messages"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert messages[2:4] == [
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1_1"},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0"},
    ]


async def test_a_tool_messages_own_content_answers_the_call_before_it(client, together):
    dialog = {
        "message_history": [
            {"role": "user", "content": "What is 6 x 7?"},
            {
                "role": "assistant",
                "content": "Let me compute.",
                "tool_calls": [{"tool_name": "math", "arguments": {"expression": "6*7"}}],
            },
        ],
        "message": {"role": "tool", "content": "42"},
    }
    answer = await client.inference.chat_completion(
        model="chat", dialog=dialog, available_tools=[{"tool_name": "math"}]
    )
    assert answer.content == "The tools answered: 42"
    assert sent(together)[0]["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [
                {
                    "id": "call_1_0",
                    "type": "function",
                    "index": 0,
                    "function": {"name": "math", "arguments": '{"expression": "6*7"}'},
                }
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1_0"},
    ]


async def test_a_tool_result_that_answers_no_call_is_refused(client, together):
    dialog = {
        "message": {"role": "tool", "content": "", "tool_responses": [{"tool_name": "get_time", "content": "12:00"}]}
    }
    with pytest.raises(BadRequestError) as refused:
        await client.inference.chat_completion(model="chat", dialog=dialog, available_tools=[TIME])
    assert refused.value.param == "dialog.message.tool_responses[0]"
    assert "call_id" in refused.value.message
    assert sent(together) == []


@pytest.mark.parametrize(
    ("tool_choice", "called"), [("none", []), ("required", ["get_weather"]), ("get_time", ["get_time"])]
)
async def test_tool_choice_is_sent_as_togethers_string(client, together, tool_choice, called):
    answer = await client.inference.chat_completion(
        model="chat", dialog=user("Paris"), available_tools=[WEATHER, TIME], tool_choice=tool_choice
    )
    assert sent(together)[0]["tool_choice"] == tool_choice
    assert [c.tool_name for c in answer.tool_calls] == called


async def test_builtin_tools_are_offered_with_json_schemas(client, together):
    builtins = ["web_search", "code_interpreter", "image_gen", "math"]
    await client.inference.chat_completion(
        model="chat", dialog=user("hi"), available_tools=[{"tool_name": name} for name in builtins]
    )
    functions = {t["function"]["name"]: t["function"]["parameters"] for t in sent(together)[0]["tools"]}
    assert {name: (schema["required"], list(schema["properties"])) for name, schema in functions.items()} == {
        "web_search": (["query"], ["query"]),
        "code_interpreter": (["code"], ["code"]),
        # The schemas every provider offers (providers.utils.inference.tool_calls.formats.BUILTIN_TOOLS): "query" is
        # what Together's own tool runtime takes for image_gen.
        "image_gen": (["query"], ["query"]),
        "math": (["query"], ["query"]),
    }


async def test_streamed_tool_calls_are_assembled_and_emitted_in_order(client, together):
    chunks = [
        c
        async for c in await client.inference.chat_completion(
            model="chat", dialog=user("get_time then get_weather"), available_tools=[WEATHER, TIME], stream=True
        )
    ]
    calls = [(c.tool_call_index, c.tool_call) for c in chunks if c.tool_call is not None]
    assert calls == [
        (0, ToolCall(tool_name="get_time", arguments={"zone": "get_time then get_weather"}, call_id="call_fake_0")),
        (1, ToolCall(tool_name="get_weather", arguments={"city": "get_time then get_weather"}, call_id="call_fake_1")),
    ]
    assert chunks[-1].stop_reason == StopReason.finished_ok and chunks[-1].tool_call is None


async def test_arguments_that_are_not_json_are_kept_as_raw_text(client, together, monkeypatch):
    monkeypatch.setitem(together.state, "tool_arguments", '{"city": "Par')
    answer = await client.inference.chat_completion(model="chat", dialog=user("get_weather"), available_tools=[WEATHER])
    assert answer.tool_calls[0].arguments == {"raw_arguments": '{"city": "Par'}
    stream = await client.inference.chat_completion(
        model="chat", dialog=user("get_weather"), available_tools=[WEATHER], stream=True
    )
    streamed = [c.tool_call async for c in stream if c.tool_call is not None]
    assert streamed[0].arguments == {"raw_arguments": '{"city": "Par'}


# -------------------------------------------------------------------------------- logprobs and formats
async def test_logprobs_are_asked_as_one_and_mapped_per_token(client, together):
    answer = await client.inference.chat_completion(model="chat", dialog=user("hi"), logprobs=True, top_logprobs=1)
    assert sent(together)[0]["logprobs"] == 1
    assert [(t.token, t.logprob) for t in answer.logprobs.content] == [("You", -0.1), (" said:", -0.2), (" hi", -0.3)]
    assert next([(a.token, a.logprob) for a in t.top_logprobs] for t in answer.logprobs.content) == [("You", -0.1)]

    chunks = [
        c
        async for c in await client.inference.chat_completion(
            model="chat", dialog=user("hi"), logprobs=True, stream=True
        )
    ]
    streamed = [(t.token, t.logprob, t.top_logprobs) for c in chunks if c.logprobs for t in c.logprobs.content]
    assert streamed == [("You", -0.1, []), (" said:", -0.2, []), (" hi", -0.3, [])]


async def test_prompt_logprobs_come_from_an_echoed_completion(client, together):
    answer = await client.inference.completion(
        model="chat", content="Once upon a time", max_tokens=2, prompt_logprobs=0
    )
    assert sent(together, "/completions") == [
        {
            "model": CHAT_MODEL,
            "prompt": "Once upon a time",
            "temperature": 0.0,
            "max_tokens": 2,
            "echo": True,
            "logprobs": 1,
        }
    ]
    assert [(e.token, e.logprob, e.top_logprobs) for e in answer.prompt_logprobs] == [
        ("Once", -0.1, []),
        (" upon", -0.2, []),
        (" a", -0.3, []),
        (" time", -0.4, []),
    ]
    assert answer.logprobs is None and answer.content == "Continuing 'Once"  # the completion's own: not asked for
    batch = await client.inference.batch_completion(model="chat", content_batch=["a b", "c"], prompt_logprobs=1)
    assert [[e.token for e in r.prompt_logprobs] for r in batch] == [["a", " b"], ["c"]]

    # An echoed answer that lacks them is the vendor's failure, named, not a silently missing result.
    bare = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": CHAT_MODEL,
        "prompt": [{"text": "x"}],
        "choices": [{"text": "y", "finish_reason": "eos"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    together.fail("POST", "/completions", Fault("status", status=200, body=bare))
    with pytest.raises(ProviderError) as failed:
        await client.inference.completion(model="chat", content="x", prompt_logprobs=0)
    assert (
        failed.value.status == 502
        and "prompt[0].logprobs" in failed.value.message
        and failed.value.provider == "together"
    )


async def test_more_than_one_alternative_per_token_is_refused_naming_togethers_limit(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.inference.chat_completion(model="chat", dialog=user("hi"), logprobs=True, top_logprobs=5)
    assert refused.value.param == "top_logprobs"
    assert "at most 1 logprob per token" in refused.value.message and "top_logprobs=5" in refused.value.message
    assert sent(together) == []


async def test_json_schema_and_json_object_use_togethers_response_format(client, together):
    schema = {
        "title": "Weather report",
        "type": "object",
        "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
        "required": ["city", "degrees"],
    }
    answer = await client.inference.chat_completion(
        model="chat", dialog=user("Paris"), response_format={"type": "json_schema", "json_schema": schema}
    )
    assert json.loads(answer.content) == {"city": "Paris", "degrees": 1}
    plain = await client.inference.chat_completion(
        model="chat", dialog=user("hi"), response_format={"type": "json_object"}
    )
    assert json.loads(plain.content) == {"answer": "You said: hi"}
    assert [b["response_format"] for b in sent(together)] == [
        {"type": "json_schema", "json_schema": {"name": "Weather_report", "schema": schema}},
        {"type": "json_object"},
    ]


# ------------------------------------------------------------------------------------------ completion
async def test_completion_plain_and_streamed(client, together):
    answer = await client.inference.completion(model="chat", content="Once upon", logprobs=True)
    assert answer.content == "Continuing 'Once upon': and so on."
    assert answer.stop_reason == StopReason.finished_ok
    assert [t.token for t in answer.logprobs.content] == ["Continuing", " 'Once", " upon':", " and", " so", " on."]
    assert sent(together, "/completions")[0] == {
        "model": CHAT_MODEL,
        "prompt": "Once upon",
        "temperature": 0.0,
        "logprobs": 1,
    }

    chunks = [
        c async for c in await client.inference.completion(model="chat", content="Once upon", max_tokens=3, stream=True)
    ]
    assert "".join(c.text_delta for c in chunks) == "Continuing 'Once upon':"
    assert chunks[-1].stop_reason == StopReason.max_tokens
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)
    assert all(c.logprobs is None for c in chunks)  # not asked for


async def test_streamed_completion_logprobs_leave_out_special_tokens(client):
    chunks = [
        c async for c in await client.inference.completion(model="chat", content="Hi", logprobs=True, stream=True)
    ]
    tokens = [t.token for c in chunks if c.logprobs for t in c.logprobs.content]
    assert "".join(tokens) == "".join(c.text_delta for c in chunks) == "Continuing 'Hi': and so on."


async def test_completion_with_a_response_format_is_refused(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.inference.completion(model="chat", content="x", response_format={"type": "json_object"})
    assert refused.value.param == "response_format" and "chat_completion" in refused.value.message
    assert sent(together, "/completions") == []


# ------------------------------------------------------------------------------------------- batches
async def test_batches_answer_in_input_order(client, together):
    dialogs = [user(f"question {i}") for i in range(6)]
    answers = await client.inference.batch_chat_completion(model="chat", batch_dialogs=dialogs, max_tokens=8)
    assert [a.content for a in answers] == [f"You said: question {i}" for i in range(6)]
    assert sorted(b["messages"][-1]["content"] for b in sent(together)) == [f"question {i}" for i in range(6)]
    assert all(b["max_tokens"] == 8 for b in sent(together))

    completions = await client.inference.batch_completion(model="chat", content_batch=["a", "b", "c"])
    assert [c.content for c in completions] == [f"Continuing '{p}': and so on." for p in "abc"]


async def test_a_bad_dialog_in_a_batch_costs_no_calls(client, together):
    image = {"url": "data:image/png;base64,iVBORw0KGgo=", "mime_type": "image/png"}
    dialogs = [user("fine"), user("fine too"), {"message": {"role": "user", "content": image}}]
    with pytest.raises(BadRequestError) as refused:
        await client.inference.batch_chat_completion(model="chat", batch_dialogs=dialogs)
    assert refused.value.param == "batch_dialogs[2].message.content"
    assert sent(together) == []


async def test_batch_calls_run_at_most_max_concurrency_at_once(tmp_path):
    in_flight, most = 0, 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(20):
            await asyncio.sleep(0)  # let every other waiting call start if the gate allowed it
        in_flight -= 1
        prompt = json.loads(request.content)["prompt"]
        return httpx.Response(200, json={"choices": [{"text": prompt.upper(), "finish_reason": "eos"}]})

    config = TogetherInferenceConfig(url="https://together.test/v1", api_key="k", max_concurrency=2)
    context = ProviderContext(provider_id="together", storage_dir=tmp_path)
    provider = TogetherInference(config, together_service(config, context, transport=httpx.MockTransport(answer)))
    await provider.register_model(Model(model_id="m", provider_id="together"))
    answers = await provider.batch_completion(BatchCompletionRequest(model="m", content_batch=list("abcdefg")))
    await provider.shutdown()
    assert [a.content for a in answers] == list("ABCDEFG")
    assert most == 2


# ----------------------------------------------------------------------------------- embeddings, rerank
async def test_embeddings_come_back_in_input_order(client, together):
    texts = ["Llamas live in the Andes", "Our solar system", "third"]
    result = await client.inference.embeddings(model="embedder", contents=texts)
    # The fake answers in reverse order; the index fields put them back.
    assert result.embeddings == [embedding_of(t) for t in texts]
    assert sent(together, "/embeddings") == [{"model": EMBEDDING_MODEL, "input": texts}]


async def test_rerank_orders_by_relevance_and_keeps_top_n(client, together):
    documents = ["The giant panda is a bear", "The llama is a South American camelid", "A camelid of South America"]
    query = "South American camelid"
    result = await client.inference.rerank(model="reranker", query=query, documents=documents, top_n=2)
    assert [(r.index, r.relevance_score) for r in result.results] == [
        (1, relevance(query, documents[1])),
        (2, relevance(query, documents[2])),
    ]
    assert result.results[0].relevance_score > result.results[1].relevance_score
    assert sent(together, "/rerank") == [
        {"model": RERANK_MODEL, "query": query, "documents": documents, "return_documents": False, "top_n": 2}
    ]


async def test_a_model_together_does_not_know_is_a_404_naming_it(client, together):
    with pytest.raises(NotFoundError) as missing:
        await client.inference.chat_completion(model="gone", dialog=user("hi"))
    assert "missing/model" in missing.value.message and "provider 'together'" in missing.value.message
    with pytest.raises(NotFoundError):
        await client.inference.chat_completion(model="gone", dialog=user("hi"), stream=True)


# ------------------------------------------------------------------------------------------------ keys
async def test_a_key_sent_with_the_request_overrides_the_configured_one(together, start_stack):
    client = await start_stack(
        providers(together, api_key="configured-but-wrong"), MODELS, provider_data={"together_api_key": API_KEY}
    )
    answer = await client.inference.chat_completion(model="chat", dialog=user("hi"))
    assert answer.content == "You said: hi"
    assert [r.headers["authorization"] for r in together.calls("POST", "/v1/chat/completions")] == [f"Bearer {API_KEY}"]


async def test_no_key_anywhere_is_a_clear_401_before_calling_together(together, start_stack, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    # An empty key (what `${env.TOGETHER_API_KEY:=}` gives) counts as no key.
    client = await start_stack(providers(together, api_key=""), MODELS)
    with pytest.raises(AuthenticationError) as refused:
        await client.inference.chat_completion(model="chat", dialog=user("hi"))
    assert refused.value.status == 401
    assert "provider 'together' (Together) has no API key" in refused.value.message
    assert "TOGETHER_API_KEY" in refused.value.message and "together_api_key" in refused.value.message
    assert together.requests == []

    monkeypatch.setenv("TOGETHER_API_KEY", API_KEY)
    assert (await client.inference.chat_completion(model="chat", dialog=user("hi"))).content == "You said: hi"


async def test_together_refusing_the_configured_key_is_a_502_that_never_shows_the_key(together, start_stack, caplog):
    secret = "sk-configured-secret-123"
    client = await start_stack(providers(together, api_key=secret), MODELS)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ProviderError) as failed:
            await client.inference.chat_completion(model="chat", dialog=user("hi"))
        with pytest.raises(ProviderError):
            await client.inference.embeddings(model="embedder", contents=["x"])
    assert failed.value.status == 502 and failed.value.provider == "together"
    assert "rejected its configured API key" in failed.value.message and "Invalid API key" in failed.value.message
    assert secret not in failed.value.message and secret not in json.dumps(failed.value.to_body())
    assert secret not in caplog.text


async def test_a_retry_is_logged_without_the_key(together, start_stack, caplog):
    client = await start_stack(providers(together), MODELS)
    together.fail("POST", "/chat/completions", Fault("status", status=429), times=1)
    with caplog.at_level(logging.DEBUG):
        answer = await client.inference.chat_completion(model="chat", dialog=user("hi"))
    assert answer.content == "You said: hi"
    assert "retry 1 of 2" in caplog.text
    assert API_KEY not in caplog.text


async def test_a_key_the_caller_sent_that_together_refuses_is_the_callers_401(together, start_stack):
    client = await start_stack(providers(together), MODELS, provider_data={"together_api_key": "callers-wrong-key"})
    with pytest.raises(AuthenticationError) as refused:
        await client.inference.chat_completion(model="chat", dialog=user("hi"))
    assert refused.value.status == 401 and "sent with the request" in refused.value.message
    assert "callers-wrong-key" not in refused.value.message


# ------------------------------------------------------------------------------ the together distribution
def test_the_together_distribution_loads_without_any_environment():
    config = load_distribution(REPO / "distributions" / "together.yaml", env={})
    validated = validate_provider_configs(config, discover_providers(), "together.yaml")
    assert set(config.apis) == {
        "inference",
        "safety",
        "post_training",
        "reward_scoring",
        "tool_runtime",
        "agentic_system",
    }
    # Agents run in the server (inline::agents); every other API is Together's.
    assert all(
        entry.provider_type == ("inline::agents" if api == "agentic_system" else "remote::together")
        for api, entry in config.provider_entries()
    )
    inference = validated["together"]
    assert inference.url == "https://api.together.xyz/v1" and inference.api_key is None
    assert {m.model_type for m in config.models} == {"llm", "embedding", "rerank"}

    pointed = load_distribution(
        REPO / "distributions" / "together.yaml", env={"TOGETHER_URL": "http://proxy/v1", "TOGETHER_API_KEY": "k"}
    )
    configs = validate_provider_configs(pointed, discover_providers(), "together.yaml")
    remote = [c for c in configs.values() if hasattr(c, "url")]
    assert {c.url for c in remote} == {"http://proxy/v1"}
    assert {c.api_key.get_secret_value() for c in remote} == {"k"}


def _runnable_distribution(directory: Path) -> Path:
    """distributions/together.yaml, less the APIs whose remote::together adapter is not installed yet."""
    document = yaml.safe_load((REPO / "distributions" / "together.yaml").read_text())
    present = [
        api
        for api in document["apis"]
        if importlib.util.find_spec(f"llama_stack.providers.remote.together.{api}") is not None
    ]
    document["apis"] = present
    document["providers"] = {api: document["providers"][api] for api in present}
    path = directory / "together.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def together_stack(together_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llama-stack run` of the together distribution, pointed at the fake, started with no key."""
    directory = tmp_path_factory.mktemp("together-distribution")
    env = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    args = ["--env", f"TOGETHER_URL={together_server.url}", "--env", f"LLAMA_STACK_STORAGE={directory / 'state'}"]
    with serving(_runnable_distribution(directory), args=args, env=env, health_timeout=60) as served:
        yield served.url


@pytest.mark.slow
async def test_the_distribution_serves_with_the_callers_key_over_http(together_stack, together):
    async with LlamaStackClient.http(together_stack) as anonymous:
        with pytest.raises(AuthenticationError) as refused:
            await anonymous.inference.chat_completion(model="llama-3.3-70b-instruct", dialog=user("hi"))
        assert "provider 'together' (Together) has no API key" in refused.value.message
    assert together.requests == []

    async with LlamaStackClient.http(together_stack, provider_data={"together_api_key": API_KEY}) as client:
        answer = await client.inference.chat_completion(model="llama-3.3-70b-instruct", dialog=user("hi"))
        chunks = [
            c async for c in await client.inference.chat_completion(model=CHAT_MODEL, dialog=user("go on"), stream=True)
        ]
        vectors = await client.inference.embeddings(model="m2-bert-80m-8k-retrieval", contents=["a", "b"])
        ranked = await client.inference.rerank(model="llama-rank-v1", query="camelid", documents=["panda", "camelid"])
    assert answer.content == "You said: hi"
    assert "".join(c.text_delta for c in chunks) == "You said: go on"
    assert chunks[-1].stop_reason == StopReason.finished_ok
    assert vectors.embeddings == [embedding_of("a"), embedding_of("b")]
    assert [r.index for r in ranked.results] == [1, 0]
    assert [b["model"] for b in sent(together)] == [CHAT_MODEL, CHAT_MODEL]
    assert {r.headers["authorization"] for r in together.requests} == {f"Bearer {API_KEY}"}


@pytest.mark.slow
async def test_the_openai_sdk_talks_to_together_through_the_server(together_stack, together):
    import openai

    sdk = openai.AsyncOpenAI(
        base_url=f"{together_stack}/v1",
        api_key="unused",
        default_headers={PROVIDER_DATA_HEADER: json.dumps({"together_api_key": API_KEY})},
        max_retries=0,
    )
    async with sdk:
        answer = await sdk.chat.completions.create(
            model="llama-3.3-70b-instruct", messages=[{"role": "user", "content": "Hello"}], temperature=0
        )
        stream = await sdk.chat.completions.create(
            model="llama-3.3-70b-instruct", messages=[{"role": "user", "content": "Hello"}], stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        called = await sdk.chat.completions.create(
            model="llama-3.3-70b-instruct",
            messages=[{"role": "user", "content": "get_weather in Paris"}],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}],
        )
        vectors = await sdk.embeddings.create(model="m2-bert-80m-8k-retrieval", input=["Llamas", "Andes"])
    assert answer.choices[0].message.content == "You said: Hello"
    assert answer.choices[0].finish_reason == "stop"
    assert streamed == "You said: Hello"
    (call,) = called.choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_fake_0",
        "get_weather",
        {"city": "get_weather in Paris"},
    )
    assert called.choices[0].finish_reason == "tool_calls"
    assert [d.embedding for d in vectors.data] == [
        pytest.approx(embedding_of("Llamas")),
        pytest.approx(embedding_of("Andes")),
    ]
    assert sent(together)[0]["messages"] == [{"role": "user", "content": "Hello"}]
