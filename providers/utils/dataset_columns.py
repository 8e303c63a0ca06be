"""What each of a Dataset's column types accepts, and how a CSV cell becomes a value of that type.

``dialog``: a list of messages (the API's ``Message``: ``{role, content}``, with optional tool calls and
responses); ``text``: a string; ``media``: a URL (http(s)://, file://, data:) or an attachment ``{url,
mime_type}``; ``number``: an integer or a finite float (not a boolean); ``json``: any JSON value.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.common import URL, Attachment, Message
from llama_stack.apis.datasets import DatasetColumnType
from llama_stack.apis.errors import BadRequestError
from llama_stack.json_input import MAX_JSON_DEPTH, load_json

_DIALOG = TypeAdapter(list[Message])
_MEDIA = TypeAdapter(URL | Attachment)

EXPECTED: dict[str, str] = {
    "dialog": "a list of messages ({role, content})",
    "text": "a string",
    "media": "a media URL (http(s)://, file:// or data:) or an attachment {url, mime_type}",
    "number": "a number",
    "json": "a JSON value",
}


class CellError(Exception):
    """One value does not fit its column; the message says what was expected (the caller adds row and column)."""


def kind_of(value: Any) -> str:
    """How a value is named in an error: 'a string', 'an object', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _first_error(exc: PydanticValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    message = "field required" if error["type"] == "missing" else error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{path}: {message}" if path else message


def check_value(value: Any, column_type: DatasetColumnType) -> None:
    """Raises :class:`CellError` when ``value`` is not of ``column_type``."""
    expected = EXPECTED[column_type]
    if column_type == "json":
        return
    if column_type == "text":
        if not isinstance(value, str):
            raise CellError(f"expected {expected}, got {kind_of(value)}")
    elif column_type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CellError(f"expected {expected}, got {kind_of(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise CellError(f"expected a finite number, got {value}")
    elif column_type == "dialog":
        if not isinstance(value, list) or not value:
            raise CellError(f"expected {expected}, got {kind_of(value)}")
        try:
            _DIALOG.validate_python(value)
        except PydanticValidationError as exc:
            raise CellError(f"expected {expected}; at {_first_error(exc)}") from None
    elif column_type == "media":
        if not isinstance(value, (str, dict)):
            raise CellError(f"expected {expected}, got {kind_of(value)}")
        try:
            _MEDIA.validate_python(value)
        except PydanticValidationError:
            got = f"{value[:40]!r}" if isinstance(value, str) else "an object that is not {url, mime_type}"
            raise CellError(f"expected {expected}, got {got}") from None


def from_csv_cell(cell: str, column_type: DatasetColumnType) -> Any:
    """A CSV cell as a value of its column: numbers parsed, ``dialog`` and ``json`` read as JSON text, a
    ``media`` cell that holds a JSON object read as an attachment; text as it is."""
    if column_type == "text":
        return cell
    if column_type == "number":
        return _number(cell)
    if column_type == "media":
        return _json_cell(cell, column_type) if cell.lstrip().startswith("{") else cell
    return _json_cell(cell, column_type)


def _number(cell: str) -> int | float:
    text = cell.strip()
    if not text:
        raise CellError("expected a number, got an empty cell")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise CellError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(number):
        raise CellError(f"expected a finite number, got {text[:40]!r}")
    return number


def _json_cell(cell: str, column_type: DatasetColumnType) -> Any:
    if not cell.strip():
        raise CellError(f"expected {EXPECTED[column_type]} as JSON text, got an empty cell")

    try:
        value = load_json(cell, what="the cell's JSON text", max_depth=MAX_JSON_DEPTH)
    except BadRequestError as exc:  # lone UTF-16 surrogate escapes included: load_json refuses them
        raise CellError(exc.message) from None
    return value
