"""remote::emissary inference against the fake Emissary API: mapping, emulated streams, refusals, batches,
embeddings, deployments of fine-tuned models, per-request keys, and a real server of the distribution."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx
import pytest
from fakes import emissary_handlers as handlers
from fakes.emissary import API_KEY
from fakes.vendor_server import Fault
from remote.conftest import FAST_RETRIES
from support import REPO, serving

from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.config import load_distribution, validate_provider_configs
from llama_stack.plugins import discover_providers
from llama_stack.providers.remote.emissary.config import EmissaryInferenceConfig
from llama_stack.providers.remote.emissary.inference import EmissaryInference
from llama_stack.providers.utils.remote.fan_out import fan_out

BASE = "Llama-3.2-1B-Instruct"
PROJECT = "ms-12345"
CHAT = r"/v1/chat/completions"
COMPLETIONS = r"/v1/completions"
DEPLOYMENTS = rf"/v1/projects/{PROJECT}/deployments"
USER = {"role": "user", "content": "Hello, how are you?"}


@pytest.fixture(autouse=True)
def fresh(emissary, monkeypatch):
    handlers.reset(emissary)
    monkeypatch.delenv("EMISSARY_API_KEY", raising=False)
    yield
    handlers.reset(emissary)


def provider(emissary, **config: Any) -> dict[str, list[dict[str, Any]]]:
    settings = {"url": emissary.url, "api_key": API_KEY, **FAST_RETRIES, **config}
    return {"inference": [{"provider_id": "emissary", "provider_type": "remote::emissary", "config": settings}]}


def model(model_id: str = "llama", name: str = BASE, **fields: Any) -> dict[str, Any]:
    return {"model_id": model_id, "provider_id": "emissary", "provider_model_id": name, "model_type": "llm", **fields}


def tuned(checkpoint: int = 3, **spec: Any) -> dict[str, Any]:
    deployment = {"training_job_id": "tr-12345", "checkpoint": checkpoint, **spec}
    return model("tuned", "tuned-deployment", metadata={"deployment": deployment})


# Deployment polling in tests: the loop runs, the waits are milliseconds; every request re-checks.
DEPLOYING = {"project_id": PROJECT, "poll_interval": 0.001, "deployment_wait": 5.0, "status_recheck_interval": 0}


async def collect(stream) -> list[Any]:
    return [chunk async for chunk in stream]


# ------------------------------------------------------------------------------------------ chat/completion
async def test_chat_sends_the_dialog_and_sampling_as_emissary_fields(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    answer = await client.inference.chat_completion(
        model="llama",
        dialog={
            "message_history": [
                {"role": "system", "content": "You are concise."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ],
            "message": {"role": "user", "content": ["Hello, ", "how are you?"]},
        },
        sampling_params={"strategy": "top_p", "temperature": 0.7, "top_p": 0.9, "top_k": 50},
        max_tokens=64,
    )
    assert answer.content == "You said: Hello, how are you?"
    assert answer.stop_reason == "finished_ok"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 6)
    (call,) = emissary.calls("POST", CHAT)
    assert call.headers["x-api-key"] == API_KEY
    assert call.json == {
        "model": BASE,
        "messages": [
            {"role": "system", "content": "You are concise."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Hello, how are you?"},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "max_tokens": 64,
    }


async def test_greedy_is_temperature_zero_and_unset_limits_are_left_out(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    await client.inference.chat_completion(model="llama", dialog={"message": USER})
    await client.inference.completion(model="llama", content="The capital of France is")
    assert emissary.calls("POST", CHAT)[0].json == {"model": BASE, "messages": [USER], "temperature": 0.0}
    assert emissary.calls("POST", COMPLETIONS)[0].json == {
        "model": BASE,
        "prompt": "The capital of France is",
        "temperature": 0.0,
    }


async def test_completion_sends_max_completion_tokens_and_maps_length_to_max_tokens(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    answer = await client.inference.completion(
        model="llama",
        content="The capital of France is",
        sampling_params={"strategy": "top_k", "temperature": 0.5, "top_k": 10},
        max_tokens=3,
    )
    assert answer.content == " Paris. The"
    assert answer.stop_reason == "max_tokens"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 2)
    (call,) = emissary.calls("POST", COMPLETIONS)
    assert call.json == {
        "model": BASE,
        "prompt": "The capital of France is",
        "temperature": 0.5,
        "top_p": 0.95,
        "top_k": 10,
        "max_completion_tokens": 3,
    }


async def test_a_missing_finish_reason_is_not_stopped_and_the_stop_string_is_ignored(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    handlers.script_reply(emissary, "cut off", finish_reason=None)
    chat = await client.inference.chat_completion(model="llama", dialog={"message": USER})
    handlers.script_reply(emissary, " Paris.", finish_reason="stop", stop_reason="\n\n")
    completion = await client.inference.completion(model="llama", content="The capital of France is")
    assert (chat.content, chat.stop_reason) == ("cut off", "not_stopped")
    assert (completion.content, completion.stop_reason) == (" Paris.", "finished_ok")


async def test_a_streamed_chat_is_one_call_then_one_delta_and_a_final_chunk(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    chunks = await collect(await client.inference.chat_completion(model="llama", dialog={"message": USER}, stream=True))
    assert [(c.text_delta, c.stop_reason) for c in chunks] == [
        ("You said: Hello, how are you?", "not_stopped"),
        ("", "finished_ok"),
    ]
    assert chunks[0].usage is None
    assert (chunks[1].usage.prompt_tokens, chunks[1].usage.completion_tokens) == (4, 6)
    assert len(emissary.calls("POST", CHAT)) == 1
    assert "stream" not in emissary.calls("POST", CHAT)[0].json


async def test_a_streamed_completion_ends_with_the_mapped_stop_reason(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    stream = await client.inference.completion(
        model="llama", content="The capital of France is", max_tokens=2, stream=True
    )
    chunks = await collect(stream)
    assert [(c.text_delta, c.stop_reason) for c in chunks] == [(" Paris.", "not_stopped"), ("", "max_tokens")]
    assert chunks[1].usage.completion_tokens == 1


async def test_a_refused_stream_fails_when_called_not_mid_stream(emissary, start_stack):
    client = await start_stack(provider(emissary, max_retries=0), [model()])
    emissary.fail(
        "POST", "/v1/chat/completions", Fault("status", status=400, body={"status": 400, "error": "Bad request"})
    )
    with pytest.raises(BadRequestError) as refused:
        await client.inference.chat_completion(model="llama", dialog={"message": USER}, stream=True)
    assert "Emissary" in refused.value.message and "Bad request" in refused.value.message


async def test_a_model_emissary_does_not_know_is_a_404_naming_it(emissary, start_stack, caplog):
    with caplog.at_level(logging.WARNING, logger="llama_stack.providers.remote.emissary.inference"):
        client = await start_stack(provider(emissary), [model("typo", "Llama-3.2-1B-Instruckt")])
    assert "'Llama-3.2-1B-Instruckt', which is not a base model Emissary lists" in caplog.text
    with pytest.raises(NotFoundError) as missing:
        await client.inference.chat_completion(model="typo", dialog={"message": USER})
    assert missing.value.code == "model_not_found"
    assert "Llama-3.2-1B-Instruckt" in missing.value.message and missing.value.provider == "emissary"


async def test_vendor_outages_are_retried_and_then_a_503(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    emissary.fail("POST", "/v1/chat/completions", Fault("drop"), times=2)
    answer = await client.inference.chat_completion(model="llama", dialog={"message": USER})
    assert answer.content.startswith("You said:")
    assert len(emissary.calls("POST", CHAT)) == 3


# ---------------------------------------------------------------------------------------------- refusals
CHAT_REFUSALS = [
    ({"available_tools": [{"tool_name": "get_weather"}]}, "available_tools", "tool calling"),
    ({"logprobs": True}, "logprobs", "log-probabilities"),
    ({"top_logprobs": 3}, "top_logprobs", "log-probabilities"),
    ({"stop": ["\n"]}, "stop", "stop sequences"),
    ({"response_format": {"type": "json_object"}}, "response_format", "JSON"),
    ({"sampling_params": {"strategy": "top_p", "temperature": 0.7, "seed": 42}}, "sampling_params.seed", "seed"),
    ({"sampling_params": {"repetition_penalty": 1.2}}, "sampling_params.repetition_penalty", "repetition penalty"),
    ({"sampling_params": {"presence_penalty": 0.5}}, "sampling_params.presence_penalty", "no presence_penalty"),
    ({"sampling_params": {"logit_bias": {"5": 1}}}, "sampling_params.logit_bias", "no logit bias"),
    (
        {
            "dialog": {
                "message": {"role": "tool", "content": "18C", "tool_responses": [{"tool_name": "w", "content": "18C"}]}
            }
        },
        "dialog.message.role",
        "tool messages",
    ),
    (
        {
            "dialog": {
                "message_history": [
                    {"role": "assistant", "content": "", "tool_calls": [{"tool_name": "w", "arguments": {}}]}
                ],
                "message": USER,
            }
        },
        "dialog.message_history[0].tool_calls",
        "tool calls",
    ),
    (
        {
            "dialog": {
                "message": {
                    "role": "user",
                    "content": ["Look:", {"url": "data:text/plain,hi", "mime_type": "text/plain"}],
                }
            }
        },
        "dialog.message.content[1]",
        "attachments",
    ),
]


@pytest.mark.parametrize(("fields", "param", "why"), CHAT_REFUSALS, ids=[c[1] for c in CHAT_REFUSALS])
async def test_chat_features_emissary_lacks_are_refused_before_any_call(emissary, start_stack, fields, param, why):
    client = await start_stack(provider(emissary), [model()])
    request = {"model": "llama", "dialog": {"message": USER}, **fields}
    for stream in (False, True):
        with pytest.raises(BadRequestError) as refused:
            await client.inference.chat_completion(**request, stream=stream)
        error = refused.value
        assert (error.param, error.provider, error.code) == (param, "emissary", "unsupported_by_provider")
        assert "Emissary" in error.message and param in error.message and why in error.message
    assert emissary.calls("POST", CHAT) == []


COMPLETION_REFUSALS = [
    ({"logprobs": True}, "logprobs"),
    ({"stop": ["."]}, "stop"),
    ({"response_format": {"type": "json_schema", "json_schema": {"type": "object"}}}, "response_format"),
    ({"content": {"url": "data:text/plain,hi", "mime_type": "text/plain"}}, "content"),
]


@pytest.mark.parametrize(("fields", "param"), COMPLETION_REFUSALS, ids=[c[1] for c in COMPLETION_REFUSALS])
async def test_completion_features_emissary_lacks_are_refused_before_any_call(emissary, start_stack, fields, param):
    client = await start_stack(provider(emissary), [model()])
    with pytest.raises(BadRequestError) as refused:
        await client.inference.completion(**{"model": "llama", "content": "Hi", **fields})
    assert refused.value.param == param and "Emissary" in refused.value.message
    assert emissary.calls("POST", COMPLETIONS) == []


async def test_a_plain_text_response_format_and_tool_choice_none_are_accepted(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    answer = await client.inference.chat_completion(
        model="llama", dialog={"message": USER}, response_format={"type": "text"}, tool_choice="none"
    )
    assert answer.content == "You said: Hello, how are you?"


async def test_rerank_is_not_supported(emissary, start_stack):
    client = await start_stack(provider(emissary), [model("ranker", BASE, model_type="rerank")])
    with pytest.raises(NotSupportedError) as refused:
        await client.inference.rerank(model="ranker", query="q", documents=["a"])
    assert "rerank" in refused.value.message and refused.value.provider == "emissary"


# ------------------------------------------------------------------------------------------------ batches
async def test_batch_chat_answers_in_input_order(emissary, start_stack):
    client = await start_stack(provider(emissary, max_concurrency=2), [model()])
    dialogs = [{"message": {"role": "user", "content": f"question {i}"}} for i in range(5)]
    answers = await client.inference.batch_chat_completion(model="llama", batch_dialogs=dialogs, max_tokens=4)
    assert [a.content for a in answers] == [f"You said: question {i}" for i in range(5)]
    assert sorted(c.json["messages"][0]["content"] for c in emissary.calls("POST", CHAT)) == [
        f"question {i}" for i in range(5)
    ]
    assert all(c.json["max_tokens"] == 4 for c in emissary.calls("POST", CHAT))


async def test_batch_completion_answers_in_input_order(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    answers = await client.inference.batch_completion(model="llama", content_batch=["a", "b c", "d e f"], max_tokens=2)
    assert [(a.content, a.stop_reason, a.usage.prompt_tokens) for a in answers] == [
        (" Paris.", "max_tokens", 1),
        (" Paris.", "max_tokens", 2),
        (" Paris.", "max_tokens", 3),
    ]
    assert [c.json["max_completion_tokens"] for c in emissary.calls("POST", COMPLETIONS)] == [2, 2, 2]


async def test_a_refused_dialog_refuses_the_whole_batch_before_any_call(emissary, start_stack):
    client = await start_stack(provider(emissary), [model()])
    dialogs = [
        {"message": USER},
        {"message": {"role": "user", "content": {"url": "data:,x", "mime_type": "text/plain"}}},
    ]
    with pytest.raises(BadRequestError) as refused:
        await client.inference.batch_chat_completion(model="llama", batch_dialogs=dialogs)
    assert refused.value.param == "batch_dialogs[1].message.content"
    assert emissary.calls("POST", CHAT) == []


def _bare_provider(max_concurrency: int) -> EmissaryInference:
    config = EmissaryInferenceConfig(url="http://unused.invalid", max_concurrency=max_concurrency)
    return EmissaryInference(config, svc=None, provider_id="emissary")  # type: ignore[arg-type]


async def test_batches_keep_at_most_max_concurrency_calls_in_flight():
    inference = _bare_provider(max_concurrency=2)
    gates = [asyncio.Event() for _ in range(5)]
    started: list[int] = []
    in_flight, peak = 0, 0

    async def call(index: int) -> str:
        nonlocal in_flight, peak
        started.append(index)
        in_flight += 1
        peak = max(peak, in_flight)
        await gates[index].wait()
        in_flight -= 1
        return f"answer {index}"

    batch = asyncio.ensure_future(fan_out(list(range(5)), call, inference._config.max_concurrency))
    for index in (1, 0, 3, 2, 4):  # finish out of order
        for _ in range(100):
            if index in started:
                break
            await asyncio.sleep(0)  # lets the next waiting call start; no timing involved
        assert index in started and in_flight <= 2
        gates[index].set()
    assert await batch == [f"answer {i}" for i in range(5)]
    assert peak == 2


async def test_the_first_failure_in_a_batch_cancels_the_rest():
    inference = _bare_provider(max_concurrency=2)
    started: list[int] = []
    cancelled: list[int] = []

    async def call(index: int) -> int:
        started.append(index)
        if index == 0:
            raise ServiceUnavailableError("busy", provider="emissary")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return index

    with pytest.raises(ServiceUnavailableError):
        await fan_out([0, 1, 2, 3], call, inference._config.max_concurrency)
    # Nothing is left running: every call that started besides the failed one was cancelled.
    assert started[0] == 0 and sorted(cancelled) == sorted(started[1:])
    assert 3 not in started  # it never got a slot


# --------------------------------------------------------------------------------------------- embeddings
async def test_embeddings_are_one_call_per_text_with_the_text_as_target(emissary, start_stack):
    embedder = {"model_id": "embedder", "provider_id": "emissary", "provider_model_id": BASE, "model_type": "embedding"}
    client = await start_stack(provider(emissary), [embedder])
    texts = ["What is the capital of France?", "Paris", "a banana"]
    answer = await client.inference.embeddings(model="embedder", contents=texts)
    assert answer.embeddings == [
        [30.0, 6.0, 4.0, 1.0],
        [5.0, 1.0, 1.0, 1.0],
        [8.0, 2.0, 4.0, 1.0],
    ]
    calls = emissary.calls("POST", r"/v1/embeddings")
    assert sorted(c.json["input"] for c in calls) == sorted(texts)
    for call in calls:
        assert call.json == {
            "model": BASE,
            "input": call.json["input"],
            "target": call.json["input"],
            "cosine": False,
            "manhattan": False,
            "euclidean": False,
        }


async def test_an_embedding_answer_without_a_vector_is_a_502(emissary, start_stack):
    embedder = {"model_id": "embedder", "provider_id": "emissary", "provider_model_id": BASE, "model_type": "embedding"}
    client = await start_stack(provider(emissary), [embedder])
    emissary.fail("POST", "/v1/embeddings", Fault("status", status=200, body={"id": "rq-1", "response": {}}))
    with pytest.raises(ProviderError) as broken:
        await client.inference.embeddings(model="embedder", contents=["x"])
    assert "input_embedding" in broken.value.message


# -------------------------------------------------------------------------------------------- deployments
async def test_a_deployment_is_created_and_awaited_at_start_up(emissary, start_stack):
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned(inactive_timeout=1800)])
    (created,) = emissary.calls("POST", DEPLOYMENTS)
    assert created.json == {
        "training_job_id": "tr-12345",
        "checkpoint": 3,
        "name": "tuned-deployment",
        "description": "llama-stack model tuned",
        "inactive_timeout": 1800,
    }
    record = handlers.deployment(emissary, "tuned-deployment")
    assert record["status"] == "Deployed"
    assert len(emissary.calls("GET", rf"{DEPLOYMENTS}/{record['id']}")) == 2  # polled until Deployed
    answer = await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert answer.content == "You said: Hello, how are you?"
    assert emissary.calls("POST", CHAT)[0].json["model"] == "tuned-deployment"
    # Deployed and cached: requests do not ask for the status again.
    await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert len(emissary.calls("GET", rf"{DEPLOYMENTS}/{record['id']}")) == 2


async def test_an_existing_deployment_is_found_by_name_not_created_again(emissary, start_stack):
    handlers.add_deployment(emissary, PROJECT, "tuned-deployment", "Deployed")
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    assert emissary.calls("POST", DEPLOYMENTS) == []
    await client.inference.completion(model="tuned", content="Hi")
    assert emissary.calls("POST", COMPLETIONS)[0].json["model"] == "tuned-deployment"


async def test_a_deactivated_deployment_is_reactivated_once_with_retriable_503s(emissary, start_stack):
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    record = handlers.deployment(emissary, "tuned-deployment")
    handlers.set_status(emissary, "tuned-deployment", "Deactivated")  # idle: Emissary put it to sleep

    for _ in range(2):
        with pytest.raises(ServiceUnavailableError) as sleeping:
            await client.inference.chat_completion(model="tuned", dialog={"message": USER})
        assert sleeping.value.code == "deployment_reactivating"
        assert "8 to 20 minutes" in sleeping.value.message and "retry" in sleeping.value.message
        assert sleeping.value.retry_after == 60  # the server answers it as Retry-After
    assert len(emissary.calls("POST", rf"{DEPLOYMENTS}/{record['id']}/reactivate")) == 1
    assert record["status"] == "Reactivating"
    # Only the first request reached the sleeping model (and told us); the second was answered from the status.
    assert len(emissary.calls("POST", CHAT)) == 1

    handlers.set_status(emissary, "tuned-deployment", "Deployed")
    answer = await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert answer.content == "You said: Hello, how are you?"
    assert len(emissary.calls("POST", rf"{DEPLOYMENTS}/{record['id']}/reactivate")) == 1


async def test_a_deployment_deactivated_at_start_up_is_woken_by_the_first_request(emissary, start_stack):
    existing = handlers.add_deployment(emissary, PROJECT, "tuned-deployment", "Deactivated")
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    assert emissary.calls("POST", rf"{DEPLOYMENTS}/{existing['id']}/reactivate") == []
    with pytest.raises(ServiceUnavailableError) as sleeping:
        await client.inference.completion(model="tuned", content="Hi")
    assert sleeping.value.code == "deployment_reactivating"
    assert len(emissary.calls("POST", rf"{DEPLOYMENTS}/{existing['id']}/reactivate")) == 1
    assert emissary.calls("POST", COMPLETIONS) == []


async def test_requests_answer_503_while_a_slow_deployment_comes_up(emissary, start_stack):
    handlers.state(emissary)["deploy_after_polls"] = 1000
    client = await start_stack(provider(emissary, **{**DEPLOYING, "deployment_wait": 0}), [tuned()])
    with pytest.raises(ServiceUnavailableError) as starting:
        await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert starting.value.code == "deployment_starting" and "Deploying" in starting.value.message
    assert emissary.calls("POST", CHAT) == []
    handlers.set_status(emissary, "tuned-deployment", "Deployed")
    answer = await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert answer.stop_reason == "finished_ok"


async def test_the_status_is_rechecked_at_most_every_interval_while_down(emissary, start_stack):
    handlers.state(emissary)["deploy_after_polls"] = 1000
    config = {**DEPLOYING, "deployment_wait": 0, "status_recheck_interval": 3600}
    client = await start_stack(provider(emissary, **config), [tuned()])
    record = handlers.deployment(emissary, "tuned-deployment")
    polls = len(emissary.calls("GET", rf"{DEPLOYMENTS}/{record['id']}"))
    for _ in range(3):
        with pytest.raises(ServiceUnavailableError):
            await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert len(emissary.calls("GET", rf"{DEPLOYMENTS}/{record['id']}")) == polls


async def test_a_failed_status_poll_does_not_end_the_wait(emissary, start_stack):
    emissary.fail("GET", "/v1/projects/{project_id}/deployments/{deployment_id}", Fault("status", status=503), times=3)
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    assert handlers.deployment(emissary, "tuned-deployment")["status"] == "Deployed"
    answer = await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert answer.content.startswith("You said:")


async def test_start_up_defers_the_deployment_when_emissary_is_down(emissary, start_stack):
    emissary.fail("GET", "/v1/projects/{project_id}/deployments", Fault("status", status=503), times=3)
    handlers.state(emissary)["deploy_after_polls"] = 1
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    assert emissary.calls("POST", DEPLOYMENTS) == []
    with pytest.raises(ServiceUnavailableError) as starting:  # the first request sets it up
        await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert starting.value.code == "deployment_starting"
    assert len(emissary.calls("POST", DEPLOYMENTS)) == 1
    answer = await client.inference.chat_completion(model="tuned", dialog={"message": USER})  # its first poll: Deployed
    assert answer.content.startswith("You said:")


@pytest.mark.parametrize(
    ("prepare", "models", "config", "error", "code", "words"),
    [
        (None, [tuned()], {"project_id": None}, BadRequestError, "missing_project_id", "project_id"),
        (
            lambda fake: handlers.add_deployment(fake, PROJECT, "tuned-deployment", "Deployed", "tr-99", 1),
            [tuned()],
            {},
            BadRequestError,
            "deployment_mismatch",
            "tr-99 checkpoint 1",
        ),
        (
            lambda fake: handlers.add_deployment(fake, PROJECT, "tuned-deployment", "Failed"),
            [tuned()],
            {},
            ProviderError,
            "deployment_failed",
            "is Failed",
        ),
        (
            None,
            [model("tuned", "tuned-deployment", metadata={"deployment": {}})],
            {},
            NotFoundError,
            "deployment_not_found",
            "training_job_id and checkpoint",
        ),
        (
            None,
            [model("tuned", "tuned-deployment", metadata={"deployment": {"checkpoint": 3}})],
            {},
            BadRequestError,
            None,
            "training_job_id and checkpoint go together",
        ),
    ],
    ids=["no-project", "mismatch", "failed", "nothing-to-create-from", "half-a-spec"],
)
async def test_deployment_problems_only_the_user_can_fix_stop_the_start_up(
    emissary, start_stack, prepare, models, config, error, code, words
):
    if prepare is not None:
        prepare(emissary)
    with pytest.raises(error) as stopped:
        await start_stack(provider(emissary, **{**DEPLOYING, **config}), models)
    assert stopped.value.code == code and words in stopped.value.message
    assert "tuned" in stopped.value.message


async def test_a_deleted_deployment_is_created_again(emissary, start_stack):
    client = await start_stack(provider(emissary, **DEPLOYING), [tuned()])
    handlers.state(emissary)["deployments"].clear()  # deleted on Emissary's side
    with pytest.raises(ServiceUnavailableError) as starting:
        await client.inference.chat_completion(model="tuned", dialog={"message": USER})
    assert starting.value.code == "deployment_starting"
    assert len(emissary.calls("POST", DEPLOYMENTS)) == 2


# ------------------------------------------------------------------------------------------------- keys
async def test_a_per_request_key_is_sent_and_no_key_is_a_401(emissary, start_stack):
    keyless = provider(emissary, api_key=None)
    client = await start_stack(keyless, [model()], provider_data={"emissary_api_key": API_KEY})
    answer = await client.inference.chat_completion(model="llama", dialog={"message": USER})
    assert answer.content.startswith("You said:")
    assert emissary.calls("POST", CHAT)[0].headers["x-api-key"] == API_KEY
    assert emissary.calls("GET", r"/v1/models") == []  # no key at start-up: the model check is skipped

    without = await start_stack(keyless, [model()])
    with pytest.raises(AuthenticationError) as missing:
        await without.inference.chat_completion(model="llama", dialog={"message": USER})
    assert "emissary_api_key" in missing.value.message and "EMISSARY_API_KEY" in missing.value.message

    wrong = await start_stack(keyless, [model()], provider_data={"emissary_api_key": "not-the-key"})
    with pytest.raises(AuthenticationError) as rejected:
        await wrong.inference.chat_completion(model="llama", dialog={"message": USER})
    assert "not-the-key" not in rejected.value.message


# ----------------------------------------------------------------------------------------- distribution
def test_the_distribution_loads_without_a_key():
    config = load_distribution("emissary", env={})
    validated = validate_provider_configs(config, discover_providers(), "emissary")
    inference = validated["emissary"]
    assert inference.api_key is None and inference.url == "https://api.withemissary.com"
    assert [m.provider_model_id for m in config.models] == [BASE, BASE]


@pytest.fixture
def emissary_server_process(emissary, tmp_path):
    """`llama-stack run distributions/emissary.yaml` pointed at the fake; its base URL."""
    env = os.environ | {
        "EMISSARY_URL": emissary.url,
        "EMISSARY_API_KEY": API_KEY,
        "LLAMA_STACK_STORAGE": str(tmp_path / "state"),
    }
    with serving(REPO / "distributions" / "emissary.yaml", env=env) as served:
        yield served.url


@pytest.mark.slow
def test_the_emissary_distribution_serves_over_http_with_the_openai_sdk(emissary, emissary_server_process):
    import openai

    client = openai.OpenAI(base_url=f"{emissary_server_process}/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="Llama-3.2-1B-Instruct", messages=[USER], max_tokens=16, temperature=0.7, top_p=0.9
    )
    assert answer.choices[0].message.content == "You said: Hello, how are you?"
    assert answer.choices[0].finish_reason == "stop"
    (call,) = emissary.calls("POST", CHAT)
    assert call.json == {"model": BASE, "messages": [USER], "max_tokens": 16, "temperature": 0.7, "top_p": 0.9}
    assert call.headers["x-api-key"] == API_KEY

    streamed = client.chat.completions.create(model="llama-3.2-1b-instruct", messages=[USER], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == "You said: Hello, how are you?"

    refused = httpx.post(
        f"{emissary_server_process}/inference/chat_completion",
        json={"model": "llama-3.2-1b-instruct", "dialog": {"message": USER}, "stop": ["\n"]},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "stop"
    assert len(emissary.calls("POST", CHAT)) == 2
