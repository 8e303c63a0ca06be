"""What rendering and parsing agree on: the two tool-call formats, the built-in tools, and a call's shape.

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
    system message gets the JSON tool prompt (:mod:`.render`), and the model answers with one
    ``{"name": ..., "arguments": {...}}`` object per call, one per line. Tool results go back as user
    messages, one line each, ``Tool result (<name>, call <call_id>): <text>`` (generic templates know no
    other role, and many want user and assistant to alternate).

Interfaces (stable; other providers use them):

- ``tool_format_for(model_name, chat_template) -> ToolFormat``
- ``offered_tools(tools, tool_choice) -> list[ToolDefinition]``: the tools to parse for (none for 'none').
- ``tool_call_schema(tools, tool_choice, fmt) -> dict | None``: a JSON schema of the forced call, for
  providers that can constrain generation (grammar) when ``tool_choice`` is 'required' or a name.
- ``function_definition(tool)``, ``tool_name(tool)``, ``new_call_id()``.
"""

from __future__ import annotations

import re
import secrets
from enum import Enum
from typing import Any

from llama_stack.apis.common import BuiltinTool, ToolDefinition

__all__ = [
    "BUILTIN_BY_LLAMA_NAME",
    "BUILTIN_TOOLS",
    "PYTHON_TAG",
    "BuiltinPresentation",
    "ToolFormat",
    "function_definition",
    "is_builtin",
    "new_call_id",
    "offered_tools",
    "tool_call_schema",
    "tool_format_for",
    "tool_name",
]

# The control token that opens a Llama 3.1 built-in tool call (or code for code_interpreter).
PYTHON_TAG = "<|python_tag|>"


class ToolFormat(str, Enum):
    llama3 = "llama3"
    json = "json"


class BuiltinPresentation:
    """How one built-in tool is shown to a model: its Llama 3.1 name, a description and a one-argument schema."""

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
BUILTIN_TOOLS: dict[str, BuiltinPresentation] = {
    BuiltinTool.web_search.value: BuiltinPresentation(
        "brave_search", "Search the web.", "query", "What to search for."
    ),
    BuiltinTool.math.value: BuiltinPresentation(
        "wolfram_alpha",
        "Compute or look up a mathematical or scientific answer.",
        "query",
        "The question or expression.",
    ),
    BuiltinTool.image_gen.value: BuiltinPresentation(
        "photogen", "Generate an image.", "query", "A description of the image."
    ),
    BuiltinTool.code_interpreter.value: BuiltinPresentation(
        "code_interpreter", "Run Python code and return its output.", "code", "The Python code to run."
    ),
}
BUILTIN_BY_LLAMA_NAME = {b.llama_name: name for name, b in BUILTIN_TOOLS.items()}


def new_call_id() -> str:
    """A tool call's id, ``call_`` and 24 random hex digits as OpenAI's look: unique across answers, since a
    client answers each call by its id and keeps a conversation's calls apart by it, turn after turn."""
    return f"call_{secrets.token_hex(12)}"


def tool_name(tool: ToolDefinition) -> str:
    return tool.tool_name.value if isinstance(tool.tool_name, BuiltinTool) else tool.tool_name


def is_builtin(tool: ToolDefinition) -> bool:
    return isinstance(tool.tool_name, BuiltinTool) or tool.tool_name in BUILTIN_TOOLS


def function_definition(tool: ToolDefinition) -> dict[str, Any]:
    """A tool as an OpenAI-style function definition."""
    name = tool_name(tool)
    builtin = BUILTIN_TOOLS.get(name) if is_builtin(tool) else None
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
    if fmt == ToolFormat.llama3 and any(is_builtin(t) for t in chosen):
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
