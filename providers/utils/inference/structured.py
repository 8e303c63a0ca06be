"""Structured output: the JSON schema a request's ``response_format`` asks for, and checking an answer."""

from __future__ import annotations

import json
from typing import Any

from llama_stack.apis.inference import ResponseFormat

# type json_object: any JSON object.
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def json_schema_for(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The schema generation must follow: None for plain text, a generic object schema for json_object."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    return dict(response_format.json_schema or {})


def check_json(text: str, schema: dict[str, Any] | None) -> Any:
    """Parse ``text`` as JSON and validate it against ``schema``; raise ValueError saying what is wrong.

    Validation uses the ``jsonschema`` package (installed with the test extras); without it only the
    parse and, for an object schema, the top-level type are checked.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not schema:
        return value
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with the test extras
        if schema.get("type") == "object" and not isinstance(value, dict):
            raise ValueError("not a JSON object") from None
        return value
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"does not match the schema at {path}: {exc.message}") from None
    return value
