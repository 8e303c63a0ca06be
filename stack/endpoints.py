"""Endpoints derived from the protocols' route declarations: the one source for server, OpenAPI and clients."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import operator
import re
import types
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.errors import BadRequestError, ValidationError
from llama_stack.apis.inspect import Inspect
from llama_stack.apis.openai import OpenAI
from llama_stack.apis.registry import PROTOCOLS, Api
from llama_stack.apis.routes import Route, route_of

from .json_input import load_json
from .openai_compat import OpenAICompat

if TYPE_CHECKING:
    from .resolver import Stack

# Routes served without an API key, whatever the server's api_keys.
PUBLIC_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class Facade:
    """A protocol the stack serves itself by translating onto an API it serves (e.g. OpenAI onto inference).

    Its routes answer 404 naming the served APIs when the distribution does not serve ``api``.
    """

    name: str  # the OpenAPI tag and the client attribute
    protocol: type
    api: Api
    build: Callable[[Any], Any]  # the API's implementation -> the protocol's implementation


FACADES: tuple[Facade, ...] = (Facade("openai", OpenAI, Api.inference, OpenAICompat),)


@dataclass(frozen=True)
class QueryParam:
    name: str
    adapter: TypeAdapter[Any]
    required: bool
    default: Any
    location: str = "query"  # or "path": a segment of the route's path, ``{name}`` (``{name:path}`` may hold slashes)


# A path parameter in a route's path: {name}, or {name:converter} as Starlette writes it.
_PATH_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def openapi_path(path: str) -> str:
    """A route's path as OpenAPI writes it: ``{name}`` without Starlette's ``:converter``."""
    return _PATH_PARAM.sub(r"{\1}", path)


@dataclass(frozen=True)
class Endpoint:
    api: Api | None  # None: the stack's own inspection routes
    name: str
    route: Route
    summary: str
    query: tuple[QueryParam, ...]
    body_name: str | None
    body_adapter: TypeAdapter[Any] | None
    # What a JSON answer holds; for jsonl answers, the type of one line. None: no content.
    response_adapter: TypeAdapter[Any] | None
    chunk_adapter: TypeAdapter[Any] | None  # one SSE frame, for streaming methods
    facade: Facade | None = None  # set for the routes of a protocol the stack translates onto `api`

    @property
    def group(self) -> str:
        """The OpenAPI tag: "inspect", the API's name, or the facade's."""
        if self.facade is not None:
            return self.facade.name
        return self.api.value if self.api is not None else "inspect"

    def implementation(self, stack: Stack) -> Any:
        """The object whose method ``name`` serves this endpoint (a 404 when its API is not served)."""
        if self.api is None:
            return stack
        impl = stack.impl(self.api)
        if self.facade is None:
            return impl
        # Built once per started stack, not per request.
        facade = stack.facade_impls.get(self.facade.name)
        if facade is None:
            facade = stack.facade_impls[self.facade.name] = self.facade.build(impl)
        return facade

    def url_path(self, values: typing.Mapping[str, Any]) -> str:
        """The route's path with its path parameters filled in, percent-encoded (slashes kept for ``:path``)."""

        def fill(match: re.Match[str]) -> str:
            return urllib.parse.quote(str(values[match.group(1)]), safe="/" if match.group(2) == "path" else "")

        return _PATH_PARAM.sub(fill, self.route.path)

    @property
    def param_names(self) -> list[str]:
        return [q.name for q in self.query] + ([self.body_name] if self.body_name else [])

    def bind(self, query: typing.Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Validate query values and a decoded body into the method's keyword arguments."""
        kwargs: dict[str, Any] = {}
        details: list[dict[str, Any]] = []
        for param in self.query:
            if param.name not in query or query[param.name] is None:
                if param.required:
                    details.append(
                        {
                            "loc": param.name,
                            "in": param.location,
                            "message": f"required {param.location} parameter is missing",
                        }
                    )
                else:
                    kwargs[param.name] = param.default
                continue
            try:
                kwargs[param.name] = param.adapter.validate_python(query[param.name])
            except PydanticValidationError as exc:
                details.extend(_details(exc, param.name, param.location))
        if self.body_adapter is not None and self.body_name is not None:
            try:
                kwargs[self.body_name] = self.body_adapter.validate_python(body)
            except PydanticValidationError as exc:
                details.extend(_details(exc, "", "body"))
        if details:
            first = details[0]
            where = f"{first['in']} {first['loc']}" if first["loc"] else first["in"]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            raise ValidationError(f"Invalid request: {where}: {first['message']}{more}", details=details)
        return kwargs

    def decode_body(self, raw: bytes) -> Any:
        """The parsed body: a 400 when it is missing, not JSON, nested too deeply or holds a non-finite number."""
        if not raw.strip():
            raise BadRequestError(f"{self.route.method} {self.route.path} needs a JSON request body")
        return load_json(raw)


def _details(exc: PydanticValidationError, prefix: str, where: str) -> list[dict[str, Any]]:
    details = []
    for error in exc.errors(include_url=False):
        loc = prefix
        for part in error["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "field required"
        elif error["type"] == "extra_forbidden":
            message = "unknown field"
        detail = {"loc": loc, "in": where, "message": message}
        got = error.get("input")
        if error["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            # A non-finite float (from a query string, or an in-process caller) cannot be written as JSON.
            detail["got"] = got if not isinstance(got, float) or math.isfinite(got) else str(got)
        details.append(detail)
    return details


def _is_body(annotation: Any) -> bool:
    origin = get_origin(annotation) or annotation
    return origin in (list, dict) or (inspect.isclass(origin) and issubclass(origin, BaseModel))


def _split_return(annotation: Any) -> tuple[Any, Any]:
    """``X | AsyncIterator[Y]`` -> (X, Y); ``X`` -> (X, None)."""
    members = get_args(annotation) if get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    plain, chunk = [], None
    for member in members:
        if get_origin(member) in (collections.abc.AsyncIterator, collections.abc.AsyncGenerator):
            chunk = get_args(member)[0]
        else:
            plain.append(member)
    response = functools.reduce(operator.or_, plain)
    return response, chunk


def _endpoint(api: Api | None, name: str, method: Any, route: Route, facade: Facade | None = None) -> Endpoint:
    hints = typing.get_type_hints(method, include_extras=True)  # Annotated constraints of query parameters count
    signature = inspect.signature(method)
    query: list[QueryParam] = []
    body_name, body_adapter = None, None
    for param in list(signature.parameters.values())[1:]:
        annotation = hints[param.name]
        if route.method == "POST" and _is_body(annotation):
            if body_name is not None:
                raise TypeError(f"{method.__qualname__}: more than one body parameter")
            body_name, body_adapter = param.name, TypeAdapter(annotation)
        else:
            required = param.default is inspect.Parameter.empty
            location = "path" if param.name in {m.group(1) for m in _PATH_PARAM.finditer(route.path)} else "query"
            query.append(
                QueryParam(param.name, TypeAdapter(annotation), required, None if required else param.default, location)
            )
    response, chunk = _split_return(hints.get("return", type(None)))
    if route.response_format == "jsonl":
        response = get_args(response)[0]
    return Endpoint(
        api=api,
        name=name,
        route=route,
        summary=(inspect.getdoc(method) or "").split("\n\n")[0],
        query=tuple(query),
        body_name=body_name,
        body_adapter=body_adapter,
        response_adapter=None if response is type(None) else TypeAdapter(response),
        chunk_adapter=TypeAdapter(chunk) if chunk is not None else None,
        facade=facade,
    )


@cache
def endpoints_of(protocol: type, api: Api | None, facade: Facade | None = None) -> tuple[Endpoint, ...]:
    found = []
    for name, member in inspect.getmembers(protocol, inspect.isfunction):
        route = route_of(member)
        if route is not None:
            found.append(_endpoint(api, name, member, route, facade))
    return tuple(found)


def facade_endpoints(facade: Facade) -> tuple[Endpoint, ...]:
    return endpoints_of(facade.protocol, facade.api, facade)


def all_endpoints() -> list[Endpoint]:
    endpoints = list(endpoints_of(Inspect, None))
    for api, protocol in PROTOCOLS.items():
        endpoints.extend(endpoints_of(protocol, api))
    for facade in FACADES:
        endpoints.extend(facade_endpoints(facade))
    return endpoints
