"""Route declarations carried by protocol methods.

A route is declared once, on the protocol method, with :func:`webmethod`. Everything that speaks HTTP
(the server, the OpenAPI document, the HTTP client) and the in-process client read it from there.

How a method's parameters map onto HTTP:

* parameters annotated with a pydantic model or a list are the JSON request body (at most one);
* every other parameter is a query parameter, required unless it has a default.

Two flags shape the answer for routes that follow another API's conventions (the OpenAI-compatible routes):
``stream_end`` is one last ``data:`` frame after a stream's final chunk (``[DONE]``), and
``exclude_none=False`` sends ``null`` fields instead of leaving them out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ROUTE_ATTRIBUTE = "__llama_stack_route__"


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    # When true, the method answers as server-sent events if the request body's `stream` field is true,
    # and its return annotation is `Response | AsyncIterator[Chunk]`.
    streams: bool = False
    # "jsonl": the method returns a list that is answered as one JSON document per line.
    response_format: Literal["json", "jsonl"] = "json"
    # A final `data: <stream_end>` frame after the last chunk of a stream that ended normally (e.g. "[DONE]").
    stream_end: str | None = None
    # False: fields that are None are answered as null rather than left out.
    exclude_none: bool = True


def webmethod(
    method: Literal["GET", "POST", "PUT", "DELETE"],
    path: str,
    *,
    streams: bool = False,
    response_format: Literal["json", "jsonl"] = "json",
    stream_end: str | None = None,
    exclude_none: bool = True,
) -> Callable[[F], F]:
    """Declare the HTTP route of a protocol method."""
    if stream_end is not None and not streams:
        raise ValueError(f"{path}: stream_end is only meaningful on a streaming route")

    def mark(fn: F) -> F:
        setattr(fn, ROUTE_ATTRIBUTE, Route(method, path, streams, response_format, stream_end, exclude_none))
        return fn

    return mark


def route_of(fn: Callable[..., Any]) -> Route | None:
    return getattr(fn, ROUTE_ATTRIBUTE, None)
