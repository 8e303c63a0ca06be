"""Tool calling, independent of the backend: offer tools to a model, read its tool calls back, stream them.

Two prompt formats (:class:`ToolFormat`):

``llama3``
    Meta's Llama 3.1 format, for Llama 3.x models. The system message gets ``Environment: ipython``,
    the built-in tools by their Llama names (``web_search`` -> ``brave_search``, ``math`` ->
    ``wolfram_alpha``, ``image_gen`` -> ``photogen``; ``code_interpreter`` is implied by the
    environment) and the custom tools as JSON function definitions. The model calls a built-in tool as
    ``<|python_tag|>brave_search.call(query="...")``, writes code for ``code_interpreter`` after
    ``<|python_tag|>``, and calls a custom tool with ``{"name": ..., "parameters": {...}}``. Tool results
    go back as messages with role ``ipython``.
``json``
    For every other model (chat templates differ too much in their own tool support to rely on it): the
    system message gets :data:`JSON_TOOL_PROMPT`, and the model answers with one
    ``{"name": ..., "arguments": {...}}`` object per call, one per line. Tool results go back as user
    messages, one line each, ``Tool result (<name>, call <call_id>): <text>`` (generic templates know no
    other role, and many want user and assistant to alternate); results that end the dialog are followed
    by :data:`TOOL_RESULTS_PROMPT`.

Parsing is lenient about the wrapping models add (a ```json fence, ``<tool_call>...</tool_call>``,
``parameters`` for ``arguments``, a JSON list of calls) and strict about the calls themselves: a call
that is not valid JSON, names a tool that was not offered, or has arguments that are not an object stays
in the answer as text. Nothing here raises on model output.

Interfaces (stable; other providers use them):

- ``tool_format_for(model_name, chat_template) -> ToolFormat``
- ``render_messages(dialog, tools, tool_choice, fmt, inline, *, where="dialog", today=None,
  llama3_header=True) -> list[{"role", "content"}]`` where ``inline(content, where) -> str`` turns message
  content into text (attachments inlined) and ``where`` is the content's field path
  (``dialog.message_history[0].content``); ``llama3_header=False`` for Llama 3.1+ templates that write
  the environment/date header themselves (hand them ``llama3_builtin_names(tools)`` as ``builtin_tools``).
- ``offered_tools(tools, tool_choice) -> list[ToolDefinition]``: the tools to parse for (none for 'none').
- ``parse_tool_calls(text, fmt, tools) -> (text, [ToolCall])``; every call gets a fresh id (:func:`new_call_id`).
- ``ToolCallStream(fmt, tools)``: ``feed(text_delta, logprobs=None) -> [chunk]``,
  ``finish(stop_reason, usage=None) -> [chunk]`` (the last chunk carries stop_reason and usage).
- ``tool_call_schema(tools, tool_choice, fmt) -> dict | None``: a JSON schema of the forced call, for
  providers that can constrain generation (grammar) when ``tool_choice`` is 'required' or a name.
"""

from __future__ import annotations

import ast
import datetime
import json
import re
import secrets
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from llama_stack.apis.common import BuiltinTool, Content, Dialog, Message, Role, StopReason, ToolCall, ToolDefinition
from llama_stack.apis.inference import ChatCompletionResponseStreamChunk, Logprobs, TokenLogprob, Usage

__all__ = [
    "BUILTIN_TOOLS",
    "JSON_TOOL_PROMPT",
    "LLAMA3_CUSTOM_TOOLS_PROMPT",
    "NAMED_TOOL_PROMPT",
    "REQUIRED_TOOL_PROMPT",
    "TOOL_RESULTS_PROMPT",
    "ToolCallStream",
    "ToolFormat",
    "function_definition",
    "iter_messages",
    "llama3_builtin_names",
    "new_call_id",
    "offered_tools",
    "parse_tool_calls",
    "render_messages",
    "tool_call_schema",
    "tool_format_for",
    "tool_name",
]


class ToolFormat(str, Enum):
    llama3 = "llama3"
    json = "json"


# -- tool definitions ----------------------------------------------------------------------------------


class _Builtin:
    def __init__(self, llama_name: str, description: str, argument: str, argument_description: str):
        self.llama_name = llama_name
        self.description = description
        self.argument = argument
        self.parameters = {
            "type": "object",
            "properties": {argument: {"type": "string", "description": argument_description}},
            "required": [argument],
        }


# How the contract's built-in tools are presented: their Llama 3.1 names (llama3 format) and, for the json
# format (or a built-in without a description), a description and a one-argument schema.
BUILTIN_TOOLS: dict[str, _Builtin] = {
    BuiltinTool.web_search.value: _Builtin("brave_search", "Search the web.", "query", "What to search for."),
    BuiltinTool.math.value: _Builtin(
        "wolfram_alpha",
        "Compute or look up a mathematical or scientific answer.",
        "query",
        "The question or expression.",
    ),
    BuiltinTool.image_gen.value: _Builtin("photogen", "Generate an image.", "query", "A description of the image."),
    BuiltinTool.code_interpreter.value: _Builtin(
        "code_interpreter", "Run Python code and return its output.", "code", "The Python code to run."
    ),
}
_BUILTIN_BY_LLAMA_NAME = {b.llama_name: name for name, b in BUILTIN_TOOLS.items()}


def new_call_id() -> str:
    """A tool call's id, ``call_`` and 24 random hex digits as OpenAI's look: unique across answers, since a
    client answers each call by its id and keeps a conversation's calls apart by it, turn after turn."""
    return f"call_{secrets.token_hex(12)}"


def tool_name(tool: ToolDefinition) -> str:
    return tool.tool_name.value if isinstance(tool.tool_name, BuiltinTool) else tool.tool_name


def _is_builtin(tool: ToolDefinition) -> bool:
    return isinstance(tool.tool_name, BuiltinTool) or tool.tool_name in BUILTIN_TOOLS


def function_definition(tool: ToolDefinition) -> dict[str, Any]:
    """A tool as an OpenAI-style function definition."""
    name = tool_name(tool)
    builtin = BUILTIN_TOOLS.get(name) if _is_builtin(tool) else None
    description = tool.description or (builtin.description if builtin else "")
    parameters = tool.parameters or (builtin.parameters if builtin else {"type": "object", "properties": {}})
    return {"name": name, "description": description, "parameters": parameters}


def offered_tools(tools: list[ToolDefinition], tool_choice: str) -> list[ToolDefinition]:
    """The tools the model is told about and whose calls are parsed: none for tool_choice 'none'."""
    return [] if tool_choice == "none" else list(tools)


def tool_format_for(model_name: str, chat_template: str | None) -> ToolFormat:
    """``llama3`` for Llama 3.x models (recognized by their chat template, or by name without one)."""
    if chat_template:
        if "<|start_header_id|>" in chat_template and (
            "<|eot_id|>" in chat_template or "<|python_tag|>" in chat_template
        ):
            return ToolFormat.llama3
        return ToolFormat.json
    if re.search(r"llama[-_ .]?3", model_name, re.IGNORECASE):
        return ToolFormat.llama3
    return ToolFormat.json


# -- prompts -------------------------------------------------------------------------------------------

# The json format's instruction, appended to the system message; {tools} is one JSON function definition
# per line. Documented in docs/providers/tool-calling.md.
JSON_TOOL_PROMPT = """\
You can call tools. The available tools, as JSON function definitions:
{tools}

To call a tool, answer with only a JSON object {"name": "<tool name>", "arguments": {<argument name>: <value>}}. \
To call several tools, write one such object per line. When no tool is needed, answer in plain text."""

# Meta's Llama 3.1 instruction for custom (JSON) tools, as its official chat template puts it in the system
# message; {tools} is the tools' JSON definitions, each indented by 4 and followed by a blank line.
LLAMA3_CUSTOM_TOOLS_PROMPT = (
    "You have access to the following functions. To call a function, please respond with JSON for a function call."
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n{tools}"
)

REQUIRED_TOOL_PROMPT = "You must answer with a tool call."
# json format: closes tool results that end the dialog (small models otherwise tend to repeat the call).
TOOL_RESULTS_PROMPT = "Use these results to answer the question."
NAMED_TOOL_PROMPT = "You must answer by calling the tool {name}."


def _choice_prompt(tool_choice: str) -> str:
    if tool_choice == "required":
        return REQUIRED_TOOL_PROMPT
    if tool_choice in ("auto", "none"):
        return ""
    return NAMED_TOOL_PROMPT.replace("{name}", tool_choice)


def _json_system_prompt(tools: list[ToolDefinition], tool_choice: str) -> str:
    definitions = "\n".join(json.dumps(function_definition(t), ensure_ascii=False) for t in tools)
    prompt = JSON_TOOL_PROMPT.replace("{tools}", definitions)
    choice = _choice_prompt(tool_choice)
    return f"{prompt}\n{choice}" if choice else prompt


def llama3_builtin_names(tools: list[ToolDefinition]) -> list[str]:
    """The Llama 3.1 names of the built-in tools offered (``brave_search``, ..., ``code_interpreter``)."""
    return [BUILTIN_TOOLS[tool_name(t)].llama_name for t in tools if tool_name(t) in BUILTIN_TOOLS]


def _llama3_system_prompt(
    tools: list[ToolDefinition], tool_choice: str, today: datetime.date, header: bool
) -> tuple[str, str]:
    """(the part before the user's system message, the part after it)."""
    builtins = llama3_builtin_names(tools)
    custom = [t for t in tools if tool_name(t) not in BUILTIN_TOOLS]
    head = ""
    if header:
        head = "Environment: ipython\n"
        listed = [name for name in builtins if name != "code_interpreter"]
        if listed:
            head += f"Tools: {', '.join(listed)}\n\n"
        head += f"Cutting Knowledge Date: December 2023\nToday Date: {today.strftime('%d %b %Y')}\n\n"
    tail = ""
    if custom:
        functions = "".join(
            json.dumps({"type": "function", "function": function_definition(t)}, indent=4) + "\n\n" for t in custom
        )
        head += LLAMA3_CUSTOM_TOOLS_PROMPT.replace("{tools}", functions)
    choice = _choice_prompt(tool_choice)
    if choice:
        tail = choice
    return head, tail


def iter_messages(dialog: Dialog, where: str = "dialog") -> Iterator[tuple[str, Message]]:
    """Each message of a dialog in order, with its field path (``dialog.message_history[0]``, ``dialog.message``)."""
    for index, message in enumerate(dialog.message_history):
        yield f"{where}.message_history[{index}]", message
    yield f"{where}.message", dialog.message


def _python_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a double-quoted Python string literal as well
    return repr(value)


def _render_call(call: ToolCall, fmt: ToolFormat) -> str:
    if fmt == ToolFormat.llama3:
        builtin = BUILTIN_TOOLS.get(call.tool_name)
        if builtin is not None and builtin.llama_name == "code_interpreter":
            return "<|python_tag|>" + str(call.arguments.get("code", ""))
        if builtin is not None:
            args = ", ".join(f"{k}={_python_literal(v)}" for k, v in call.arguments.items())
            return f"<|python_tag|>{builtin.llama_name}.call({args})"
        return json.dumps({"name": call.tool_name, "parameters": call.arguments}, ensure_ascii=False)
    return json.dumps({"name": call.tool_name, "arguments": call.arguments}, ensure_ascii=False)


def _tool_result_text(name: str, call_id: str | None, text: str) -> str:
    label = f"{name}, call {call_id}" if call_id else name
    return f"Tool result ({label}): {text}"


def render_messages(
    dialog: Dialog,
    tools: list[ToolDefinition],
    tool_choice: str,
    fmt: ToolFormat,
    inline: Callable[[Content, str], str],
    *,
    where: str = "dialog",
    today: datetime.date | None = None,
    llama3_header: bool = True,
) -> list[dict[str, str]]:
    """The dialog as plain ``{"role", "content"}`` messages for a chat template, tools offered per ``fmt``.

    With no tools offered (none given, or tool_choice 'none') the messages are the dialog's own, so the
    template's default system prompt still applies; tool calls and results in the history are rendered
    either way. ``where`` prefixes the field paths handed to ``inline``. ``llama3_header=False`` leaves
    out the ``Environment``/``Tools``/date lines, for Llama 3.1+ chat templates that write them
    themselves (pass them :func:`llama3_builtin_names` as ``builtin_tools``).
    """
    tools = offered_tools(tools, tool_choice)
    out: list[dict[str, str]] = []
    tool_result_role = "ipython" if fmt == ToolFormat.llama3 else "user"
    last_calls: list[ToolCall] = []
    results_since_calls = 0

    def add_result(name: str, call_id: str | None, text: str) -> None:
        if fmt == ToolFormat.llama3:
            out.append({"role": "ipython", "content": text})
            return
        rendered = _tool_result_text(name, call_id, text)
        if out and out[-1]["role"] == "user" and out[-1].get("_tool_result"):  # type: ignore[typeddict-item]
            out[-1]["content"] += "\n" + rendered  # generic templates want user/assistant to alternate
        else:
            out.append({"role": tool_result_role, "content": rendered, "_tool_result": "1"})

    for at, message in iter_messages(dialog, where):
        text = inline(message.content, f"{at}.content")
        for index, response in enumerate(message.tool_responses):
            add_result(
                response.tool_name, response.call_id, inline(response.content, f"{at}.tool_responses[{index}].content")
            )
            results_since_calls += 1
        if message.role == Role.tool:
            if text or not message.tool_responses:
                call = last_calls[results_since_calls] if results_since_calls < len(last_calls) else None
                add_result(call.tool_name if call else "tool", call.call_id if call else None, text)
                results_since_calls += 1
            continue
        if message.role == Role.assistant and message.tool_calls:
            calls = "\n".join(_render_call(c, fmt) for c in message.tool_calls)
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
            last_calls, results_since_calls = list(message.tool_calls), 0
            continue
        if message.tool_responses and not text and message.role != Role.assistant:
            continue  # a message that only carries tool responses
        if message.role == Role.user and out and out[-1].get("_tool_result") and fmt == ToolFormat.json:
            out[-1]["content"] += "\n\n" + text
            del out[-1]["_tool_result"]
            continue
        out.append({"role": message.role.value, "content": text})

    if fmt == ToolFormat.json and out and out[-1].get("_tool_result"):
        out[-1]["content"] += "\n\n" + TOOL_RESULTS_PROMPT
    for message in out:
        message.pop("_tool_result", None)
    if not tools:
        return out

    system = next((m for m in out if m["role"] == "system"), None)
    if system is None:
        system = {"role": "system", "content": ""}
        out.insert(0, system)
    if fmt == ToolFormat.llama3:
        head, tail = _llama3_system_prompt(tools, tool_choice, today or datetime.date.today(), llama3_header)
        system["content"] = head + system["content"] + ("\n\n" + tail if tail else "")
    else:
        prompt = _json_system_prompt(tools, tool_choice)
        system["content"] = f"{system['content']}\n\n{prompt}" if system["content"] else prompt
    return out


def tool_call_schema(tools: list[ToolDefinition], tool_choice: str, fmt: ToolFormat) -> dict[str, Any] | None:
    """A JSON schema every forced tool call matches, or None when the call is not forced or not JSON.

    Forced: tool_choice 'required' (any offered tool) or a tool's name. In the llama3 format built-in tools
    are called through ``<|python_tag|>``, not JSON: a choice among them gives None.
    """
    if tool_choice in ("auto", "none") or not tools:
        return None
    chosen = tools if tool_choice == "required" else [t for t in tools if tool_name(t) == tool_choice]
    if not chosen:
        return None
    if fmt == ToolFormat.llama3 and any(_is_builtin(t) for t in chosen):
        return None
    key = "parameters" if fmt == ToolFormat.llama3 else "arguments"
    options = []
    for tool in chosen:
        function = function_definition(tool)
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, key: function["parameters"]},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


# -- parsing -------------------------------------------------------------------------------------------

_PYTHON_TAG = "<|python_tag|>"
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


class _Parser:
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
        if name not in self.names and _BUILTIN_BY_LLAMA_NAME.get(name) in self.names:
            name = _BUILTIN_BY_LLAMA_NAME[name]
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
        calls = [self.call_from_object(item) for item in items]
        if not calls or any(c is None for c in calls):
            return None
        return calls  # type: ignore[return-value]

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
            name = _BUILTIN_BY_LLAMA_NAME.get(node.func.value.id, node.func.value.id)
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


class ToolCallStream:
    """Splits a model's streamed answer into text chunks and tool-call chunks.

    Plain text passes through at once. Text that may start a tool call (``{`` or ``[`` at a line start,
    a ```` ``` ```` fence, ``<tool_call>``, ``<|python_tag|>`` in the llama3 format, ``{"name"`` anywhere) is
    held back until it is known to be a call (emitted as its own chunk: ``text_delta ""``, ``tool_call``,
    ``tool_call_index`` counting from 0) or not (emitted as text). Whitespace between text and a call, between
    calls and after the last call is dropped; other whitespace is only held until more text arrives. Logprobs of held-back text travel with the next
    chunk emitted. ``parse_tool_calls`` runs the same machine over a whole answer, so a streamed answer and
    a non-streamed one agree.
    """

    def __init__(self, fmt: ToolFormat, tools: list[ToolDefinition]):
        self._fmt = fmt
        self._parser = _Parser(fmt, tools)
        self._active = bool(tools)
        self._pending = ""
        self._line_start = True  # the start of the answer counts as a line start
        self._after_call = False
        self._held_logprobs: list[TokenLogprob] = []
        self._count = 0
        self.calls: list[ToolCall] = []

    # -- the public side --

    def feed(
        self, text_delta: str, logprobs: list[TokenLogprob] | None = None
    ) -> list[ChatCompletionResponseStreamChunk]:
        if logprobs:
            self._held_logprobs.extend(logprobs)
        if not self._active:
            if not text_delta and not self._held_logprobs:
                return []
            return [self._chunk(text_delta)]
        self._pending += text_delta
        return self._drain(final=False)

    def finish(
        self, stop_reason: StopReason | str | None, usage: Usage | None = None
    ) -> list[ChatCompletionResponseStreamChunk]:
        chunks = self._drain(final=True) if self._active else []
        last = self._chunk("", stop_reason=stop_reason, usage=usage)
        return [*chunks, last]

    # -- the machine --

    def _chunk(self, text: str, **fields: Any) -> ChatCompletionResponseStreamChunk:
        if self._held_logprobs:
            fields["logprobs"] = Logprobs(content=self._held_logprobs)
            self._held_logprobs = []
        return ChatCompletionResponseStreamChunk(text_delta=text, **fields)

    def _drain(self, final: bool) -> list[ChatCompletionResponseStreamChunk]:
        chunks: list[ChatCompletionResponseStreamChunk] = []
        text: list[str] = []

        def flush() -> None:
            joined = "".join(text)
            text.clear()
            if joined:
                chunks.append(self._chunk(joined))

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
                    call = ToolCall(tool_name=name, arguments=arguments, call_id=new_call_id())
                    chunks.append(self._chunk("", tool_call=call, tool_call_index=self._count))
                    self.calls.append(call)
                    self._count += 1
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
        return chunks

    def _find_candidate(self, s: str) -> int | None:
        line_start = self._line_start or self._after_call
        markers = (_TAG_OPEN, _PYTHON_TAG) if self._fmt == ToolFormat.llama3 else (_TAG_OPEN,)
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
        parser = self._parser
        if s[0] == "<":
            for marker in (_PYTHON_TAG, _TAG_OPEN):
                if marker == _PYTHON_TAG and self._fmt != ToolFormat.llama3:
                    continue
                if not s.startswith(marker):
                    if marker.startswith(s):
                        return (len(s), None, s) if final else _NEED_MORE
                    continue
                ends = _PYTHON_TAG_ENDS if marker == _PYTHON_TAG else (_TAG_CLOSE,)
                found = [(s.find(e, len(marker)), e) for e in ends]
                found = [(at, e) for at, e in found if at >= 0]
                if found:
                    at, end_marker = min(found)
                    inner, consumed = s[len(marker) : at], at + len(end_marker)
                elif final:
                    inner, consumed = s[len(marker) :], len(s)
                else:
                    return _NEED_MORE
                if marker == _PYTHON_TAG:
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
    stream = ToolCallStream(fmt, tools)
    chunks = [*stream.feed(text), *stream.finish(None)]
    return "".join(c.text_delta for c in chunks), list(stream.calls)
