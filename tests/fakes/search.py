"""Brave Search's and Tavily's search endpoints, answered from a tiny fixed index.

Neither vendor publishes an OpenAPI document, so the two below are written here from their public API
references, with only the fields the provider sends or reads (the fake validates requests and its own
answers against them, as it does for Together and Emissary):

Brave Search (https://api-dashboard.search.brave.com/docs, "Web Search API"):
- ``GET /res/v1/web/search``; the key in the ``X-Subscription-Token`` header; ``q`` (required, at most 400
  characters and 50 words) and ``count`` (1-20, default 20) as query parameters.
- 200: ``WebSearchApiResponse``: ``{"type": "search", "query": {"original"}, "web": {"type": "search",
  "results": [{"type": "search_result", "title", "url", "description", ...}]}}``. ``web`` is left out when
  nothing matched. Descriptions are HTML: matched words come in ``<strong>``.
- errors: ``{"type": "ErrorResponse", "error": {"id", "status", "code", "detail", "meta"}, "time"}``, e.g.
  401 ``SUBSCRIPTION_TOKEN_INVALID``, 422 ``VALIDATION``, 429 ``RATE_LIMITED``.

Tavily (https://docs.tavily.com, "Tavily Search"):
- ``POST /search`` with a JSON body ``{"query" (required), "max_results" (0-20, default 5), "search_depth",
  "topic", "include_answer", ...}``; the key as ``Authorization: Bearer tvly-...`` (older clients send
  ``api_key`` in the body; the fake accepts both).
- 200: ``{"query", "answer"?, "images": [], "results": [{"title", "url", "content", "score",
  "raw_content"?}], "response_time", "request_id"?}``.
- errors: ``{"detail": {"error": "..."}}``, e.g. 401 for a missing or invalid key.

``fake.state["raw_answer"]``, when set, is sent as is (bytes, not validated): for answers of the wrong shape.
"""

from __future__ import annotations

import time
from typing import Any

from .vendor_server import FakeVendor, Recorded

BRAVE_KEY = "brave-test-key-0123456789"
TAVILY_KEY = "tvly-test-key-0123456789"

# The fake's "web": every page whose text holds every word of the query is a hit, in this order.
PAGES = [
    {
        "title": "Llama Stack documentation",
        "url": "https://llama-stack.example/docs",
        "text": "Llama Stack serves inference, agents, memory and safety APIs behind one server.",
    },
    {
        "title": "Llamas &amp; alpacas",
        "url": "https://animals.example/llama",
        "text": "The llama is a domesticated South American camelid, used as a pack animal.",
    },
    {
        "title": "Stack (abstract data type)",
        "url": "https://cs.example/stack",
        "text": "A stack is a collection with push and pop: last in, first out.",
    },
    *(
        {"title": f"Result page {n}", "url": f"https://many.example/{n}", "text": f"many results page {n}"}
        for n in range(1, 31)
    ),
]

_STRING = {"type": "string"}

BRAVE_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Brave Web Search API (the fields llama-stack uses)", "version": "1"},
    "paths": {
        "/web/search": {
            "get": {
                "security": [{"subscriptionToken": []}],
                "parameters": [
                    {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 400}},
                    {"name": "count", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 20}},
                ],
                "responses": {
                    "200": {
                        "description": "WebSearchApiResponse",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebSearch"}}},
                    },
                    "default": {
                        "description": "ErrorResponse",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
        }
    },
    "components": {
        "securitySchemes": {"subscriptionToken": {"type": "apiKey", "in": "header", "name": "X-Subscription-Token"}},
        "schemas": {
            "WebSearch": {
                "type": "object",
                "required": ["type", "query"],
                "properties": {
                    "type": {"const": "search"},
                    "query": {"type": "object", "required": ["original"], "properties": {"original": _STRING}},
                    "web": {
                        "type": "object",
                        "required": ["type", "results"],
                        "properties": {
                            "type": {"const": "search"},
                            "results": {"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}},
                        },
                    },
                },
            },
            "SearchResult": {
                "type": "object",
                "required": ["type", "title", "url"],
                "properties": {
                    "type": {"const": "search_result"},
                    "title": _STRING,
                    "url": _STRING,
                    "description": _STRING,
                    "age": _STRING,
                    "language": _STRING,
                },
            },
            "Error": {
                "type": "object",
                "required": ["type", "error"],
                "properties": {
                    "type": {"const": "ErrorResponse"},
                    "error": {
                        "type": "object",
                        "required": ["status", "code", "detail"],
                        "properties": {
                            "id": _STRING,
                            "status": {"type": "integer"},
                            "code": _STRING,
                            "detail": _STRING,
                        },
                    },
                },
            },
        },
    },
}

TAVILY_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tavily Search (the fields llama-stack uses)", "version": "1"},
    "paths": {
        "/search": {
            "post": {
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["query"],
                                "properties": {
                                    "query": {"type": "string", "minLength": 1},
                                    "max_results": {"type": "integer", "minimum": 0, "maximum": 20},
                                    "search_depth": {"enum": ["basic", "advanced"]},
                                    "topic": {"enum": ["general", "news", "finance"]},
                                    "include_answer": {"type": "boolean"},
                                    "api_key": _STRING,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Search results",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Search"}}},
                    },
                    "default": {
                        "description": "Error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
        }
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Search": {
                "type": "object",
                "required": ["query", "results", "response_time"],
                "properties": {
                    "query": _STRING,
                    "answer": {"type": ["string", "null"]},
                    "images": {"type": "array"},
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["title", "url", "content", "score"],
                            "properties": {
                                "title": _STRING,
                                "url": _STRING,
                                "content": _STRING,
                                "score": {"type": "number"},
                                "raw_content": {"type": ["string", "null"]},
                            },
                        },
                    },
                    "response_time": {"type": "number"},
                    "request_id": _STRING,
                },
            },
            "Error": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "object", "properties": {"error": _STRING}}},
            },
        },
    },
}


def matching(query: str) -> list[dict[str, str]]:
    words = query.lower().split()
    return [page for page in PAGES if all(word in f"{page['title']} {page['text']}".lower() for word in words)]


def _marked(text: str, query: str) -> str:
    """Brave's description: the query's words wrapped in <strong>."""
    for word in set(query.split()):
        text = text.replace(word, f"<strong>{word}</strong>")
    return text


def _brave_error(status: int, message: str) -> dict[str, Any]:
    code = {401: "SUBSCRIPTION_TOKEN_INVALID", 422: "VALIDATION", 429: "RATE_LIMITED"}.get(status, "ERROR")
    return {
        "type": "ErrorResponse",
        "error": {"id": "err-1", "status": status, "code": code, "detail": message, "meta": {}},
        "time": int(time.time()),
    }


def _tavily_error(status: int, message: str) -> dict[str, Any]:
    return {"detail": {"error": message}}


def _bearer_or_body_key(request: Recorded) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    body = request.json if request.body else None
    return body.get("api_key") if isinstance(body, dict) else None


def make_brave_fake() -> FakeVendor:
    fake = FakeVendor(
        "brave",
        BRAVE_SPEC,
        base_path="/res/v1",
        api_key=BRAVE_KEY,
        key_of=lambda request: request.headers.get("x-subscription-token"),
        error_body=_brave_error,
    )

    @fake.route("GET", "/web/search")
    def search(request: Recorded, params: dict[str, str]) -> Any:
        if fake.state.get("raw_answer") is not None:
            return fake.state["raw_answer"]
        query = request.query["q"]
        count = int(request.query.get("count", 20))
        hits = matching(query)[:count]
        answer: dict[str, Any] = {"type": "search", "query": {"original": query}}
        if hits:
            answer["web"] = {
                "type": "search",
                "results": [
                    {
                        "type": "search_result",
                        "title": page["title"],
                        "url": page["url"],
                        "description": _marked(page["text"], query),
                        "language": "en",
                    }
                    for page in hits
                ],
            }
        return answer

    return fake


def make_tavily_fake() -> FakeVendor:
    fake = FakeVendor(
        "tavily", TAVILY_SPEC, base_path="", api_key=TAVILY_KEY, key_of=_bearer_or_body_key, error_body=_tavily_error
    )

    @fake.route("POST", "/search")
    def search(request: Recorded, params: dict[str, str]) -> Any:
        if fake.state.get("raw_answer") is not None:
            return fake.state["raw_answer"]
        body = request.json
        hits = matching(body["query"])[: body.get("max_results", 5)]
        return {
            "query": body["query"],
            "answer": None,
            "images": [],
            "results": [
                {"title": page["title"], "url": page["url"], "content": page["text"], "score": round(0.9 - i / 100, 2)}
                for i, page in enumerate(hits)
            ],
            "response_time": 0.12,
        }

    return fake
