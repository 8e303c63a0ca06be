"""The HTTP server's behaviour through the replay provider: routes, errors, streaming, auth."""

from __future__ import annotations

import json

import httpx
import pytest
from support import FAILING_STATUSES, write_replay_distribution

from llama_stack.apis.errors import ValidationError
from llama_stack.apis.memory_banks import MemoryBanks
from llama_stack.apis.registry import Api
from llama_stack.endpoints import endpoints_of
from llama_stack.resolver import Stack
from llama_stack.server import create_app

CHAT = {
    "model": "replay-model",
    "dialog": {
        "message": {
            "role": "user",
            "content": "What is the capital of France?",
            "tool_calls": [],
            "tool_responses": [],
        },
        "message_history": [],
    },
    "sampling_params": {"temperature": 0.0, "strategy": "greedy", "top_p": 0.95, "top_k": 0},
    "available_tools": [],
    "max_tokens": 0,
    "stream": False,
    "logprobs": False,
}


@pytest.fixture
async def make_client(tmp_path, replay_registry):
    stacks = []

    async def make(api_keys=None) -> httpx.AsyncClient:
        stack = Stack.from_distribution(write_replay_distribution(tmp_path, api_keys), registry=replay_registry)
        await stack.start()
        stacks.append(stack)
        transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    make.stacks = stacks
    yield make
    for stack in stacks:
        await stack.shutdown()


@pytest.fixture
async def client(make_client):
    async with await make_client() as client:
        yield client


@pytest.fixture
async def client_and_stack(make_client):
    async with await make_client() as client:
        yield client, make_client.stacks[-1]


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


async def test_chat_completion_in_the_seed_shape(client):
    response = await client.post("/inference/chat_completion", json=CHAT)
    assert response.status_code == 200
    assert response.json() == {
        "content": "The capital of France is Paris.",
        "tool_calls": [],
        "stop_reason": "finished_ok",
    }


async def test_streaming_answers_server_sent_events(client):
    async with client.stream("POST", "/inference/chat_completion", json=CHAT | {"stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [line async for line in response.aiter_lines() if line]
    assert all(frame.startswith("data: ") for frame in frames)
    chunks = [json.loads(frame[len("data: ") :]) for frame in frames]
    assert len(chunks) > 3
    assert "".join(c["text_delta"] for c in chunks) == "The capital of France is Paris."
    assert chunks[-1]["stop_reason"] == "finished_ok"


async def test_an_error_after_the_first_chunk_is_an_error_event(client):
    body = CHAT | {"stream": True, "model": "breaking-model"}
    async with client.stream("POST", "/inference/chat_completion", json=body) as response:
        assert response.status_code == 200  # already sent when the provider failed
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[0].startswith("data: ")
    assert lines[1:] == [
        "event: error",
        'data: {"error": {"status": 502, "type": "provider_error", "message": "the stream broke", "param": null, "code": null, '
        '"provider": "replay"}}',
    ]


async def test_batch_answers_jsonl_in_input_order(client):
    body = {"model": "replay-model", "content_batch": ["a", "b", "c"]}
    response = await client.post("/inference/batch_completion", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["content"].rsplit("#", 1)[1] for line in lines] == ["0", "1", "2"]


async def test_malformed_json_is_a_400(client):
    response = await client.post(
        "/inference/chat_completion",
        content=b'{"model": "replay-model", "dialog": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in error_of(response)["message"]


async def test_empty_body_is_a_400(client):
    response = await client.post("/inference/chat_completion")
    assert response.status_code == 400
    assert "needs a JSON request body" in error_of(response)["message"]


async def test_wrong_type_names_the_field(client):
    bad = json.loads(json.dumps(CHAT))
    bad["dialog"]["message"]["role"] = "robot"
    bad["max_tokens"] = "many"
    response = await client.post("/inference/chat_completion", json=bad)
    assert response.status_code == 422
    error = error_of(response)
    locs = {d["loc"]: d for d in error["details"]}
    assert set(locs) == {"dialog.message.role", "max_tokens"}
    assert locs["dialog.message.role"]["got"] == "robot"
    assert "'user'" in locs["dialog.message.role"]["message"]
    assert "integer" in locs["max_tokens"]["message"]
    assert "dialog.message.role" in error["message"]


async def test_missing_and_unknown_fields_are_named(client):
    response = await client.post("/inference/chat_completion", json={"model": "replay-model", "dialgo": {}})
    assert response.status_code == 422
    details = {d["loc"]: d["message"] for d in error_of(response)["details"]}
    assert details == {"dialog": "field required", "dialgo": "unknown field"}


async def test_a_body_that_is_not_an_object(client):
    response = await client.post("/inference/chat_completion", json=[1, 2])
    assert response.status_code == 422


async def test_sampling_temperature_with_greedy_is_explained(client):
    body = CHAT | {"sampling_params": {"temperature": 0.7}}
    response = await client.post("/inference/chat_completion", json=body)
    assert response.status_code == 422
    assert "strategy 'top_p' or 'top_k'" in error_of(response)["message"]


async def test_prompt_logprobs_are_not_streamed(client):
    body = {"model": "replay-model", "content": "Hi", "stream": True, "prompt_logprobs": 1}
    response = await client.post("/inference/completion", json=body)
    assert response.status_code == 422
    assert "prompt_logprobs cannot be streamed" in error_of(response)["message"]
    response = await client.post("/inference/completion", json=body | {"stream": False})
    assert response.status_code == 501 and error_of(response)["param"] == "prompt_logprobs"  # replay scores no prompts


async def test_unknown_model_names_the_served_models(client):
    response = await client.post("/inference/chat_completion", json=CHAT | {"model": "llama3_8b_chat"})
    assert response.status_code == 404
    message = error_of(response)["message"]
    assert "llama3_8b_chat" in message and "replay-model" in message


async def test_unknown_route_is_a_json_404(client):
    response = await client.get("/inference/nope")
    assert response.status_code == 404
    assert "/inference/nope" in error_of(response)["message"]


async def test_wrong_method_is_a_405(client):
    response = await client.get("/inference/chat_completion")
    assert response.status_code == 405
    assert error_of(response)["type"] == "method_not_allowed"


async def test_an_alias_reaches_its_model_under_the_model_id(client_and_stack):
    client, stack = client_and_stack
    response = await client.post("/inference/chat_completion", json=CHAT | {"model": "replay-alias"})
    assert response.status_code == 200
    assert stack.providers["replay"].impl.requests[-1].model == "replay-model"
    (listed,) = [m for m in (await client.get("/models/list")).json() if m["model_id"] == "replay-model"]
    assert listed["aliases"] == ["replay-alias"] and listed["context_length"] == 4096


async def test_an_api_the_distribution_does_not_serve(client):
    response = await client.get("/datasets/get", params={"dataset_id": "x"})
    assert response.status_code == 404
    message = error_of(response)["message"]
    assert "datasets API is not served" in message and "inference" in message


def test_a_missing_query_parameter_is_named():
    (drop,) = [e for e in endpoints_of(MemoryBanks, Api.memory_banks) if e.name == "drop_memory_bank"]
    with pytest.raises(ValidationError) as info:
        drop.bind({}, None)
    assert info.value.details == [{"loc": "bank_uuid", "in": "query", "message": "required query parameter is missing"}]
    assert drop.bind({"bank_uuid": "b1"}, None) == {"bank_uuid": "b1"}


@pytest.mark.parametrize("status", FAILING_STATUSES)
async def test_provider_errors_keep_their_status_message_and_provider(client, status):
    response = await client.post("/inference/chat_completion", json=CHAT | {"model": f"failing-{status}"})
    assert response.status_code == status
    error = error_of(response)
    assert (error["status"], error["message"], error["provider"]) == (status, f"replayed a {status}", "replay")


async def test_model_and_provider_listings(client):
    models = (await client.get("/models/list")).json()
    assert {"replay-model", "prompted-model", "crashing-model", "busy-model", "stalling-model"} <= {
        m["model_id"] for m in models
    }
    assert all(m["provider_id"] == "replay" for m in models)
    providers = (await client.get("/providers/list")).json()
    assert providers == [
        {"api": "inference", "provider_id": "replay", "provider_type": "inline::replay", "package": "ReplayPlugin"}
    ]
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and set(health["models"].values()) == {"ready"}  # replay serves once built


async def test_api_keys_guard_every_route_but_health(make_client):
    async with await make_client(api_keys=["s3cret"]) as client:
        assert (await client.get("/health")).status_code == 200
        denied = await client.post("/inference/chat_completion", json=CHAT)
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/models/list", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.post("/inference/chat_completion", json=CHAT, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_openapi_is_served(client):
    document = (await client.get("/openapi.json")).json()
    assert "/inference/chat_completion" in document["paths"]


async def test_a_models_system_prompt_applies_only_when_the_dialog_has_none(client_and_stack):
    client, stack = client_and_stack
    provider = stack.providers["replay"].impl
    await client.post("/inference/chat_completion", json=CHAT | {"model": "prompted-model"})
    sent = provider.requests[-1].dialog
    assert [(m.role.value, m.content) for m in sent.message_history] == [("system", "Be brief.")]
    own = {"message": CHAT["dialog"]["message"], "message_history": [{"role": "system", "content": "Be verbose."}]}
    await client.post("/inference/chat_completion", json=CHAT | {"model": "prompted-model", "dialog": own})
    assert [m.content for m in provider.requests[-1].dialog.message_history] == ["Be verbose."]
    await client.post("/inference/chat_completion", json=CHAT)
    assert provider.requests[-1].dialog.message_history == []


TWO_PROVIDERS = """
apis: [inference]
providers:
  inference:
    - {{provider_id: first, provider_type: inline::replay, config: {{reply: from the first}}}}
    - {{provider_id: second, provider_type: inline::replay, config: {{reply: from the second}}}}
models:
  - {{model_id: model-a, provider_id: first}}
  - {{model_id: model-b, provider_id: second}}
storage: {{dir: {storage}}}
"""


async def test_several_providers_serve_one_api_routed_by_model(tmp_path, replay_registry):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_PROVIDERS.format(storage=tmp_path / "state"))
    stack = Stack.from_distribution(path, registry=replay_registry)
    await stack.start()
    try:
        transport = httpx.ASGITransport(app=create_app(stack))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            a = await client.post("/inference/chat_completion", json=CHAT | {"model": "model-a"})
            b = await client.post("/inference/chat_completion", json=CHAT | {"model": "model-b"})
            models = (await client.get("/models/list")).json()
    finally:
        await stack.shutdown()
    assert (a.json()["content"], b.json()["content"]) == ("from the first", "from the second")
    assert {m["model_id"]: m["provider_id"] for m in models} == {"model-a": "first", "model-b": "second"}


async def test_a_provider_completes_its_models_and_the_listings_show_it(tmp_path, replay_registry, monkeypatch):
    from support import ReplayInference

    async def served_with_its_window(self, model):
        self.models[model.model_id] = model
        return model.model_copy(update={"context_length": 512})

    monkeypatch.setattr(ReplayInference, "register_model", served_with_its_window)
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    await stack.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(stack)), base_url="http://test"
        ) as client:
            listed = (await client.get("/models/list")).json()
            openai = (await client.get("/v1/models")).json()["data"]
            by_alias = await client.post("/inference/chat_completion", json=CHAT | {"model": "replay-alias"})
    finally:
        await stack.shutdown()
    assert {m["context_length"] for m in listed} == {m["context_length"] for m in openai} == {512}
    assert next(m for m in listed if m["model_id"] == "replay-model")["aliases"] == [
        "replay-alias"
    ]  # the rest as written
    assert by_alias.status_code == 200


async def test_a_provider_that_renames_a_model_fails_the_start_naming_itself(tmp_path, replay_registry, monkeypatch):
    from support import ReplayInference

    async def renamed(self, model):
        return model.model_copy(update={"model_id": "something-else"})

    monkeypatch.setattr(ReplayInference, "register_model", renamed)
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    with pytest.raises(
        ValueError, match=r"provider 'replay' \(.*\): register_model\('replay-model'\) must return None or that Model"
    ):
        await stack.start()
    assert stack.providers == {} and stack.models == []  # what was built is shut down again


def test_an_error_with_retry_after_is_answered_with_the_header():
    from llama_stack.apis.errors import ServiceUnavailableError
    from llama_stack.server import error_response

    response = error_response(ServiceUnavailableError("deployment waking up", retry_after=59.6))
    assert response.status_code == 503 and response.headers["retry-after"] == "60"
    # A 503 that does not know when it will be back still tells the client when to retry.
    assert error_response(ServiceUnavailableError("busy")).headers["retry-after"] == "1"
