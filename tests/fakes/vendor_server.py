"""A vendor's API on a local port, for testing remote providers without the network.

``FakeVendor`` serves handlers registered per (method, path template). Before a handler runs, the request
is validated against the vendor's OpenAPI document with openapi-core (path, method, parameters, body,
security scheme); a request the spec does not allow is recorded in ``violations`` and answered with a
400 in the vendor's error shape, as the real service would refuse it. The ``vendor_fake`` fixtures fail
the test when ``violations`` is not empty. JSON answers are validated against the spec's response schema
too, so a fake cannot drift from the vendor's shapes.

Faults are scripted per route with :meth:`FakeVendor.fail`: a status (429, 503, ...), a connection
dropped before the body, a stream cut mid-way, an ``error`` event mid-stream, invalid JSON, or a hang until
the client gives up. With ``echo_headers_in_errors`` set, every error the fake answers (its own 400s, 401s
and 404s too) echoes the request's headers, key included, as a careless vendor or proxy would.
"""

from __future__ import annotations

import asyncio
import copy
import email.policy
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any, Literal

import uvicorn
from openapi_core import OpenAPI
from openapi_core.contrib.starlette import StarletteOpenAPIRequest, StarletteOpenAPIResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from support import free_port


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    form: dict[str, Any] = field(default_factory=dict)  # multipart fields; files as (filename, bytes)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class SSE:
    """A streamed answer: each event's data (a dict is sent as JSON), then ``end`` when set."""

    events: list[Any]
    end: str | None = "[DONE]"


@dataclass
class Reply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


FaultKind = Literal["status", "drop", "cut", "error_event", "invalid_json", "hang"]


@dataclass
class Fault:
    kind: FaultKind
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_events: int = 1  # for "cut" and "error_event": how many stream events get through


Handler = Callable[[Recorded, dict[str, str]], Any]


class FakeVendor:
    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        base_path: str,
        api_key: str,
        key_of: Callable[[Recorded], str | None],
        error_body: Callable[[int, str], Any],
        extra_check: Callable[[Recorded], list[str] | None] | None = None,
    ):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{base_path}"
        spec = copy.deepcopy(spec)
        spec["servers"] = [{"url": self.url}]
        self._raw_spec = spec
        self.openapi = OpenAPI.from_dict(_binary_parts_untyped(spec))
        self.api_key = api_key
        self._key_of = key_of
        self.error_body = error_body
        # For requests the OpenAPI document does not cover: returns problems, or None when it does not know
        # the route either (then the openapi-core verdict stands).
        self._extra_check = extra_check
        self.base_path = base_path
        self.handlers: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self.faults: dict[tuple[str, str], list[Fault]] = {}
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        # Handler modules keep their own data here (jobs, files, deployments, per-model answers, ...).
        self.state: dict[str, Any] = {}
        # When set, error bodies quote the request's headers (Authorization, X-API-Key, ...) word for word.
        self.echo_headers_in_errors = False
        self._release = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- set-up
    def route(self, method: str, template: str) -> Callable[[Handler], Handler]:
        """Register a handler; it returns a dict/list (200 JSON), a Reply, an SSE, or raw bytes."""
        pattern = re.compile("^" + re.sub(r"\{([^/]+)\}", r"(?P<\1>[^/]+)", template) + "$")

        def add(handler: Handler) -> Handler:
            self.handlers.append((method, pattern, template, handler))
            # Literal segments first (…/training-jobs/grpo before …/training-jobs/{id}).
            self.handlers.sort(key=lambda h: h[2].count("{"))
            return handler

        return add

    def _handler_for(self, method: str, path: str) -> tuple[str, Handler, re.Match[str]] | None:
        """The first registered route matching the request: its template, its handler and the path's match."""
        for route_method, pattern, template, handler in self.handlers:
            match = pattern.match(path)
            if route_method == method and match:
                return template, handler, match
        return None

    def fail(self, method: str, template: str, fault: Fault, times: int = 1) -> None:
        """The next ``times`` requests to the route get ``fault`` instead of the handler's answer."""
        self.faults.setdefault((method, template), []).extend([fault] * times)

    def calls(self, method: str, path_pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)]

    # --------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeVendor:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"fake {self.name} did not start")
            self._release.wait(0.01)  # start-up poll; nothing to race
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)  # type: ignore[union-attr]

    def reset(self) -> None:
        self.faults.clear()
        self.requests.clear()
        self.violations.clear()
        self.echo_headers_in_errors = False

    # ---------------------------------------------------------------------------------------- serving
    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        recorded = Recorded(request.method, request.url.path, dict(request.query_params), dict(request.headers), body)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            recorded.form.update(_multipart_fields(request.headers["content-type"], body))
        self.requests.append(recorded)

        problems = self._validate(request, recorded)
        if problems:
            self.violations.extend(f"{request.method} {request.url.path}: {p}" for p in problems)
            return JSONResponse(self._error(recorded, 400, "; ".join(problems)), status_code=400)
        key = self._key_of(recorded)
        if key != self.api_key:
            refused = f"Invalid API key {key}" if self.echo_headers_in_errors else "Invalid API key"
            return JSONResponse(self._error(recorded, 401, refused), status_code=401)

        local = request.url.path.removeprefix(self.base_path) or "/"
        found = self._handler_for(request.method, local)
        if found is None:
            self.violations.append(f"{request.method} {request.url.path}: the fake has no handler for it")
            return JSONResponse(self._error(recorded, 404, "Not found"), status_code=404)
        template, handler, match = found

        queued = self.faults.get((request.method, template))
        fault = queued.pop(0) if queued else None
        if fault is not None and fault.kind not in ("cut", "error_event"):
            return await self._fault(fault, recorded)
        result = handler(recorded, match.groupdict())
        if asyncio.iscoroutine(result):
            result = await result
        return self._respond(request, result, fault, recorded)

    def _error(self, recorded: Recorded, status: int, message: str) -> Any:
        """The vendor's error body; with ``echo_headers_in_errors``, the message quotes the request's headers."""
        if self.echo_headers_in_errors:
            message = (
                f"{message} (request {recorded.method} {recorded.path} with headers {json.dumps(recorded.headers)})"
            )
        return self.error_body(status, message)

    def _validate(self, request: Request, recorded: Recorded) -> list[str]:
        extra = self._extra_check(recorded) if self._extra_check else None
        if extra is not None:
            return extra
        openapi_request = StarletteOpenAPIRequest(request, recorded.body)
        problems = [_describe(error) for error in self.openapi.iter_request_errors(openapi_request)]
        return problems or self._unknown_fields(recorded)

    def _unknown_fields(self, recorded: Recorded) -> list[str]:
        """Top-level body fields the operation's schema does not declare.

        The vendors' schemas allow extra properties (no ``additionalProperties: false``), so a misspelt
        field would pass schema validation and be silently ignored by the service; the fake refuses it.
        """
        body = recorded.json if recorded.body and not recorded.form else None
        if not isinstance(body, dict):
            return []
        declared = self._declared_fields(recorded.method, recorded.path)
        if declared is None:
            return []
        return [
            f"{name}: not a field the spec declares for {recorded.method} {recorded.path}"
            for name in body
            if name not in declared
        ]

    def _declared_fields(self, method: str, path: str) -> set[str] | None:
        raw = self._raw_spec
        local = path.removeprefix(self.base_path) if self.base_path else path
        for template, item in raw["paths"].items():
            if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), local) and method.lower() in item:
                schema = (
                    item[method.lower()]
                    .get("requestBody", {})
                    .get("content", {})
                    .get("application/json", {})
                    .get("schema")
                )
                return _properties(raw, schema) if schema else None
        return None

    async def _fault(self, fault: Fault, recorded: Recorded) -> Response:
        if fault.kind == "status":
            body = (
                fault.body if fault.body is not None else self._error(recorded, fault.status, f"fault {fault.status}")
            )
            return JSONResponse(body, status_code=fault.status, headers=fault.headers)
        if fault.kind == "invalid_json":
            return Response(b'{"id": "cut-off', media_type="application/json")
        if fault.kind == "hang":
            await asyncio.get_running_loop().run_in_executor(None, self._release.wait)
            return Response(status_code=504)
        return _DroppedResponse()

    def _respond(self, request: Request, result: Any, fault: Fault | None, recorded: Recorded) -> Response:
        if isinstance(result, SSE):
            error = None
            if fault is not None:
                error = (
                    fault.body
                    if fault.body is not None
                    else self._error(recorded, fault.status, f"fault {fault.status} mid-stream")
                )
            return StreamingResponse(_sse_body(result, fault, error), media_type="text/event-stream")
        if isinstance(result, (bytes, str)):
            return Response(result, media_type="application/octet-stream")
        reply = result if isinstance(result, Reply) else Reply(result)
        if reply.status == 204:
            return Response(status_code=204, headers=reply.headers)
        response = JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        openapi_response = StarletteOpenAPIResponse(response, data=response.body)
        openapi_request = StarletteOpenAPIRequest(request, b"")
        if (
            self._extra_check is None
            or self._extra_check(Recorded(request.method, request.url.path, {}, {}, b"")) is None
        ):
            for error in self.openapi.iter_response_errors(openapi_request, openapi_response):
                self.violations.append(
                    f"the fake's own answer to {request.method} {request.url.path}: {_describe(error)}"
                )
        return response


async def _sse_body(stream: SSE, fault: Fault | None, error: Any = None) -> Any:
    """The stream's events; with a fault, only ``after_events`` of them, then for "cut" a dropped
    connection, for "error_event" ``error`` as an ``event: error`` ending the stream."""
    shown = stream.events if fault is None else stream.events[: fault.after_events]
    for event in shown:
        data = event if isinstance(event, str) else json.dumps(event)
        yield f"data: {data}\n\n".encode()
    if fault is not None and fault.kind == "error_event":
        yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
    elif fault is not None:
        raise ConnectionResetError("fault: stream cut")  # uvicorn drops the connection mid-body
    elif stream.end is not None:
        yield f"data: {stream.end}\n\n".encode()


def _binary_parts_untyped(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` whose multipart file fields (``type: string, format: binary``) carry no type.

    openapi-core hands multipart parts to the validator as bytes, and an OpenAPI 3.1 ``type: string``
    refuses bytes, so every upload would fail validation. Only the type goes: the object's ``required``
    list (the file must be there) and every other field's schema still apply.
    """
    spec = copy.deepcopy(spec)
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("multipart/form-data", {}).get("schema", {})
            for prop in schema.get("properties", {}).values():
                if isinstance(prop, dict) and prop.get("format") == "binary":
                    prop.pop("type", None)
    return spec


def _multipart_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """A multipart/form-data body's fields: files as (filename, bytes), other fields as text.

    Parsed with the standard library, so the fake needs no python-multipart (which Starlette's
    ``request.form()`` would).
    """
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, Any] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[str(name)] = (filename, payload) if filename is not None else payload.decode("utf-8", "replace")
    return fields


class _DroppedResponse(Response):
    """Starts an answer promising a body, then drops the connection: the client sees it cut off."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        raise ConnectionResetError("fault: connection dropped")


def _properties(spec: dict[str, Any], schema: dict[str, Any] | None) -> set[str] | None:
    """The property names a schema declares (following $ref, allOf, oneOf/anyOf); None when it is open."""
    if schema is None:
        return None
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    names: set[str] = set(schema.get("properties", {}))
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            found = _properties(spec, sub)
            if found is None:
                return None
            names |= found
    if not names and schema.get("type") != "object":
        return None
    return names


def _describe(error: Exception) -> str:
    parts = [str(error)]
    cause = error.__cause__ or error.__context__
    seen = 0
    while cause is not None and seen < 3:
        schema_errors: Iterable[Any] = getattr(cause, "schema_errors", ()) or ()
        details = [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in schema_errors]
        parts.append("; ".join(details) if details else str(cause))
        cause, seen = cause.__cause__, seen + 1
    return " -> ".join(p for p in parts if p)
