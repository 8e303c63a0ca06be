"""Structured output: the JSON schema a request's ``response_format`` asks for, and checking an answer."""

from __future__ import annotations

import json
import re
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


# -- llama.cpp grammars ------------------------------------------------------------------------------------

# One character inside a JSON string, as llama.cpp's own grammars/json.gbnf writes it: anything but a quote,
# a backslash or a control character, or an escape. The converter that ships with llama-cpp-python says
# ``[^"\\]`` and so lets a raw newline or U+0001 into a string, which no JSON parser accepts.
_JSON_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'

# Keywords that constrain a value but that llama-cpp-python's converter passes over in silence: a grammar
# built without them lets the model write JSON the schema rejects.
_UNENFORCED_KEYWORDS = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "uniqueItems", "contains", "minContains", "maxContains", "additionalItems", "unevaluatedItems",
    "minProperties", "maxProperties", "patternProperties", "propertyNames", "unevaluatedProperties",
    "dependentRequired", "dependentSchemas", "dependencies",
    "not", "if", "then", "else",
)  # fmt: skip
# The most repetitions a count (an array's items, a string's characters, a pattern's {m,n}) may ask for.
MAX_GRAMMAR_REPETITIONS = 1000
_COUNT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_PATTERN_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_VALUES = ("items", "additionalProperties")

# Characters a JSON string cannot hold raw, and the escape letter of those that have a short escape.
_UNSAFE_RANGES = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F))
_SHORT_ESCAPES = {0x22: '"', 0x5C: "\\", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_GBNF_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def llama_cpp_json_grammar(schema: dict[str, Any], *, strict: bool = True) -> str:
    """llama.cpp grammar (GBNF) text for JSON matching ``schema``, built with llama-cpp-python's converter.

    Unlike the converter's own output, every JSON string it admits is valid JSON: no raw control
    characters, quotes or backslashes inside strings, whether a string comes from ``type: string``, an
    object's keys (``json_object``), a ``pattern`` (its ``.`` and character classes keep to what a JSON
    string may hold raw, plus the short escapes; its literals are written JSON-escaped) or an ``enum``.
    ``strict`` refuses keywords the converter does not enforce (``minimum``, ``uniqueItems``, ``not``, ...)
    rather than let the model break them. Raises ``ValueError`` (or the converter's ``AssertionError``)
    naming what cannot be expressed.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    _check_repetition_counts(schema, "#")
    if strict:
        _check_enforceable(schema, "#")

    class JsonSafeConverter(SchemaConverter):
        _pattern_depth = 0

        def _format_literal(self, literal: str) -> str:
            # The converter leaves backslashes unescaped: an enum value or key with one came out garbled.
            return _gbnf_literal(literal)

        def _add_primitive(self, name: str, rule: Any) -> str:
            if name == "char":
                rule = type(rule)(_JSON_CHAR_RULE, [])
            return super()._add_primitive(name, rule)

        def _visit_pattern(self, pattern: str, name: str) -> str:
            self._pattern_depth += 1
            try:
                return super()._visit_pattern(pattern, name)
            finally:
                self._pattern_depth -= 1

        def _add_rule(self, name: str, rule: str) -> str:
            if self._pattern_depth:
                rule = _json_safe_pattern_rule(rule)
            return super()._add_rule(name, rule)

    converter = JsonSafeConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(schema, "input")
    converter.visit(resolved, "")
    return converter.format_grammar()


def _check_repetition_counts(schema: Any, path: str) -> None:
    """Counts the converter would write out one repetition at a time (``maxItems: 1e9``, ``a{1,1000000000}``) are
    refused before it runs: it would build the grammar text on the event loop, and llama.cpp's parser recurses
    once per repetition."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            _check_repetition_counts(item, f"{path}/{index}")
        return
    if not isinstance(schema, dict):
        return
    for keyword in _COUNT_KEYWORDS:
        value = schema.get(keyword)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_GRAMMAR_REPETITIONS:
            raise ValueError(
                f"{path}: {keyword} {value} is more than llama.cpp's grammar can count ({MAX_GRAMMAR_REPETITIONS} at most)"
            )
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for match in _PATTERN_COUNT.finditer(pattern):
            if any(int(n) > MAX_GRAMMAR_REPETITIONS for n in match.groups() if n):
                raise ValueError(
                    f"{path}: the pattern's count {match.group(0)} is more than llama.cpp's grammar can count "
                    f"({MAX_GRAMMAR_REPETITIONS} at most)"
                )
    for key, value in schema.items():
        if isinstance(value, (dict, list)) and key not in ("enum", "const", "examples", "default"):
            _check_repetition_counts(value, f"{path}/{key}")


def _check_enforceable(schema: Any, path: str) -> None:
    if not isinstance(schema, dict):
        return
    for keyword in _UNENFORCED_KEYWORDS:
        if keyword in schema:
            raise ValueError(f"{path}: {keyword!r} is not enforced by llama.cpp's JSON schema grammar; leave it out")
    if "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
        raise ValueError(
            f"{path}: minLength/maxLength beside a pattern are not enforced by llama.cpp's grammar; put the length in the pattern"
        )
    properties = schema.get("properties")
    if isinstance(properties, dict) and isinstance(schema.get("required"), list):
        missing = [name for name in schema["required"] if name not in properties]
        if missing:
            raise ValueError(
                f"{path}: required {missing} are not among the properties, and llama.cpp's grammar writes only those"
            )
    for key in _SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key) or []):
            _check_enforceable(sub, f"{path}/{key}/{index}")
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                _check_enforceable(sub, f"{path}/{key}/{name}")
    for key in _SCHEMA_VALUES:
        value = schema.get(key)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                _check_enforceable(sub, f"{path}/{key}/{index}")
        else:
            _check_enforceable(value, f"{path}/{key}")


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n") + '"'


def _gbnf_char(code: int) -> str:
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _read_gbnf_char(text: str, at: int) -> tuple[int, int] | None:
    """The code point of the (possibly escaped) character at ``at`` and where the next begins; None for an
    escape llama.cpp does not know (the grammar is refused when llama.cpp parses it)."""
    if text[at] != "\\":
        return ord(text[at]), at + 1
    if at + 1 >= len(text):
        return None
    letter = text[at + 1]
    if letter in _GBNF_ESCAPES:
        return ord(_GBNF_ESCAPES[letter]), at + 2
    digits = _HEX_DIGITS.get(letter)
    if digits is None:
        return None
    hex_part = text[at + 2 : at + 2 + digits]
    try:
        return int(hex_part, 16), at + 2 + digits
    except ValueError:
        return None


def _subtract_unsafe(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    for low_cut, high_cut in _UNSAFE_RANGES:
        kept = []
        for low, high in ranges:
            if high < low_cut or low > high_cut:
                kept.append((low, high))
                continue
            if low < low_cut:
                kept.append((low, low_cut - 1))
            if high > high_cut:
                kept.append((high_cut + 1, high))
        ranges = kept
    return ranges


def _json_safe_class(body: str) -> str | None:
    """A GBNF character class (``[...]`` text, brackets included) limited to what a JSON string may hold
    raw, with the short escapes (``\\"``, ``\\n``, ...) of the excluded characters it admitted as an
    alternative. None when the class uses an escape llama.cpp does not know."""
    negated = body.startswith("[^")
    at, end = (2 if negated else 1), len(body) - 1
    ranges: list[tuple[int, int]] = []
    while at < end:
        first = _read_gbnf_char(body, at)
        if first is None:
            return None
        low, at = first
        high = low
        if at + 1 < end and body[at] == "-":
            second = _read_gbnf_char(body, at + 1)
            if second is None:
                return None
            high, at = second
        ranges.append((low, high))

    def admitted(code: int) -> bool:
        return any(low <= code <= high for low, high in ranges) != negated

    escapes = "".join(letter for code, letter in _SHORT_ESCAPES.items() if admitted(code))
    if negated:
        items = [*ranges, *_UNSAFE_RANGES]
        safe = "[^" + "".join(_gbnf_char(lo) + (f"-{_gbnf_char(hi)}" if hi != lo else "") for lo, hi in items) + "]"
    else:
        kept = _subtract_unsafe(ranges) or [(0x110000, 0x110000)]  # nothing raw: a class that matches nothing
        if kept == [(0x110000, 0x110000)]:
            safe = ""
        else:
            safe = "[" + "".join(_gbnf_char(lo) + (f"-{_gbnf_char(hi)}" if hi != lo else "") for lo, hi in kept) + "]"
    escaped = (
        '"\\\\" [' + "".join("\\\\" if e == "\\" else '\\"' if e == '"' else e for e in escapes) + "]"
        if escapes
        else ""
    )
    parts = [p for p in (safe, escaped) if p]
    if not parts:
        return "[^\\x00-\\U0010FFFF]"
    return parts[0] if len(parts) == 1 else f"({' | '.join(parts)})"


def _json_safe_literal(body: str) -> str | None:
    """A GBNF string literal (quotes included) rewritten to emit its text JSON-escaped."""
    chars, at = [], 1
    while at < len(body) - 1:
        read = _read_gbnf_char(body, at)
        if read is None:
            return None
        code, at = read
        chars.append(chr(code))
    return _gbnf_literal(json.dumps("".join(chars), ensure_ascii=False)[1:-1])


def _json_safe_pattern_rule(rule: str) -> str:
    """A rule the converter made from a ``pattern``, its classes and literals kept to valid JSON string text.

    The whole pattern's rule is ``"\\"" <body> "\\"" space``: its enclosing quotes stay as they are.
    """
    head, tail = '"\\"" ', ' "\\"" space'
    if rule.startswith(head) and rule.endswith(tail):
        return head + _json_safe_pattern_rule(rule[len(head) : -len(tail)]) + tail
    out, at = [], 0
    while at < len(rule):
        char = rule[at]
        if char not in '"[':
            out.append(char)
            at += 1
            continue
        close = '"' if char == '"' else "]"
        end = at + 1
        while end < len(rule) and rule[end] != close:
            end += 2 if rule[end] == "\\" else 1
        token = rule[at : end + 1]
        rewritten = _json_safe_literal(token) if char == '"' else _json_safe_class(token)
        out.append(token if rewritten is None else rewritten)
        at = end + 1
    return "".join(out)
