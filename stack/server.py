"""The HTTP server: FastAPI routes generated from the protocols' route declarations."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llama_stack import __version__
from llama_stack.apis.errors import (
    AuthenticationError,
    LlamaStackError,
    MethodNotAllowedError,
    NotFoundError,
    ValidationError,
)

from .endpoints import Endpoint, all_endpoints
from .openapi import build_openapi
from .request_context import PROVIDER_DATA_HEADER, parse_provider_data, using_provider_data
from .resolver import Stack

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health"})


# Statuses where a retry may succeed (a busy, failing or slow service behind a provider); every other error
# tells OpenAI's and Anthropic's SDKs not to retry (`x-should-retry: false`), as they would retry a 409 or 501.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


def error_response(error: LlamaStackError) -> JSONResponse:
    headers = {} if error.status in RETRYABLE_STATUSES else {"x-should-retry": "false"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)


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
    dump = endpoint.chunk_adapter.dump_json  # type: ignore[union-attr]
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


def make_handler(stack: Stack, endpoint: Endpoint):
    async def handle(request: Request) -> Response:
        impl = endpoint.implementation(stack)
        body = endpoint.decode_body(await request.body()) if endpoint.body_adapter is not None else None
        kwargs = endpoint.bind(request.query_params, body)
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
            AuthenticationError("This server requires an API key: send 'Authorization: Bearer <key>'")
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), key) for key in self.keys)


def create_app(stack: Stack) -> FastAPI:
    """The ASGI app serving ``stack``, which the caller starts before serving and shuts down after."""
    app = FastAPI(title="Llama Stack", version=__version__, openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    openapi = build_openapi()
    app.openapi = lambda: openapi  # type: ignore[method-assign]  # derived from the protocols, not FastAPI's

    for endpoint in all_endpoints():
        app.add_api_route(
            endpoint.route.path,
            make_handler(stack, endpoint),
            methods=[endpoint.route.method],
            include_in_schema=False,
        )

    @app.exception_handler(LlamaStackError)
    async def _known(request: Request, exc: LlamaStackError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFoundError(f"No route {request.method} {request.url.path}; see /openapi.json"))
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}"))
        error = LlamaStackError(str(exc.detail))
        error.status, error.type = exc.status_code, "http_error"  # type: ignore[misc]
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _fastapi_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ValidationError(str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(LlamaStackError("Internal server error; the server log has the details"))

    api_keys = [key.get_secret_value() for key in stack.config.server.api_keys]
    if api_keys:
        app.add_middleware(BearerAuth, api_keys=api_keys)
    return app
