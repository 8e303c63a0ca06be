"""Hostile and careless input: each is a 4xx naming what was wrong, and the server keeps serving.

The reproductions of issue 10 (bounded, validated input), against the app in-process (the replay provider)
and, marked slow, against `llama-stack run local` with the real model.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest
import yaml
from memory_support import faiss_provider, memory_distribution
from support import ReplayInference, uvicorn_serving, write_replay_distribution

from llama_stack.openapi import build_openapi
from llama_stack.resolver import Stack
from llama_stack.server import create_app

CHAT = {"model": "replay-model", "dialog": {"message": {"role": "user", "content": "What is the capital of France?"}}}
COMPLETION = {"model": "replay-model", "content": "The capital of France is"}
ASK = [{"role": "user", "content": "What is the capital of France?"}]
BODY_LIMIT = 64 * 1024
SECRET = "secret internal detail /etc/passwd"


def replay_distribution(directory, **server: Any):
    path = write_replay_distribution(directory)
    document = yaml.safe_load(path.read_text())
    document["server"] |= server
    document["models"].append({"model_id": "small-window-model", "provider_id": "replay", "context_length": 16})
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
async def stack(tmp_path, replay_registry):
    stack = Stack.from_distribution(
        replay_distribution(tmp_path, max_request_body_bytes=BODY_LIMIT), registry=replay_registry
    )
    await stack.start()
    yield stack
    await stack.shutdown()


@pytest.fixture
async def client(stack):
    transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def replay(stack) -> ReplayInference:
    return stack.providers["replay"].impl


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]


async def post_raw(client: httpx.AsyncClient, path: str, text: str | bytes, **headers: str) -> httpx.Response:
    return await client.post(path, content=text, headers={"content-type": "application/json", **headers})


async def still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/inference/chat_completion", json=CHAT)
    assert response.status_code == 200 and response.json()["content"] == "The capital of France is Paris."


# ----------------------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("depth", [65, 1_000, 5_000])
async def test_json_nested_too_deeply_is_a_400_before_it_is_parsed(client, depth):
    levels = depth - 3  # the body, response_format, and the innermost {}
    schema = '{"items": ' * levels + "{}" + "}" * levels
    body = json.dumps(COMPLETION)[:-1] + f', "response_format": {{"type": "json_schema", "json_schema": {schema}}}}}'
    response = await post_raw(client, "/inference/completion", body)
    assert response.status_code == 400
    assert f"nests arrays and objects {depth} levels deep; at most 64" in error_of(response)["message"]
    await still_serving(client)


async def test_brackets_inside_strings_do_not_count_as_nesting(client, replay):
    text = '[{"\\"' * 5_000 + "\\\\" + "]}" * 5_000
    response = await client.post("/inference/completion", json=COMPLETION | {"content": text})
    assert response.status_code == 200
    assert replay.requests[-1].content == text


async def test_a_provider_data_header_nested_too_deeply_is_a_400(client):
    header = "[" * 5_000 + "]" * 5_000
    response = await client.post(
        "/inference/chat_completion", json=CHAT, headers={"X-LlamaStack-Provider-Data": header}
    )
    assert response.status_code == 400
    assert (
        "X-LlamaStack-Provider-Data header nests arrays and objects 5000 levels deep" in error_of(response)["message"]
    )
    await still_serving(client)


async def test_openai_tool_call_arguments_nested_too_deeply_are_a_400_naming_them(client):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 3_000 + "]" * 3_000}}
    messages = [{"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": "x"}]
    response = await client.post("/v1/chat/completions", json={"model": "replay-model", "messages": messages})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages[0].tool_calls[0].function.arguments" and "3000 levels deep" in error["message"]


# ------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
async def test_a_number_that_is_not_finite_is_a_400_naming_its_field(client, literal):
    body = json.dumps(CHAT)[:-1] + f', "sampling_params": {{"strategy": "top_p", "temperature": {literal}}}}}'
    response = await post_raw(client, "/inference/chat_completion", body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "sampling_params.temperature"
    assert error["message"].startswith(f"sampling_params.temperature: {literal} is ") and "finite" in error["message"]
    await still_serving(client)


async def test_a_non_finite_number_deep_in_free_form_json_is_named_by_its_path(client):
    schema = '{"type": "object", "properties": {"x": {"type": "number", "maximum": NaN}}}'
    body = json.dumps(COMPLETION)[:-1] + f', "response_format": {{"type": "json_schema", "json_schema": {schema}}}}}'
    response = await post_raw(client, "/inference/completion", body)
    assert response.status_code == 400
    assert error_of(response)["param"] == "response_format.json_schema.properties.x.maximum"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\ud83d"])
async def test_a_lone_surrogate_escape_is_a_400_naming_where_it_is(client, escape):
    # Half of a UTF-16 pair parses into a string UTF-8 cannot hold; echoing or storing it would fail later.
    body = json.dumps(COMPLETION)[:-1] + f', "stop": ["ok", "{escape}"]}}'
    response = await post_raw(client, "/inference/completion", body)
    assert response.status_code == 400
    assert error_of(response)["param"] == "stop[1]"
    assert "surrogate" in error_of(response)["message"]
    await still_serving(client)


async def test_a_surrogate_pair_escape_is_a_character(client):
    body = json.dumps(COMPLETION)[:-1] + ', "stop": ["\\ud83d\\ude00"]}'
    response = await post_raw(client, "/inference/completion", body)
    assert response.status_code == 200


async def test_an_integer_with_thousands_of_digits_is_a_400(client):
    body = json.dumps(COMPLETION)[:-1] + ', "max_tokens": 1' + "0" * 5_000 + "}"
    response = await post_raw(client, "/inference/completion", body)
    assert response.status_code == 400
    assert "too many digits" in error_of(response)["message"] or "more digits" in error_of(response)["message"]


async def test_openai_routes_refuse_non_finite_numbers_as_openai_errors(client):
    body = '{"model": "replay-model", "messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}'
    response = await post_raw(client, "/v1/chat/completions", body)
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", "temperature")


# ----------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"strategy": "top_p", "temperature": 1e300}, "sampling_params.temperature"),
        ({"strategy": "top_p", "temperature": 2.5}, "sampling_params.temperature"),
        ({"strategy": "top_p", "temperature": 1.0, "repetition_penalty": 1e-300}, "sampling_params.repetition_penalty"),
        ({"repetition_penalty": 11}, "sampling_params.repetition_penalty"),
        ({"strategy": "top_k", "temperature": 1.0, "top_k": 10**12}, "sampling_params.top_k"),
        ({"frequency_penalty": 1e300}, "sampling_params.frequency_penalty"),
        ({"presence_penalty": -3}, "sampling_params.presence_penalty"),
        ({"seed": 2**64}, "sampling_params.seed"),
        ({"logit_bias": {"2147483648": 1}}, "sampling_params.logit_bias.2147483648.[key]"),
        ({"logit_bias": {"7": 1e300}}, "sampling_params.logit_bias.7"),
    ],
)
async def test_extreme_sampling_values_are_refused_naming_the_field(client, replay, sampling, field):
    body = CHAT | {"response_format": {"type": "json_object"}, "sampling_params": sampling}
    response = await client.post("/inference/chat_completion", json=body)
    assert response.status_code == 422
    assert error_of(response)["param"] == field
    assert replay.requests == []  # refused before any provider saw it
    await still_serving(client)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/inference/batch_completion", {"model": "replay-model", "content_batch": ["hi"] * 257}, "content_batch"),
        (
            "/inference/batch_chat_completion",
            {"model": "replay-model", "batch_dialogs": [CHAT["dialog"]] * 257},
            "batch_dialogs",
        ),
    ],
)
async def test_a_batch_larger_than_a_queue_place_holds_is_refused(client, replay, path, body, field):
    response = await client.post(path, json=body)
    assert response.status_code == 422 and error_of(response)["param"] == field
    assert "256" in error_of(response)["message"]
    assert replay.requests == []
    await still_serving(client)


async def test_a_stop_string_longer_than_the_engines_look_for_is_refused(client, replay):
    response = await client.post("/inference/chat_completion", json=CHAT | {"stop": ["x" * 257]})
    assert response.status_code == 422 and error_of(response)["param"] == "stop[0]"
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(
            model="replay-model", messages=[{"role": "user", "content": "hi"}], stop="x" * 257
        )
    assert replay.requests == []
    await still_serving(client)


async def test_a_temperature_too_small_to_sample_with_is_explained(client):
    body = CHAT | {"sampling_params": {"strategy": "top_p", "temperature": 1e-300}}
    response = await client.post("/inference/chat_completion", json=body)
    assert response.status_code == 422
    assert "at least 0.01" in error_of(response)["message"] and "strategy 'greedy'" in error_of(response)["message"]


async def test_max_tokens_is_bounded_even_for_a_model_of_unknown_window(client):
    response = await client.post(
        "/inference/completion", json=COMPLETION | {"model": "counting-model", "max_tokens": 1e30}
    )
    assert response.status_code == 422 and error_of(response)["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"extra_body": {"repetition_penalty": 1e-300}}, "repetition_penalty"),
        ({"extra_body": {"top_k": 10**12}}, "top_k"),
        ({"seed": 2**64}, "seed"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ],
)
async def test_openai_sdk_gets_a_bad_request_error_for_extreme_values(client, replay, arguments, param):
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="replay-model", messages=ASK, **arguments)
    assert info.value.status_code == 400 and info.value.type == "invalid_request_error"
    assert info.value.param == param
    assert replay.requests == []


async def test_an_openai_temperature_too_small_to_sample_with_is_greedy(client, replay):
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    answer = await sdk.chat.completions.create(model="replay-model", messages=ASK, temperature=1e-300)
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert replay.requests[-1].sampling_params.strategy == "greedy"


# ------------------------------------------------------------------------------------- empty prompts


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/inference/completion", COMPLETION | {"content": ""}, "content"),
        ("/inference/completion", COMPLETION | {"content": ["", ""]}, "content"),
        ("/inference/completion", COMPLETION | {"content": []}, "content"),
        ("/inference/batch_completion", {"model": "replay-model", "content_batch": ["Hi", ""]}, "content_batch[1]"),
        ("/inference/chat_completion", CHAT | {"dialog": {"message": {"role": "user", "content": ""}}}, "dialog"),
        (
            "/inference/batch_chat_completion",
            {
                "model": "replay-model",
                "batch_dialogs": [CHAT["dialog"], {"message": {"role": "user", "content": [""]}}],
            },
            "batch_dialogs[1]",
        ),
    ],
)
async def test_an_empty_prompt_is_a_400_before_the_provider_is_asked(client, replay, path, body, param):
    response = await client.post(path, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and "empty" in error["message"]
    assert replay.requests == []


@pytest.mark.parametrize(
    ("route", "arguments", "param"),
    [
        ("completions", {"prompt": ""}, "prompt"),
        ("completions", {"prompt": ["Hi", ""]}, "prompt[1]"),
        ("chat", {"messages": [{"role": "user", "content": ""}]}, "messages"),
        ("chat", {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": []}]}, "messages"),
    ],
)
async def test_an_empty_openai_prompt_is_a_bad_request(client, replay, route, arguments, param):
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    create = sdk.completions.create if route == "completions" else sdk.chat.completions.create
    with pytest.raises(openai.BadRequestError) as info:
        await create(model="replay-model", **arguments)
    assert info.value.param == param and "empty" in info.value.message
    assert replay.requests == []


async def test_the_empty_message_list_is_an_openai_bad_request(client):
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="replay-model", messages=[])
    assert (info.value.param, info.value.type) == ("messages", "invalid_request_error")


# ------------------------------------------------------------------------------- the context window


async def test_max_tokens_beyond_the_context_window_is_a_400_naming_the_window(client, replay):
    # replay-model's context_length is 4096.
    response = await client.post("/inference/chat_completion", json=CHAT | {"max_tokens": 5_000})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "max_tokens" and "context window is 4096 tokens" in error["message"]
    response = await client.post(
        "/inference/batch_completion", json={"model": "replay-model", "content_batch": ["a"], "max_tokens": 4097}
    )
    assert response.status_code == 400 and error_of(response)["param"] == "max_tokens"
    assert replay.requests == []
    assert (await client.post("/inference/chat_completion", json=CHAT | {"max_tokens": 4096})).status_code == 200


async def test_a_prompt_no_tokenizer_could_fit_in_the_window_is_refused_at_once(client, replay):
    # 16 tokens hold at most 16 * 1024 characters, whatever the tokenizer.
    too_long = await client.post("/inference/completion", json={"model": "small-window-model", "content": "x" * 20_000})
    assert too_long.status_code == 400
    error = error_of(too_long)
    assert (
        error["param"] == "content"
        and "20000 characters" in error["message"]
        and "window of 16 tokens" in error["message"]
    )
    dialog = {
        "message_history": [{"role": "user", "content": "x" * 10_000}],
        "message": {"role": "user", "content": "y" * 10_000},
    }
    response = await client.post("/inference/chat_completion", json={"model": "small-window-model", "dialog": dialog})
    assert response.status_code == 400 and error_of(response)["param"] == "dialog"
    assert replay.requests == []
    fits = await client.post("/inference/completion", json={"model": "small-window-model", "content": "x" * 16_000})
    assert fits.status_code == 200  # the provider decides what fits in tokens


async def test_openai_max_tokens_beyond_the_context_window_is_a_bad_request(client):
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="replay-alias", messages=ASK, max_completion_tokens=5_000)
    assert info.value.param == "max_tokens" and "4096" in info.value.message
    with pytest.raises(openai.BadRequestError):
        await sdk.completions.create(model="replay-model", prompt="x", max_tokens=5_000)


# ---------------------------------------------------------------------------------------- body size


async def test_a_body_declared_larger_than_the_limit_is_a_413_before_it_is_read(stack):
    app = create_app(stack)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/inference/completion", "raw_path": b"/inference/completion", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(50_000_000).encode())],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    error = json.loads(sent[1]["body"])["error"]
    assert error["type"] == "payload_too_large" and f"at most {BODY_LIMIT} bytes" in error["message"]


async def test_a_chunked_body_past_the_limit_is_a_413(client, replay):
    async def chunks():
        yield b'{"model": "replay-model", "content": "'
        for _ in range(100):
            yield b"x" * 1024  # past the 64 KiB limit after 64 chunks
        yield b'"}'

    response = await client.post(
        "/inference/completion", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "server.max_request_body_bytes" in error_of(response)["message"]
    assert replay.requests == []
    await still_serving(client)


async def test_a_body_within_the_limit_is_served(client):
    response = await client.post("/inference/completion", json=COMPLETION | {"content": "x" * (BODY_LIMIT - 100)})
    assert response.status_code == 200


async def test_a_real_server_answers_413_to_a_large_upload_and_keeps_serving(stack):
    async with uvicorn_serving(create_app(stack)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/inference/completion", json=COMPLETION | {"content": "x" * 5_000_000})
        assert response.status_code == 413
        assert error_of(response)["type"] == "payload_too_large"
        await still_serving(http)


# --------------------------------------------------------------------------------- status and headers


async def test_a_405_says_which_methods_are_allowed(client):
    response = await client.get("/inference/completion")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert "allowed: POST" in error_of(response)["message"]
    response = await client.post("/v1/models", json={})
    assert response.status_code == 405 and response.headers["allow"] == "GET"


async def test_every_503_says_when_to_retry(client):
    known = await client.post("/inference/chat_completion", json=CHAT | {"model": "busy-model"})
    assert known.status_code == 503 and known.headers["retry-after"] == "5"  # the provider's own estimate
    unknown = await client.post("/inference/chat_completion", json=CHAT | {"model": "failing-503"})
    assert unknown.status_code == 503 and unknown.headers["retry-after"] == "1"


async def test_a_path_is_served_with_and_without_its_trailing_slash(client):
    # The seed spells post-training's routes with a trailing slash; no 307 to the other spelling.
    for path in ("/post_training/supervised_fine_tune/", "/post_training/supervised_fine_tune"):
        response = await client.post(path, json={})
        assert response.status_code == 404  # the API, not the route: this distribution serves inference only
        assert "post_training API is not served" in error_of(response)["message"]
    assert (await client.post("/inference/completion/", json=COMPLETION)).status_code == 200


def test_the_openapi_document_lists_every_status_a_route_answers():
    document = build_openapi()
    operations = {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}
    for (method, path), operation in operations.items():
        responses = operation["responses"]
        assert {"400", "413", "500", "503"} <= set(responses), (method, path)
        assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
        for status, response in responses.items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    chat = operations[("post", "/inference/chat_completion")]["responses"]
    assert {"401", "404", "422", "501", "502", "504"} <= set(chat)
    openai_chat = operations[("post", "/v1/chat/completions")]["responses"]
    assert "422" not in openai_chat and "400" in openai_chat  # OpenAI's routes answer schema errors with a 400
    assert "401" not in operations[("get", "/health")]["responses"]


# ------------------------------------------------------------------------- failures inside the server


async def test_an_unexpected_provider_failure_is_a_plain_500_without_internals(client):
    response = await client.post("/inference/chat_completion", json=CHAT | {"model": "crashing-model"})
    assert response.status_code == 500
    assert SECRET not in response.text and "RuntimeError" not in response.text and "Traceback" not in response.text
    assert error_of(response)["message"].startswith("Internal server error")
    await still_serving(client)


async def test_an_unexpected_failure_during_a_stream_is_an_error_event_without_internals(client, monkeypatch):
    async def crashing_stream(self, request, make_chunk, prompt, tool_calls=()):
        yield make_chunk(text_delta="The")
        raise RuntimeError(SECRET)

    monkeypatch.setattr(ReplayInference, "_stream", crashing_stream)
    for path, body in [
        ("/inference/chat_completion", CHAT),
        ("/v1/chat/completions", {"model": "replay-model", "messages": ASK}),
    ]:
        async with client.stream("POST", path, json=body | {"stream": True}) as response:
            assert response.status_code == 200  # already answered when the provider failed
            lines = [line async for line in response.aiter_lines() if line]
        assert lines[0].startswith("data: ") and lines[-2] == "event: error"
        error = json.loads(lines[-1].removeprefix("data: "))["error"]
        assert error["status"] == 500 and "see the server log" in error["message"]
        assert SECRET not in "\n".join(lines) and "RuntimeError" not in "\n".join(lines)
    monkeypatch.undo()
    await still_serving(client)


# --------------------------------------------------------------------------------------- memory banks


@pytest.fixture
async def memory_client(tmp_path, replay_registry):
    inference = [{"provider_id": "replay", "provider_type": "inline::replay", "config": {}}]
    models = [
        {"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"},
        {"model_id": "replay-model", "provider_id": "replay"},
    ]
    path = memory_distribution(
        tmp_path, faiss_provider(embedding_model="replay-embedder"), inference=inference, model_list=models
    )
    stack = Stack.from_distribution(path, registry=replay_registry)
    await stack.start()
    transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        bank = {"bank_uuid": "bank", "bank_name": "bank", "config": {"embedding_model": "replay-embedder"}}
        assert (await client.post("/memory_banks/register", json=bank)).status_code == 200
        yield client
    await stack.shutdown()


def json_document(uuid: str, text: str) -> dict[str, Any]:
    return {"uuid": uuid, "content": base64.b64encode(text.encode()).decode(), "mime_type": "application/json"}


async def test_a_json_document_nested_too_deeply_is_a_400_naming_it(memory_client):
    documents = [json_document("flat", '{"a": [1, 2]}'), json_document("deep", "[" * 10_000 + "]" * 10_000)]
    response = await memory_client.post("/memory_bank/insert", params={"bank_uuid": "bank"}, json=documents)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "documents[1].content" and "10000 levels deep" in error["message"]
    fine = await memory_client.post("/memory_bank/insert", params={"bank_uuid": "bank"}, json=documents[:1])
    assert fine.status_code == 200


@pytest.mark.parametrize(("depth", "status"), [(17, 400), (450, 400), (16, 200)])
async def test_filters_nested_too_deeply_are_a_400(memory_client, depth, status):
    filters: dict[str, Any] = {"topic": "x"}
    for _ in range(depth - 1):
        filters = {"$and": [filters]}
    response = await memory_client.post(
        "/memory_bank/query", params={"bank_uuid": "bank"}, json={"query": "x", "filters": filters}
    )
    assert response.status_code == status, response.text
    if status == 400:
        assert "levels deep" in error_of(response)["message"]


# --------------------------------------------------------------------------- the real server (slow)

LOCAL_MODEL = "smollm2-135m-instruct"
LOCAL_CHAT = {
    "model": LOCAL_MODEL,
    "dialog": {"message": {"role": "user", "content": "What is the capital of France?"}},
    "max_tokens": 16,
}


def local_still_serving(url: str) -> None:
    response = httpx.post(f"{url}/inference/chat_completion", json=LOCAL_CHAT, timeout=120)
    assert response.status_code == 200 and response.json()["content"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/inference/completion", {"model": LOCAL_MODEL, "content": ""}),
        (
            "/inference/chat_completion",
            LOCAL_CHAT | {"response_format": {"type": "json_object"},
                          "sampling_params": {"strategy": "top_p", "temperature": 1e300, "repetition_penalty": 1e-300}},
        ),
        ("/v1/chat/completions", {"model": LOCAL_MODEL, "messages": ASK, "response_format": {"type": "json_object"},
                                  "temperature": 2, "repetition_penalty": 1e-300}),
        ("/inference/chat_completion", LOCAL_CHAT | {"max_tokens": 1e30}),
        ("/inference/chat_completion", LOCAL_CHAT | {"max_tokens": 4096}),  # the local model's window is 2048
    ],
)  # fmt: skip
def test_the_local_server_refuses_what_used_to_fail_inside_it(local_server, path, body):
    response = httpx.post(f"{local_server}{path}", json=body, timeout=120)
    assert 400 <= response.status_code < 500, response.text
    assert error_of(response)["param"]
    local_still_serving(local_server)


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        '{"model": "smollm2-135m-instruct", "content": "Hi", "sampling_params": {"strategy": "top_p", "temperature": NaN}}',
        '{"model": "smollm2-135m-instruct", "content": "Hi", "response_format": {"type": "json_schema", "json_schema": '
        + '{"a": ' * 1_000
        + "1"
        + "}" * 1_000
        + "}}",
    ],
)
def test_the_local_server_refuses_deep_and_non_finite_json(local_server, text):
    response = httpx.post(
        f"{local_server}/inference/completion", content=text, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 400, response.text
    local_still_serving(local_server)


@pytest.mark.slow
def test_the_local_server_refuses_a_50_mb_prompt_at_once(local_server):
    body = json.dumps({"model": LOCAL_MODEL, "content": "word " * 10_000_000})
    response = httpx.post(
        f"{local_server}/inference/completion", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 413
    assert response.elapsed.total_seconds() < 10  # the model never saw it
    local_still_serving(local_server)
