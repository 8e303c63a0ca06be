"""Offering tools to a model: the tools, the dialog's tool calls and tool results, written into its prompt.

The formats are described in :mod:`.formats`. In the json format, tool results that end the dialog are
followed by :data:`TOOL_RESULTS_PROMPT` (small models otherwise tend to repeat the call).

Interface (stable; other providers use it):

- ``render_messages(dialog, tools, tool_choice, fmt, inline, *, where="dialog", today=None,
  llama3_header=True) -> list[{"role", "content"}]`` where ``inline(content, where) -> str`` turns message
  content into text (attachments inlined) and ``where`` is the content's field path
  (``dialog.message_history[0].content``); ``llama3_header=False`` for Llama 3.1+ templates that write
  the environment/date header themselves (hand them ``llama3_builtin_names(tools)`` as ``builtin_tools``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from llama_stack.apis.common import Content, Dialog, Role, ToolCall, ToolDefinition
from llama_stack.providers.utils.inference.dialog import iter_messages

from .formats import BUILTIN_TOOLS, PYTHON_TAG, ToolFormat, function_definition, offered_tools, tool_name

__all__ = [
    "JSON_TOOL_PROMPT",
    "LLAMA3_CUSTOM_TOOLS_PROMPT",
    "NAMED_TOOL_PROMPT",
    "REQUIRED_TOOL_PROMPT",
    "TOOL_RESULTS_PROMPT",
    "llama3_builtin_names",
    "render_messages",
]

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


def _python_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a double-quoted Python string literal as well
    return repr(value)


def _render_call(call: ToolCall, fmt: ToolFormat) -> str:
    if fmt == ToolFormat.llama3:
        builtin = BUILTIN_TOOLS.get(call.tool_name)
        if builtin is not None and builtin.llama_name == "code_interpreter":
            return PYTHON_TAG + str(call.arguments.get("code", ""))
        if builtin is not None:
            args = ", ".join(f"{k}={_python_literal(v)}" for k, v in call.arguments.items())
            return f"{PYTHON_TAG}{builtin.llama_name}.call({args})"
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
        if out and out[-1]["role"] == "user" and out[-1].get("_tool_result"):
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
    for rendered in out:
        rendered.pop("_tool_result", None)
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
