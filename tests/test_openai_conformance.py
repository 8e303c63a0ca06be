"""What OpenAI clients rely on, through the official ``openai`` package against a live server.

- ``GET /v1/models/{model}`` answers with the model object (ids may hold slashes; an alias names its
  model) and, for an unknown id, a 404 in OpenAI's error shape (``model_not_found``).
- Tool-call ids are unique per call, across turns and within one answer, streamed or not, and a tool
  result sent back by its call's id is taken (slow: the real SmolLM2 through ``llama-stack run local``).
- Structured output that finishes with ``stop`` parses as JSON and matches its schema (slow, same server).
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from support import uvicorn_serving

from llama_stack.apis.errors import NotFoundError
from llama_stack.client import LlamaStackClient
from llama_stack.resolver import Stack
from llama_stack.server import create_app

SLASHED = "meta-llama/Llama-3.1-8B"
CONFORMANCE_YAML = """
name: conformance
apis: [inference]
providers:
  inference:
    - provider_id: replay
      provider_type: inline::replay
      config: {{}}
models:
  - {{model_id: {slashed}, provider_id: replay, aliases: [llama3], context_length: 8192}}
  - {{model_id: replay-model, provider_id: replay}}
storage:
  dir: {storage}
"""


@pytest.fixture(scope="module")
async def server(tmp_path_factory, replay_registry):
    directory = tmp_path_factory.mktemp("conformance")
    config = directory / "conformance.yaml"
    config.write_text(CONFORMANCE_YAML.format(slashed=SLASHED, storage=directory / "state"))
    stack = Stack.from_distribution(config, registry=replay_registry)
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url:
        yield url
    await stack.shutdown()


@pytest.fixture(scope="module")
async def client(server):
    async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0) as client:
        yield client


# -- GET /v1/models/{model} --------------------------------------------------------------------------------


async def test_a_served_model_is_retrieved_by_its_id_even_with_slashes(client):
    model = await client.models.retrieve(SLASHED)  # the SDK sends meta-llama%2FLlama-3.1-8B
    assert (model.id, model.object, model.owned_by) == (SLASHED, "model", "replay")
    assert model.created > 1_700_000_000
    listed = {m.id: m for m in (await client.models.list()).data}
    assert listed[SLASHED] == model
    assert (await client.models.retrieve("replay-model")).id == "replay-model"


async def test_an_alias_retrieves_the_model_it_names(client):
    model = await client.models.retrieve("llama3")
    assert model.id == SLASHED and model.model_extra["aliases"] == ["llama3"]


@pytest.mark.parametrize("unknown", ["gpt-4o", "meta-llama/Llama-3.1-70B", "meta-llama", "replay-model/extra"])
async def test_an_unknown_model_is_a_404_in_openais_error_shape(client, server, unknown):
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve(unknown)
    assert (info.value.status_code, info.value.code, info.value.param) == (404, "model_not_found", "model")
    async with httpx.AsyncClient() as http:  # the server runs in this event loop
        raw = await http.get(f"{server}/v1/models/{unknown}")
    assert raw.status_code == 404
    error = raw.json()["error"]
    assert {k: error[k] for k in ("type", "param", "code")} == {
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert unknown in error["message"] and SLASHED in error["message"]  # it names what is served


async def test_the_route_is_in_the_openapi_document(server):
    async with httpx.AsyncClient() as http:
        document = (await http.get(f"{server}/openapi.json")).json()
    operation = document["paths"]["/v1/models/{model}"]["get"]
    (parameter,) = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("model", "path", True)
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIModel")
    assert "404" in operation["responses"]


async def test_our_own_client_retrieves_models_over_http(server):
    ours = LlamaStackClient.http(server)
    try:
        assert (await ours.openai.retrieve_model(SLASHED)).id == SLASHED
        with pytest.raises(NotFoundError) as info:
            await ours.openai.retrieve_model("nope")
        assert info.value.code == "model_not_found"
    finally:
        await ours.aclose()


# -- the real model (slow) ---------------------------------------------------------------------------------

LOCAL_MODEL = "smollm2-135m-instruct"
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


@pytest.mark.slow
def test_tool_call_ids_are_unique_and_answerable(local_server):
    with openai.OpenAI(base_url=f"{local_server}/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
        ask = {
            "model": LOCAL_MODEL,
            "messages": ASK_WEATHER,
            "tools": [WEATHER],
            "tool_choice": FORCED,
            "temperature": 0,
        }
        first = sdk.chat.completions.create(**ask).choices[0].message
        second = sdk.chat.completions.create(**ask).choices[0].message
        streamed = [
            c for c in sdk.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].delta.tool_calls
        ]
        ids = [first.tool_calls[0].id, second.tool_calls[0].id, streamed[0].choices[0].delta.tool_calls[0].id]
        assert all(CALL_ID.fullmatch(i) for i in ids), ids
        assert len(set(ids)) == 3, ids  # the same call asked three times is three calls
        # The next turn answers the call by its id; the model reads the result back.
        result = {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "18 degrees Celsius and sunny"}
        answer = sdk.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[*ASK_WEATHER, first.model_dump(exclude_none=True), result],
            tools=[WEATHER],
            temperature=0,
            max_tokens=48,
        )
        assert answer.choices[0].message.content


NOTE = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
    "required": ["title", "body"],
    "additionalProperties": False,
}


@pytest.mark.slow
def test_structured_output_that_stops_is_json_matching_the_schema(local_server):
    with openai.OpenAI(base_url=f"{local_server}/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
        stopped = []
        for seed in range(8):
            answer = sdk.chat.completions.create(
                model=LOCAL_MODEL,
                messages=[{"role": "user", "content": "Write a note about the sea, two lines, as JSON."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "note", "schema": NOTE, "strict": True},
                },
                temperature=1.0,
                seed=seed,
                max_tokens=64,
            )
            if answer.choices[0].finish_reason == "stop":
                stopped.append(answer.choices[0].message.content)
        assert stopped, "no answer ended by itself"
        for text in stopped:
            jsonschema.validate(json.loads(text), NOTE)
