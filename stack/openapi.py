"""The OpenAPI document, derived from the protocols' route declarations and pydantic schemas."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from llama_stack import __version__

from .endpoints import PUBLIC_PATHS, Endpoint, all_endpoints, openapi_path
from .openai_compat import OPENAI_PATH_PREFIX

REF_TEMPLATE = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer"},
                "type": {"type": "string"},
                "message": {"type": "string"},
                "param": {
                    "type": ["string", "null"],
                    "description": "The request parameter at fault (the first invalid field), as in OpenAI's errors.",
                },
                "code": {
                    "type": ["string", "null"],
                    "description": "A machine-readable reason where there is one (`model_not_found`, `unsupported_parameter`, ...).",
                },
                "provider": {"type": "string", "description": "The provider that failed, for 502/503/504."},
                "details": {
                    "type": "array",
                    "description": "One entry per invalid field: its path (`loc`), where it was (`in`), what was wrong.",
                    "items": {"type": "object"},
                },
            },
            "required": ["status", "type", "message", "param", "code"],
        }
    },
    "required": ["error"],
}

ERROR_STATUSES = {
    "400": "Malformed request (the body is not JSON, nested too deeply, holds a non-finite number), or a value "
    "this server cannot honour; on the OpenAI routes also what does not match the schema.",
    "401": "An API key is required (`Authorization: Bearer <key>`) and was missing or wrong.",
    "404": "Unknown model, resource, route, or an API this distribution does not serve.",
    "409": "Conflicts with what exists (a taken id, a job in a state that does not allow it).",
    "413": "The request body is larger than the server accepts (`server.max_request_body_bytes`).",
    "422": "The request does not match the schema; `details` names each field.",
    "500": "An unexpected failure inside the server; the details stay in the server log.",
    "501": "The provider cannot do what was asked.",
    "502": "The service behind a provider failed; `provider` names it.",
    "503": "Busy, unavailable or shutting down; retry after the `Retry-After` header's seconds.",
    "504": "The service behind a provider did not answer in time.",
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds after which a retry may succeed.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


# The stack's own routes that hand a request to a provider (registering a model loads it there).
PROVIDER_BACKED_STACK_PATHS = frozenset({"/models/register", "/models/unregister"})


def error_statuses(e: Endpoint) -> list[str]:
    """The error statuses ``e`` can answer, in order."""
    # Any request: a malformed provider-data header (400), an oversize body (413, from its Content-Length),
    # an unexpected failure (500), a server shutting down (503).
    statuses = {"400", "413", "500", "503"}
    if e.route.path not in PUBLIC_PATHS:
        statuses.add("401")
    if e.body_adapter is not None or e.query:
        statuses.add("400" if e.route.path.startswith(OPENAI_PATH_PREFIX) else "422")  # see as_openai_error
    if e.api is not None or e.route.path in PROVIDER_BACKED_STACK_PATHS:  # a provider may refuse or fail any way
        statuses |= {"400", "404", "409", "501", "502", "504"}
    return sorted(statuses)


def _tag(endpoint: Endpoint) -> str:
    return endpoint.group


def _schemas(endpoints: list[Endpoint]) -> tuple[dict[tuple[Any, str], Any], dict[str, Any]]:
    inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
    for e in endpoints:
        key = (e.route.method, e.route.path)
        if e.body_adapter is not None:
            inputs.append(((key, "body"), "validation", e.body_adapter))
        if e.response_adapter is not None:
            inputs.append(((key, "response"), "serialization", e.response_adapter))
        if e.chunk_adapter is not None:
            inputs.append(((key, "chunk"), "serialization", e.chunk_adapter))
        for q in e.query:
            inputs.append(((key, f"query:{q.name}"), "validation", q.adapter))
    by_key, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
    return {key: schema for (key, _mode), schema in by_key.items()}, definitions.get("$defs", {})


def sse_event_schema(chunk: dict[str, Any], stream_end: str | None) -> dict[str, Any]:
    """One server-sent event of a stream, as OpenAPI 3.2's ``itemSchema`` (and schemathesis) read it: an object
    with ``event`` and ``data`` strings, ``data`` holding a chunk as JSON, or an ``Error`` when ``event`` is
    ``error``, or the ``stream_end`` marker."""

    def json_data(schema: dict[str, Any]) -> dict[str, Any]:
        return {"properties": {"data": {"contentMediaType": "application/json", "contentSchema": schema}}}

    chunk_event = json_data(chunk)
    if stream_end is not None:
        chunk_event = {"if": {"properties": {"data": {"const": stream_end}}}, "then": {}, "else": chunk_event}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "if": {"properties": {"event": {"const": "error"}}, "required": ["event"]},
        "then": json_data({"$ref": REF_TEMPLATE.format(model="Error")}),
        "else": chunk_event,
    }


def _operation(e: Endpoint, schemas: dict[tuple[Any, str], Any]) -> dict[str, Any]:
    key = (e.route.method, e.route.path)
    operation: dict[str, Any] = {
        "tags": [_tag(e)],
        "operationId": f"{_tag(e)}_{e.name}",
        "summary": e.summary,
        "parameters": [
            {"name": q.name, "in": q.location, "required": q.required, "schema": schemas[(key, f"query:{q.name}")]}
            for q in e.query
        ],
    }
    if e.body_adapter is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[(key, "body")]}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if e.response_adapter is not None:
        response = schemas[(key, "response")]
        if e.route.response_format == "jsonl":
            ok["content"] = {"application/jsonl": {"schema": response}}
        elif e.chunk_adapter is not None:
            chunk = schemas[(key, "chunk")]
            ok["description"] = "The response, or with `stream: true` a series of chunks as server-sent events."
            if e.route.stream_end is not None:
                ok["description"] += f" The stream ends with `data: {e.route.stream_end}`."
            ok["content"] = {
                # A chunk shaped like the response (OpenAI's completions) is one schema, not a oneOf of two equal ones.
                "application/json": {"schema": response if response == chunk else {"oneOf": [response, chunk]}},
                "text/event-stream": {"schema": sse_event_schema(chunk, e.route.stream_end)},
            }
        else:
            ok["content"] = {"application/json": {"schema": response}}
    error = {"content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Error")}}}}
    operation["responses"] = {"200": ok}
    for status in error_statuses(e):
        operation["responses"][status] = {"description": ERROR_STATUSES[status]} | error
        if status == "503":
            operation["responses"][status]["headers"] = RETRY_AFTER_HEADER
    if e.route.path in PUBLIC_PATHS:
        operation["security"] = [{}]
    return operation


def build_openapi() -> dict[str, Any]:
    endpoints = all_endpoints()
    schemas, definitions = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(openapi_path(e.route.path), {})[e.route.method.lower()] = _operation(e, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Llama Stack",
            "version": __version__,
            "description": "The Llama Stack APIs (the draft seed contract) plus this runtime's extensions.",
        },
        "servers": [{"url": "http://localhost:8321"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(definitions.items())) | {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "tags": [{"name": name} for name in sorted({_tag(e) for e in endpoints})],
    }
