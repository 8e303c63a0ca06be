"""The served OpenAPI document carries the seed contract: every path, method, parameter and field."""

from __future__ import annotations

import json
import subprocess

import pytest
from openapi_spec_validator import validate
from support import SEED_SPEC, llama_stack_command

from llama_stack.openapi import build_openapi

SEED = json.loads(SEED_SPEC.read_text())
SEED_OPERATIONS = [(path, method) for path, item in SEED["paths"].items() for method in item]


@pytest.fixture(scope="module")
def document():
    return build_openapi()


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_document_is_valid_openapi(document):
    validate(document)


def test_every_seed_path_is_served_with_the_same_method(document):
    assert len(SEED_OPERATIONS) == 24
    missing = [(p, m) for p, m in SEED_OPERATIONS if m not in document["paths"].get(p, {})]
    assert missing == []


@pytest.mark.parametrize(("path", "method"), SEED_OPERATIONS)
def test_query_parameters_match_the_seed(document, path, method):
    seed_params = {p["name"]: p["required"] for p in SEED["paths"][path][method].get("parameters", [])}
    ours = {p["name"]: p["required"] for p in document["paths"][path][method]["parameters"]}
    assert {name: ours.get(name) for name in seed_params} == seed_params
    # Extensions (create_memory_bank's provider_id) are optional: a seed client never sends them.
    assert not any(ours[name] for name in ours.keys() - seed_params.keys())


@pytest.mark.parametrize(("path", "method"), SEED_OPERATIONS)
def test_request_bodies_accept_every_seed_field(document, path, method):
    seed_body = SEED["paths"][path][method].get("requestBody")
    our_body = document["paths"][path][method].get("requestBody")
    assert (seed_body is None) == (our_body is None)
    if seed_body is None:
        return
    seed_schema = resolve(SEED, seed_body["content"]["application/json"]["schema"])
    our_schema = resolve(document, our_body["content"]["application/json"]["schema"])
    assert seed_schema.get("type") == our_schema.get("type")
    if seed_schema.get("type") == "array":
        seed_schema = resolve(SEED, seed_schema["items"])
        our_schema = resolve(document, our_schema["items"])
    # Extensions add optional fields beside the seed's; none of the seed's is missing.
    assert set(seed_schema.get("properties", {})) <= set(our_schema.get("properties", {}))
    # We may make seed-required fields optional (defaults), never require anything the seed does not.
    assert set(our_schema.get("required", [])) <= set(seed_schema.get("required", []))


@pytest.mark.parametrize(("path", "method"), SEED_OPERATIONS)
def test_responses_keep_the_seed_content_types_and_fields(document, path, method):
    seed_ok = SEED["paths"][path][method]["responses"]["200"]
    our_ok = document["paths"][path][method]["responses"]["200"]
    for content_type, media in seed_ok.get("content", {}).items():
        assert content_type in our_ok["content"], f"{method} {path} lacks {content_type}"
        seed_schema, our_schema = media["schema"], our_ok["content"][content_type]["schema"]
        seed_variants = [resolve(SEED, s) for s in seed_schema.get("oneOf", [seed_schema])]
        our_variants = [resolve(document, s) for s in our_schema.get("oneOf", [our_schema])]
        # A route that streams as an extension answers its stream chunk as a further variant.
        assert len(our_variants) >= len(seed_variants)
        for seed_variant, our_variant in zip(seed_variants, our_variants, strict=False):
            assert set(seed_variant.get("properties", {})) <= set(our_variant.get("properties", {}))


def test_streaming_routes_declare_server_sent_events(document):
    for path in ("/inference/chat_completion", "/inference/completion", "/agentic_system/execute"):
        assert "text/event-stream" in document["paths"][path]["post"]["responses"]["200"]["content"]


def test_model_fields_take_any_registered_id_not_the_seed_enum(document):
    body = resolve(
        document,
        document["paths"]["/inference/chat_completion"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    )
    assert body["properties"]["model"]["type"] == "string"
    assert "enum" not in body["properties"]["model"]


def test_the_cli_prints_the_same_document(document):
    result = subprocess.run([*llama_stack_command(), "openapi"], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == json.loads(json.dumps(document))
