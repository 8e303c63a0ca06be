"""JSON from clients, bounded before it is parsed: a nesting limit, finite numbers only.

Python's parser recurses once per level of nesting, and so do pydantic and every walk over the parsed
value afterwards; a body nested a thousand levels deep fails with a ``RecursionError`` somewhere in
between. The depth is therefore measured on the raw text first, brackets inside strings not counted,
and a document deeper than the limit is refused before anything recurses over it.

A ``\\uD800``-style escape standing alone (half of a UTF-16 pair) parses into a string that cannot be written
as UTF-8 again: storing or echoing it fails far from here. Such a string is refused, naming where it was.

JSON has no NaN or Infinity, yet Python's parser accepts the literals (``NaN``, ``Infinity``,
``-Infinity``) and turns a number too large for a float (``1e400``) into infinity. Such a number is
refused too, naming where it was: nothing downstream expects one, and it cannot be written back as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from llama_stack.apis.errors import BadRequestError

# Deep enough for any request this server takes (a JSON Schema nested some thirty levels inside a body),
# shallow enough that the code walking a parsed value recursively never nears Python's recursion limit.
MAX_JSON_DEPTH = 64

# A \uD800-\uDFFF escape: only then can a parsed string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (0 for a scalar), without parsing it."""
    # Without its escaped backslashes and quotes, every other quote opens a string and the next one closes
    # it: what lies between is text, whatever brackets it holds. (bytes methods: fast on large bodies.)
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    brackets = outside_strings.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


class _NonFinite:
    """Stands in for a number that is not finite while the document is parsed, so its place can be named."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def load_json(
    raw: bytes | str,
    *,
    what: str = "The request body",
    max_depth: int = MAX_JSON_DEPTH,
    error: Callable[[str, str | None], BadRequestError] | None = None,
) -> Any:
    """``raw`` parsed, or a 400: not JSON, nested deeper than ``max_depth``, or holding a number that is
    not finite (named by its path). ``what`` says in messages what was parsed; ``error``
    builds the exception from a message and the path at fault, when there is one (the message then does
    not name it); the default is a ``BadRequestError`` naming the path."""
    make_error = error or _bad_request
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = nesting_depth(data)
    if depth > max_depth:
        raise make_error(f"{what} nests arrays and objects {depth} levels deep; at most {max_depth} are accepted", None)
    found: list[_NonFinite] = []

    def non_finite(text: str) -> _NonFinite:
        found.append(_NonFinite(text))
        return found[-1]

    def finite_float(text: str) -> float | _NonFinite:
        value = float(text)
        return value if math.isfinite(value) else non_finite(text)

    try:
        value = json.loads(data, parse_constant=non_finite, parse_float=finite_float)
    except json.JSONDecodeError as exc:
        raise make_error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", None) from None
    except UnicodeDecodeError as exc:
        raise make_error(f"{what} is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})", None) from None
    except ValueError:  # an integer with more digits than Python converts (sys.get_int_max_str_digits())
        raise make_error(f"{what} holds an integer with more digits than this server reads", None) from None
    if found:
        path = _path_of(value, found[0], "") or None
        kind = (
            "not a number JSON allows"
            if found[0].text in ("NaN", "Infinity", "-Infinity")
            else "too large for a 64-bit float"
        )
        if path is None:
            raise make_error(f"{what} is {found[0].text}, {kind}", None)
        raise make_error(f"{found[0].text} is {kind}; send a finite number", path)
    if _SURROGATE_ESCAPE.search(data):
        lone = _lone_surrogate_path(value, "")
        if lone is not None:
            message = "a \\u escape names half of a UTF-16 surrogate pair, which is no character; send valid Unicode"
            raise make_error(f"{what}: {message}" if not lone else message, lone or None)
    return value


def _bad_request(message: str, param: str | None) -> BadRequestError:
    if param is None:
        return BadRequestError(message)
    return BadRequestError(
        f"{param}: {message}", param=param, details=[{"loc": param, "in": "body", "message": message}]
    )


def _path_of(value: Any, target: _NonFinite, where: str) -> str | None:
    """The path of ``target`` within ``value`` (``a.b[2]``); the nesting is bounded, so recursion is safe."""
    if value is target:
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        step = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        found = _path_of(item, target, step)
        if found is not None:
            return found
    return None


def _lone_surrogate_path(value: Any, where: str) -> str | None:
    """The path of the first string (value or key) in ``value`` that is not valid Unicode; None if there is none."""
    if isinstance(value, str):
        return None if _is_unicode(value) else where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        step = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and not _is_unicode(key):
            return where
        found = _lone_surrogate_path(item, step)
        if found is not None:
            return found
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
