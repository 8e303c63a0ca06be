"""Requests in OpenAI's chat shape, for vendors whose chat API is OpenAI's (Together, any OpenAI-compatible
server; Emissary for sampling): tool definitions, ``tool_choice``, sampling fields, and the dialog as
``messages`` with every tool result linked to its call by id.

What differs between vendors stays with their adapters: how content becomes text (attachments), the
shapes of logprobs, and which sampling fields beyond OpenAI's a server takes.
Answers are read by :mod:`.openai_answers`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from llama_stack.apis.common import Content, Dialog, Role, ToolCall, ToolDefinition
from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inference import ResponseFormat, SamplingParams
from llama_stack.providers.utils.inference.dialog import iter_messages
from llama_stack.providers.utils.inference.tool_calls.formats import function_definition

from .service import RemoteService

# How an adapter turns a message's content into what its vendor takes: called with the content, its field
# path (for the 400 a refused attachment gets) and the role of the message it belongs to (OpenAI takes
# image parts in user messages only). Text, or OpenAI's content parts.
RenderContent = Callable[[Content, str, Role], str | list[dict[str, Any]]]

# OpenAI's own sampling fields. sampling_fields() adds top_k and repetition_penalty beyond them, by the
# names vLLM and Together take; an adapter whose server may not take them checks for fields outside this set.
OPENAI_SAMPLING_FIELDS = frozenset(
    {"temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "logit_bias"}
)


def openai_tools(tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """The tools as function definitions, as the local providers describe them to their models (built-in
    tools get the description and argument schema every provider gives them, so that a call the model
    makes is one the tool runtime accepts); an empty description is left out. Shields are never sent."""
    out = []
    for tool in tools:
        function = function_definition(tool)
        if not function["description"]:
            del function["description"]
        out.append({"type": "function", "function": function})
    return out


def openai_response_format(value: ResponseFormat | None) -> dict[str, Any] | None:
    """OpenAI's response_format (None for text). Structured Outputs names the schema: its title when it has
    one, else "response" (servers that do not check names ignore it)."""
    if value is None or value.type == "text":
        return None
    if value.type == "json_object":
        return {"type": "json_object"}
    schema = dict(value.json_schema or {})
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def openai_tool_choice(choice: str) -> str | dict[str, Any]:
    """``auto``, ``none`` and ``required`` as they are; a tool's name as OpenAI's named-function choice."""
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """The sampling parameters as request fields; only what changes sampling (greedy ignores top_p, top_k)."""
    greedy = params.strategy == "greedy"
    fields: dict[str, Any] = (
        {"temperature": 0.0} if greedy else {"temperature": params.temperature, "top_p": params.top_p}
    )
    if not greedy and params.top_k > 0:
        fields["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        fields["repetition_penalty"] = params.repetition_penalty
    if params.frequency_penalty:
        fields["frequency_penalty"] = params.frequency_penalty
    if params.presence_penalty:
        fields["presence_penalty"] = params.presence_penalty
    if params.logit_bias:
        fields["logit_bias"] = {str(token): bias for token, bias in params.logit_bias.items()}  # JSON keys: strings
    if params.seed is not None:
        fields["seed"] = params.seed
    return fields


def openai_messages(
    dialog: Dialog,
    render: RenderContent,
    service: RemoteService,
    *,
    where: str = "dialog",
    numbered_calls: bool = False,
    no_text: str | None = None,
) -> list[dict[str, Any]]:
    """The dialog as OpenAI ``messages``; ``where`` is the dialog's field path, for errors.

    Each tool result becomes one ``tool`` message linked to its call by id (see :class:`_CallLinks`); a
    tool message's own content is a result only when it has no ``tool_responses`` (with them, it repeats
    them, as the stack's OpenAI routes build it).

    Two vendor differences are options: ``numbered_calls`` gives each call of an assistant message its
    ``index``, and ``no_text`` is the content of an assistant message with calls but no text: OpenAI's
    convention is null, while Together's spec requires an ``index`` on calls and a string content.
    """
    out: list[dict[str, Any]] = []
    links = _CallLinks(service)
    for turn, (at, message) in enumerate(iter_messages(dialog, where)):
        for index, response in enumerate(message.tool_responses):
            result = f"{at}.tool_responses[{index}]"
            call_id = links.answer(response.call_id, response.tool_name, result, f"{result}.call_id")
            content = render(response.content, f"{result}.content", Role.tool)
            out.append({"role": "tool", "tool_call_id": call_id, "content": content})
        if message.role == Role.tool:
            if not message.tool_responses:
                call_id = links.answer(None, None, at, at)
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "content": render(message.content, f"{at}.content", Role.tool),
                    }
                )
            continue
        if message.role != Role.assistant and message.tool_responses and message.content in ("", []):
            continue  # it only carried tool results, sent above
        entry: dict[str, Any] = {
            "role": message.role.value,
            "content": render(message.content, f"{at}.content", message.role),
        }
        if message.role == Role.assistant and message.tool_calls:
            entry["content"] = entry["content"] or no_text
            entry["tool_calls"] = links.calls(turn, message.tool_calls, numbered_calls)
        out.append(entry)
    return out


class _CallLinks:
    """The ids of the dialog's tool calls, and which calls of the latest assistant message are unanswered.

    OpenAI's API links each tool result to its call by id, but the contract's calls and results may carry
    none: a call without one gets ``call_<turn>_<i>`` (deterministic, so the same dialog is the same
    request), and a result without one answers an unanswered call of the assistant message before it, the
    first with the result's tool name (the first of all when it names none). A result that answers no
    unanswered call is refused: linked to another tool's call, it would tell the model something false.
    """

    def __init__(self, service: RemoteService):
        self.service = service
        self.unanswered: list[tuple[str, str]] = []  # (call id, tool name)

    def calls(self, turn: int, calls: list[ToolCall], numbered: bool) -> list[dict[str, Any]]:
        sent = []
        for index, call in enumerate(calls):
            entry: dict[str, Any] = {
                "id": call.call_id or f"call_{turn}_{index}",
                "type": "function",
                "function": {"name": call.tool_name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
            }
            if numbered:
                entry["index"] = index
            sent.append(entry)
        self.unanswered = [(c["id"], c["function"]["name"]) for c in sent]
        return sent

    def answer(self, call_id: str | None, name: str | None, where: str, id_field: str) -> str:
        """The id of the call a result (at field path ``where``) answers; ``id_field`` is where its id would go."""
        if call_id:
            self.unanswered = [c for c in self.unanswered if c[0] != call_id]
            return call_id
        match = next((c for c in self.unanswered if name is None or c[1] == name), None)
        if match is None:
            open_calls = ", ".join(f"{n} ({i})" for i, n in self.unanswered) or "none"
            why = (
                f"this tool result answers no tool call of the assistant message before it (unanswered calls: "
                f"{open_calls}); {self.service.name} links every tool result to its call by id: give the result "
                "a call_id, or put the assistant message with its tool_calls before it"
            )
            raise BadRequestError(
                f"{id_field}: {why}",
                provider=self.service.provider_id,
                param=where,
                details=[{"loc": id_field, "in": "body", "message": why}],
            )
        self.unanswered.remove(match)
        return match[0]
