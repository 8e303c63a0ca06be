"""The HTTP server: FastAPI routes generated from the protocols' route declarations."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llama_stack import __version__
from llama_stack.apis.errors import (
    AuthenticationError,
    LlamaStackError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
)

from .endpoints import PUBLIC_PATHS, Endpoint, all_endpoints
from .openai_compat import OPENAI_PATH_PREFIX, as_openai_error
from .openapi import build_openapi
from .request_context import PROVIDER_DATA_HEADER, parse_provider_data, using_provider_data
from .resolver import Stack

log = logging.getLogger(__name__)


# Statuses where a retry may succeed (a busy, failing or slow service behind a provider); every other error
# tells OpenAI's and Anthropic's SDKs not to retry (`x-should-retry: false`), as they would retry a 409 or 501.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
# A 503 that does not know when the service will be back (a full queue) still says when to try again.
DEFAULT_RETRY_AFTER_SECONDS = 1


def error_response(error: LlamaStackError, *, path: str = "", headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON answer of ``error`` on a request for ``path`` (OpenAI's routes answer as OpenAI does)."""
    if path.startswith(OPENAI_PATH_PREFIX):
        error = as_openai_error(error)
    answer_headers = dict(headers or {})
    if error.status not in RETRYABLE_STATUSES:
        answer_headers["x-should-retry"] = "false"
    retry_after = (
        error.retry_after
        if error.retry_after is not None
        else DEFAULT_RETRY_AFTER_SECONDS
        if error.status == 503
        else None
    )
    if retry_after is not None:
        answer_headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error.to_body(), status_code=error.status, headers=answer_headers)


def encode_result(endpoint: Endpoint, result: Any) -> Response:
    exclude_none = endpoint.route.exclude_none
    if endpoint.route.streams and isinstance(result, AsyncIterator):
        return StreamingResponse(
            _sse_frames(endpoint, result),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    adapter = endpoint.response_adapter
    if adapter is None:
        return Response(status_code=200)
    if endpoint.route.response_format == "jsonl":
        lines = b"".join(adapter.dump_json(item, exclude_none=exclude_none) + b"\n" for item in result)
        return Response(lines, media_type="application/jsonl")
    return Response(adapter.dump_json(result, exclude_none=exclude_none), media_type="application/json")


async def _sse_frames(endpoint: Endpoint, chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Frame each chunk as ``data: {json}``; an error after the first byte becomes an ``error`` event.

    A route with a ``stream_end`` (OpenAI's ``[DONE]``) gets that as a last ``data:`` frame when the stream
    ended normally.
    """
    assert endpoint.chunk_adapter is not None  # only streaming endpoints stream
    dump = endpoint.chunk_adapter.dump_json
    exclude_none = endpoint.route.exclude_none
    try:
        async for chunk in chunks:
            yield b"data: " + dump(chunk, exclude_none=exclude_none) + b"\n\n"
        if endpoint.route.stream_end is not None:
            yield b"data: " + endpoint.route.stream_end.encode() + b"\n\n"
    except LlamaStackError as exc:
        yield b"event: error\ndata: " + json.dumps(exc.to_body()).encode() + b"\n\n"
    except Exception:
        log.exception("stream of %s failed", endpoint.route.path)
        body = LlamaStackError("The stream failed inside the server; see the server log").to_body()
        yield b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
    finally:
        # Runs on a client disconnect too (the response task is cancelled): stop the generation.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def make_handler(stack: Stack, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        impl = endpoint.implementation(stack)
        body = endpoint.decode_body(await request.body()) if endpoint.body_adapter is not None else None
        kwargs = endpoint.bind({**request.query_params, **request.path_params}, body)
        header = request.headers.get(PROVIDER_DATA_HEADER)
        data = parse_provider_data(header) if header else None
        try:
            # Providers read per-request data (a caller's API key) when the call starts, before any stream.
            with using_provider_data(data):
                result = await getattr(impl, endpoint.name)(**kwargs)
        except LlamaStackError:
            raise
        except Exception:
            # The client gets a plain 500; the traceback stays in the server log.
            log.exception("%s %s failed", endpoint.route.method, endpoint.route.path)
            raise LlamaStackError("Internal server error; the server log has the details") from None
        return encode_result(endpoint, result)

    handle.__name__ = endpoint.name
    return handle


class BearerAuth:
    """Requires ``Authorization: Bearer <key>`` on every route but the public ones."""

    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            AuthenticationError("This server requires an API key: send 'Authorization: Bearer <key>'"),
            path=scope["path"],
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), key) for key in self.keys)


class BodySizeLimit:
    """Answers 413 to a request body larger than ``max_bytes`` before reading it: at once when its
    Content-Length says so, else (a chunked body) as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(self._too_large(f"{declared} bytes"), path=scope["path"])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised where the route reads its body, before it has answered anything: a 413.
                    raise self._too_large(f"more than {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self, size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is {size}; this server accepts at most {self.max_bytes} bytes (server.max_request_body_bytes)"
        )


def _content_length(scope: Scope) -> int | None:
    value = dict(scope["headers"]).get(b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def create_app(stack: Stack) -> FastAPI:
    """The ASGI app serving ``stack``, which the caller starts before serving and shuts down after."""
    app = FastAPI(
        title="Llama Stack", version=__version__, openapi_url="/openapi.json", docs_url="/docs", redoc_url=None
    )
    openapi = build_openapi()
    app.openapi = lambda: openapi  # type: ignore[method-assign]  # derived from the protocols, not FastAPI's

    # Each route is served with and without a trailing slash (the seed spells a few with one), instead of
    # Starlette's 307 to the other spelling, which clients do not all follow for a POST.
    app.router.redirect_slashes = False
    for endpoint in all_endpoints():
        for path in _spellings(endpoint.route.path):
            app.add_api_route(
                path, make_handler(stack, endpoint), methods=[endpoint.route.method], include_in_schema=False
            )

    @app.exception_handler(LlamaStackError)
    async def _known(request: Request, exc: LlamaStackError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404:
            return error_response(NotFoundError(f"No route {request.method} {path}; see /openapi.json"), path=path)
        if exc.status_code == 405:
            methods = ", ".join(_allowed_methods(app, request.scope["path"]))
            return error_response(
                MethodNotAllowedError(f"{request.method} is not allowed on {path} (allowed: {methods})"),
                path=path,
                headers={"Allow": methods},
            )
        error = LlamaStackError(str(exc.detail))
        error.status, error.type = exc.status_code, "http_error"
        return error_response(error, path=path)

    @app.exception_handler(RequestValidationError)
    async def _fastapi_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ValidationError(str(exc)), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(
            LlamaStackError("Internal server error; the server log has the details"), path=request.url.path
        )

    api_keys = [key.get_secret_value() for key in stack.config.server.api_keys]
    if api_keys:
        app.add_middleware(BearerAuth, api_keys=api_keys)
    # Outermost: an oversize body is refused before anything else reads it.
    app.add_middleware(BodySizeLimit, max_bytes=stack.config.server.max_request_body_bytes)
    return app


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the app's routes serve at ``path``: what a 405's Allow header lists."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def _spellings(path: str) -> tuple[str, ...]:
    """A route's path as declared, and with its trailing slash added or removed."""
    if path == "/":
        return (path,)
    return (path, path.rstrip("/")) if path.endswith("/") else (path, path + "/")
