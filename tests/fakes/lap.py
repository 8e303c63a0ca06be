"""Reads the request fields of Together's compact endpoint list (``together-endpoints.lap``).

Only what validating a request needs: for each ``@endpoint METHOD /path``, the top-level field names of
``@required {...}`` and ``@optional {...}`` and their basic types (``str``, ``int``, ``num``, ``bool``,
``[...]``, ``map``, ``any``), with ``str(a/b)`` enumerations. Descriptions (after ``#``) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELD_START = re.compile(r",\s+([A-Za-z_][\w]*!?):\s")


@dataclass
class LapField:
    name: str
    type: str  # the type text, e.g. "str", "int(int32)", "[str]", "map{...}", "str(truncate/error)=error"
    required: bool

    def check(self, value: Any) -> str | None:
        """None when ``value`` fits the declared type, else what is wrong."""
        text = self.type.split("=")[0].strip().rstrip("?")
        if text.startswith("["):
            return None if isinstance(value, list) else f"expected an array, got {type(value).__name__}"
        base = re.match(r"[a-z]+", text)
        kind = base.group(0) if base else "any"
        if kind == "str":
            if not isinstance(value, str):
                return f"expected a string, got {type(value).__name__}"
            choices = re.fullmatch(r"str\(([^()]*/[^()]*)\)", text)
            if choices and value not in choices.group(1).split("/"):
                return f"expected one of {choices.group(1).split('/')}, got {value!r}"
        elif kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            return f"expected an integer, got {value!r}"
        elif kind == "num" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"expected a number, got {value!r}"
        elif kind == "bool" and not isinstance(value, bool):
            return f"expected a boolean, got {value!r}"
        elif kind == "map" and not isinstance(value, dict):
            return f"expected an object, got {type(value).__name__}"
        return None


@dataclass
class LapEndpoint:
    method: str
    path: str
    fields: dict[str, LapField] = field(default_factory=dict)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{[^/]+\}", r"[^/]+", self.path) + "$")


def _top_level(block: str) -> list[str]:
    """Split ``{a: t # desc, b: t}``'s inside into field texts, minding nesting and descriptions."""
    parts, depth, start, in_desc = [], 0, 0, False
    i = 0
    while i < len(block):
        char = block[i]
        if in_desc:
            match = FIELD_START.match(block, i) if char == "," else None
            if match:
                parts.append(block[start:i])
                start, in_desc = i + 1, False
            i += 1
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        elif char == "#" and depth == 0:
            in_desc = True
        elif char == "," and depth == 0:
            parts.append(block[start:i])
            start = i + 1
        i += 1
    parts.append(block[start:])
    return [p.strip() for p in parts if p.strip()]


def _fields(line: str, required: bool) -> dict[str, LapField]:
    inside = line[line.index("{") + 1 : line.rindex("}")]
    found = {}
    for part in _top_level(inside):
        text = part.split(" #", 1)[0].strip()
        name, _, type_text = text.partition(":")
        name = name.strip().rstrip("!")
        found[name] = LapField(name, type_text.strip(), required)
    return found


def load_lap(path: Path) -> list[LapEndpoint]:
    endpoints: list[LapEndpoint] = []
    for line in path.read_text().splitlines():
        if line.startswith("@endpoint "):
            method, route = line.split()[1:3]
            endpoints.append(LapEndpoint(method, route))
        elif endpoints and line.startswith("@required {"):
            endpoints[-1].fields.update(_fields(line, True))
        elif endpoints and line.startswith("@optional {"):
            endpoints[-1].fields.update(_fields(line, False))
    return endpoints


def find_endpoint(endpoints: list[LapEndpoint], method: str, path: str) -> LapEndpoint | None:
    # Literal segments win over parameters (/fine-tunes/models/limits before /fine-tunes/{id}).
    matches = [e for e in endpoints if e.method == method and e.pattern.match(path)]
    matches.sort(key=lambda e: e.path.count("{"))
    return matches[0] if matches else None


def check_request(endpoint: LapEndpoint, path_params: set[str], values: dict[str, Any]) -> list[str]:
    """Problems with a request's fields (query and JSON body together) against the endpoint's declaration."""
    problems = []
    for name, declared in endpoint.fields.items():
        if name in path_params:
            continue
        if name not in values:
            if declared.required:
                problems.append(f"{name}: required by {endpoint.method} {endpoint.path}")
            continue
        wrong = declared.check(values[name])
        if wrong:
            problems.append(f"{name}: {wrong}")
    for name in values:
        if name not in endpoint.fields:
            problems.append(f"{name}: not a field of {endpoint.method} {endpoint.path}")
    return problems
