"""The two search APIs: how each is reached, asked and read.

- Brave Search: ``GET {url}/web/search?q=&count=`` with the key in ``X-Subscription-Token``; the hits are
  ``web.results[]`` with ``title``, ``url`` and ``description`` (HTML: ``<strong>`` around matched words).
  An answer without ``web`` has no web hits.
- Tavily: ``POST {url}/search`` with ``{query, max_results}`` and the key as a bearer token; the hits are
  ``results[]`` with ``title``, ``url``, ``content`` and ``score``.

Each engine turns an answer into :class:`Hit` objects plus the vendor's raw hit objects; an answer of
another shape is a :class:`Malformed` (the adapter makes it a 502 naming the provider).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from llama_stack.providers.utils.remote import Vendor

from .config import Engine

BRAVE = Vendor(
    name="Brave Search",
    env_var="BRAVE_API_KEY",
    provider_data_key="brave_api_key",
    # Only the key: every header named here is treated as a credential and scrubbed from what comes back.
    auth_headers=lambda key: {"X-Subscription-Token": key},
)
TAVILY = Vendor(
    name="Tavily",
    env_var="TAVILY_API_KEY",
    provider_data_key="tavily_api_key",
    auth_headers=lambda key: {"Authorization": f"Bearer {key}"},
)
VENDORS: dict[str, Vendor] = {"brave": BRAVE, "tavily": TAVILY}

_TAG = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True)
class Hit:
    title: str
    url: str
    snippet: str


class Malformed(ValueError):
    """The answer is not the engine's documented shape; the message says what was wrong."""


@dataclass(frozen=True)
class Search:
    """One request to an engine: method, path and either query parameters or a JSON body."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None


def search_request(engine: Engine, query: str, count: int) -> Search:
    if engine == "brave":
        return Search("GET", "/web/search", params={"q": query, "count": count})
    return Search("POST", "/search", body={"query": query, "max_results": count})


def read_hits(engine: Engine, answer: Any) -> tuple[list[Hit], list[Any]]:
    """The hits (title, url, plain-text snippet) and the raw hit objects they came from."""
    if not isinstance(answer, dict):
        raise Malformed(f"the answer is {type(answer).__name__}, not a JSON object")
    if engine == "brave":
        web = answer.get("web")
        if web is None:
            return [], []  # Brave leaves out the section when nothing on the web matched
        if not isinstance(web, dict) or not isinstance(web.get("results"), list):
            raise Malformed("web.results is not a list")
        raw, snippet_field = web["results"], "description"
    else:
        if not isinstance(answer.get("results"), list):
            raise Malformed("results is missing or not a list")
        raw, snippet_field = answer["results"], "content"
    hits = [_hit(index, item, snippet_field) for index, item in enumerate(raw)]
    return hits, raw


def _hit(index: int, item: Any, snippet_field: str) -> Hit:
    if not isinstance(item, dict):
        raise Malformed(f"hit {index} is {type(item).__name__}, not an object")
    url, title, snippet = item.get("url"), item.get("title"), item.get(snippet_field)
    if not isinstance(url, str) or not url:
        raise Malformed(f"hit {index} has no url")
    if title is not None and not isinstance(title, str):
        raise Malformed(f"hit {index}'s title is not a string")
    if snippet is not None and not isinstance(snippet, str):
        raise Malformed(f"hit {index}'s {snippet_field} is not a string")
    return Hit(title=plain(title or url), url=url, snippet=plain(snippet or ""))


def plain(text: str) -> str:
    """Text without HTML tags and entities, whitespace collapsed (Brave marks matches with <strong>)."""
    return " ".join(html.unescape(_TAG.sub("", text)).split())
