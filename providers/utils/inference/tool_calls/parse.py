"""Reading tool calls out of a model's answer, whole or as it grows.

Parsing is lenient about the wrapping models add (a ```json fence, ``<tool_call>...</tool_call>``,
``parameters`` for ``arguments``, a JSON list of calls) and strict about the calls themselves: a call
that is not valid JSON, names a tool that was not offered, or has arguments that are not an object stays
in the answer as text. Nothing here raises on model output.

:class:`AnswerSplitter` is the one machine: text that may start a call is held back until it is known to
be one or not, so it reads a streamed answer piece by piece (:mod:`.stream` builds the stream's chunks on
it) and :func:`parse_tool_calls` reads a whole answer with it, so that a streamed answer and a
non-streamed one agree.

Interface (stable; other providers use it):

- ``parse_tool_calls(text, fmt, tools) -> (text, [ToolCall])``; every call gets a fresh id (``new_call_id``).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from llama_stack.apis.common import BuiltinTool, ToolCall, ToolDefinition

from .formats import BUILTIN_BY_LLAMA_NAME, PYTHON_TAG, ToolFormat, new_call_id, tool_name

__all__ = ["AnswerSplitter", "CallReader", "parse_tool_calls"]

_PYTHON_TAG_ENDS = ("<|eom_id|>", "<|eot_id|>")
_TAG_OPEN, _TAG_CLOSE = "<tool_call>", "</tool_call>"
_FENCE = "```"
_FENCE_OPEN = re.compile(r"```[ \t]*(?:json)?[ \t]*\n")
_CALL_KEYS = ("name", "type", "function")
_CALL_FIELDS = {"name", "arguments", "parameters", "type", "id"}
_NEED_MORE = None


def _json_end(text: str, start: int) -> int | None:
    """The index just past the JSON object or array opening at ``text[start]``, or None if it is not closed."""
    depth = 0
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


class CallReader:
    """Turns candidate text into (tool name, arguments) pairs, or None when it is not a valid call."""

    def __init__(self, fmt: ToolFormat, tools: list[ToolDefinition]):
        self.fmt = fmt
        self.names = {tool_name(t) for t in tools}

    def call_from_object(self, value: Any) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(value, dict):
            return None
        if isinstance(value.get("function"), dict) and set(value) <= {"type", "function", "id"}:
            value = value["function"]
        if not set(value) <= _CALL_FIELDS or not isinstance(value.get("name"), str):
            return None
        name = value["name"]
        if name not in self.names and BUILTIN_BY_LLAMA_NAME.get(name) in self.names:
            name = BUILTIN_BY_LLAMA_NAME[name]
        if name not in self.names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return name, arguments

    def calls_from_json(self, text: str) -> list[tuple[str, dict[str, Any]]] | None:
        try:
            value = json.loads(text)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls: list[tuple[str, dict[str, Any]]] = []
        for item in items:
            call = self.call_from_object(item)
            if call is None:  # one item that is not a call: the text is not a list of calls
                return None
            calls.append(call)
        return calls or None

    def calls_from_json_sequence(self, text: str) -> list[tuple[str, dict[str, Any]]] | None:
        """One or more JSON calls separated by whitespace or semicolons."""
        calls: list[tuple[str, dict[str, Any]]] = []
        index = 0
        while True:
            while index < len(text) and (text[index].isspace() or text[index] == ";"):
                index += 1
            if index == len(text):
                return calls or None
            if text[index] not in "{[":
                return None
            end = _json_end(text, index)
            if end is None:
                return None
            found = self.calls_from_json(text[index:end])
            if found is None:
                return None
            calls.extend(found)
            index = end

    def calls_from_python_tag(self, body: str) -> list[tuple[str, dict[str, Any]]] | None:
        body = body.strip()
        if not body:
            return None
        calls = self.calls_from_json_sequence(body)
        if calls is not None:
            return calls
        calls = self._builtin_calls(body)
        if calls is not None:
            return calls
        if BuiltinTool.code_interpreter.value in self.names:
            return [(BuiltinTool.code_interpreter.value, {"code": body})]
        return None

    def _builtin_calls(self, body: str) -> list[tuple[str, dict[str, Any]]] | None:
        try:
            tree = ast.parse(body, mode="exec")
        except (SyntaxError, ValueError):
            return None
        calls = []
        for statement in tree.body:
            node = statement.value if isinstance(statement, ast.Expr) else None
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "call"
                and isinstance(node.func.value, ast.Name)
                and not node.args
            ):
                return None
            name = BUILTIN_BY_LLAMA_NAME.get(node.func.value.id, node.func.value.id)
            if name not in self.names:
                return None
            arguments = {}
            for keyword in node.keywords:
                if keyword.arg is None:
                    return None
                try:
                    arguments[keyword.arg] = ast.literal_eval(keyword.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    return None
            calls.append((name, arguments))
        return calls or None


def _line_start_after(previous: bool, text: str) -> bool:
    """Whether a position follows only spaces since a line start, after ``text`` (starting in state ``previous``)."""
    newline = text.rfind("\n")
    rest = text[newline + 1 :] if newline >= 0 else text
    starts = previous if newline < 0 else True
    return starts and rest.strip(" \t") == ""


class AnswerSplitter:
    """Splits a model's answer, fed piece by piece, into text and tool calls.

    Plain text passes through at once. Text that may start a tool call (``{`` or ``[`` at a line start,
    a ```` ``` ```` fence, ``<tool_call>``, ``<|python_tag|>`` in the llama3 format, ``{"name"`` anywhere) is
    held back until it is known to be a call (given back as a :class:`ToolCall` with a fresh id) or not
    (given back as text). Whitespace between text and a call, between calls and after the last call is
    dropped; other whitespace is only held until more text arrives.
    """

    def __init__(self, fmt: ToolFormat, tools: list[ToolDefinition]):
        self._fmt = fmt
        self._reader = CallReader(fmt, tools)
        self._pending = ""
        self._line_start = True  # the start of the answer counts as a line start
        self._after_call = False

    def split(self, text_delta: str, final: bool) -> list[str | ToolCall]:
        """What the answer so far settles, in order: text (consecutive text joined, never empty) and calls.

        ``final`` says the answer has ended: what is still held back is settled, as text when not a call.
        """
        self._pending += text_delta
        pieces: list[str | ToolCall] = []
        text: list[str] = []

        def flush() -> None:
            joined = "".join(text)
            text.clear()
            if joined:
                pieces.append(joined)

        while True:
            s = self._pending
            if not s:
                break
            index = self._find_candidate(s)
            if index is None:
                emit = s if final else s.rstrip()
                if self._after_call and not emit.strip():
                    emit = ""  # whitespace after a call, up to the end or to the next call, is dropped
                    if final:
                        s = ""
                if emit:
                    text.append(emit)
                    self._after_call = False
                    self._line_start = _line_start_after(self._line_start, emit)
                self._pending = s[len(emit) :]
                break
            before = s[:index]
            body = before.rstrip()
            line_start = _line_start_after(self._line_start, before)
            decided = self._decide(s[index:], final, line_start)
            if decided is _NEED_MORE:
                if body:
                    text.append(body)
                    self._after_call = False
                    self._line_start = _line_start_after(self._line_start, body)
                self._pending = s[len(body) :]
                break
            consumed, calls, as_text = decided
            if calls is not None:
                if body:
                    text.append(body)
                flush()
                for name, arguments in calls:
                    pieces.append(ToolCall(tool_name=name, arguments=arguments, call_id=new_call_id()))
                self._after_call = True
                self._line_start = True
            else:
                emitted = before + as_text
                text.append(emitted)
                if emitted.strip():
                    self._after_call = False
                self._line_start = _line_start_after(self._line_start, emitted)
            self._pending = s[index + consumed :]
        flush()
        return pieces

    def _find_candidate(self, s: str) -> int | None:
        line_start = self._line_start or self._after_call
        markers = (_TAG_OPEN, PYTHON_TAG) if self._fmt == ToolFormat.llama3 else (_TAG_OPEN,)
        for index, char in enumerate(s):
            if char == "<":
                rest = s[index:]
                if any(rest.startswith(m) or m.startswith(rest) for m in markers):
                    return index
            elif char == "{" or (line_start and char == "["):
                return index
            elif line_start and char == "`":
                rest = s[index : index + 3]
                if _FENCE.startswith(rest):
                    return index
            if char == "\n":
                line_start = True
            elif char not in " \t":
                line_start = False
        return None

    def _decide(self, s: str, final: bool, line_start: bool) -> tuple[int, list[Any] | None, str] | None:
        """For text starting at a candidate: (characters consumed, calls or None, text if not calls)."""
        parser = self._reader
        if s[0] == "<":
            for marker in (PYTHON_TAG, _TAG_OPEN):
                if marker == PYTHON_TAG and self._fmt != ToolFormat.llama3:
                    continue
                if not s.startswith(marker):
                    if marker.startswith(s):
                        return (len(s), None, s) if final else _NEED_MORE
                    continue
                ends = _PYTHON_TAG_ENDS if marker == PYTHON_TAG else (_TAG_CLOSE,)
                found = [(s.find(e, len(marker)), e) for e in ends]
                found = [(at, e) for at, e in found if at >= 0]
                if found:
                    at, end_marker = min(found)
                    inner, consumed = s[len(marker) : at], at + len(end_marker)
                elif final:
                    inner, consumed = s[len(marker) :], len(s)
                else:
                    return _NEED_MORE
                if marker == PYTHON_TAG:
                    calls = parser.calls_from_python_tag(inner)
                    return consumed, calls, inner  # a broken call comes back without the control token
                return consumed, parser.calls_from_json_sequence(inner), s[:consumed]
            return 1, None, "<"
        if s[0] == "`":
            if not s.startswith(_FENCE):
                return (len(s), None, s) if final or not _FENCE.startswith(s) else _NEED_MORE
            opened = _FENCE_OPEN.match(s)
            if opened is None:
                if not final and "\n" not in s and len(s) < 16:
                    return _NEED_MORE
                return 3, None, _FENCE
            start = opened.end()
            while start < len(s) and s[start].isspace():
                start += 1
            if start == len(s):
                return (len(s), None, s) if final else _NEED_MORE
            if s[start] not in "{[":
                return 3, None, _FENCE
            end = _json_end(s, start)
            if end is None:
                return (len(s), None, s) if final else _NEED_MORE
            after = s[end:]
            closing = after.lstrip()
            if closing.startswith(_FENCE):
                consumed = len(s) - len(closing) + 3
            elif not final and _FENCE.startswith(closing):
                return _NEED_MORE
            else:
                consumed = end
            return consumed, parser.calls_from_json(s[start:end]), s[:consumed]
        # "{" or "["
        if s[0] == "{" and not line_start:
            status = _key_check(s)
            if status is _NEED_MORE:
                return (1, None, "{") if final else _NEED_MORE
            if not status:
                return 1, None, "{"
        end = _json_end(s, 0)
        if end is None:
            return (len(s), None, s) if final else _NEED_MORE
        return end, parser.calls_from_json(s[:end]), s[:end]


def _key_check(s: str) -> bool | None:
    """For a ``{`` in the middle of a line: does its first key look like a call's? None: not known yet."""
    rest = s[1:].lstrip()
    if not rest:
        return _NEED_MORE
    if rest[0] != '"':
        return False
    close = rest.find('"', 1)
    if close < 0:
        partial = rest[1:]
        return _NEED_MORE if any(k.startswith(partial) for k in _CALL_KEYS) else False
    return rest[1:close] in _CALL_KEYS


def parse_tool_calls(text: str, fmt: ToolFormat, tools: list[ToolDefinition]) -> tuple[str, list[ToolCall]]:
    """A whole answer split into its text and its tool calls, each with a fresh id (:func:`new_call_id`).

    Never raises: what does not parse as a call to an offered tool stays in the text.
    """
    if not tools:
        return text, []
    splitter = AnswerSplitter(fmt, tools)
    pieces = [*splitter.split(text, final=False), *splitter.split("", final=True)]
    answer = "".join(piece for piece in pieces if isinstance(piece, str))
    return answer, [piece for piece in pieces if isinstance(piece, ToolCall)]
