"""Reading answers in OpenAI's chat and completion shape, as vendors with such an API send them.

Together, Emissary and any OpenAI-compatible server answer ``{choices: [...], usage: {...}}`` with
``finish_reason`` and ``message.tool_calls`` (or, streamed, ``delta.tool_calls`` fragments); this module
reads those parts from the decoded JSON, one way for every adapter. It reads leniently: a part in an
unexpected shape counts as absent, as a vendor adding or dropping an optional field must not fail an
answer. What is missing for good (no choice at all) is the vendor's fault: a 502 naming the provider.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llama_stack.apis.common import StopReason, ToolCall
from llama_stack.apis.errors import ProviderError
from llama_stack.apis.inference import Usage

from .redaction import excerpt
from .service import RemoteService

# Tool-call arguments that are not a JSON object are kept under this key, so that the caller gets the call
# (its id and name, and what the model wrote) instead of a failed request or a call silently dropped.
RAW_ARGUMENTS_KEY = "raw_arguments"

# The finish reasons that mean the model ran out of room. Every other one (stop, eos, tool_calls,
# function_call, content_filter, ...) ended the answer normally: the contract has no tool-call stop reason.
LENGTH_FINISH_REASONS = frozenset({"length", "max_tokens"})


# ------------------------------------------------------------------------------------------- choices
def choice_zero(answer: Any) -> dict[str, Any] | None:
    """The answer's (or stream event's) choice 0, or None; a choice without an index counts as choice 0."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return None
    # Only one choice is ever asked for (n = 1); its index says which it is, not its place in the list.
    return next((c for c in choices if isinstance(c, dict) and (c.get("index") or 0) == 0), None)


def first_choice(answer: Any, service: RemoteService, what: str) -> dict[str, Any]:
    """Choice 0 of a whole answer (``what``: e.g. ``POST /chat/completions``); a 502 when there is none."""
    choice = choice_zero(answer)
    if choice is None:
        raise ProviderError(
            f"{service.name} answered {what} without a choice: {excerpt(answer)}", provider=service.provider_id
        )
    return choice


def message_content(answer: Any, service: RemoteService, what: str) -> str:
    """Choice 0's ``message.content`` of a whole chat answer; a 502 naming the provider when it has none."""
    message = first_choice(answer, service, what).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise ProviderError(
            f"{service.name} answered {what} without a message: {excerpt(answer)}", provider=service.provider_id
        )
    return content


# --------------------------------------------------------------------------------- stop reason, usage
def stop_reason(finish_reason: Any) -> StopReason:
    """OpenAI's ``finish_reason`` as ours; none (mid-stream, or left out) is ``not_stopped``."""
    if not finish_reason:
        return StopReason.not_stopped
    return StopReason.max_tokens if str(finish_reason) in LENGTH_FINISH_REASONS else StopReason.finished_ok


def usage_of(usage: Any) -> Usage | None:
    """The token counts, or None unless both are there: a count made up as 0 would be wrong, not missing."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not _is_count(prompt) or not _is_count(completion):
        return None
    return Usage(prompt_tokens=int(prompt), completion_tokens=int(completion))


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------- tool calls
def tool_arguments(raw: Any) -> dict[str, Any]:
    """A call's arguments (JSON text, or an object some servers send as is) as an object.

    Text that is not a JSON object is kept under :data:`RAW_ARGUMENTS_KEY`: a model can write anything, and
    the caller (or the tool, whose argument check refuses it) decides what a malformed call means.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {RAW_ARGUMENTS_KEY: str(raw)}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: str(raw)}


def tool_calls(raw: Any) -> list[ToolCall]:
    """A whole answer's ``message.tool_calls`` as ours; entries that are not objects are skipped."""
    calls = raw if isinstance(raw, list) else []
    return [
        ToolCall(tool_name=_name(call), arguments=tool_arguments(_function(call).get("arguments")), call_id=_id(call))
        for call in calls
        if isinstance(call, dict)
    ]


@dataclass
class _PartialCall:
    """One streamed tool call so far: the first id and name seen, the argument text concatenated."""

    call_id: str | None = None
    name: str = ""
    arguments: str = ""

    def add(self, fragment: dict[str, Any]) -> None:
        self.call_id = self.call_id or _id(fragment)
        self.name = self.name or _name(fragment)
        arguments = _function(fragment).get("arguments")
        if isinstance(arguments, dict):  # a server that sends the whole object at once
            self.arguments = json.dumps(arguments)
        elif arguments:
            self.arguments += str(arguments)

    def finish(self) -> ToolCall:
        return ToolCall(tool_name=self.name, arguments=tool_arguments(self.arguments), call_id=self.call_id)


class ToolCallAssembler:
    """Streamed ``delta.tool_calls`` fragments, gathered into whole calls by their ``index``.

    The arguments of a call arrive in pieces, and several calls may be interleaved; the calls are whole only
    once the stream has ended, so :meth:`calls` is read then.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, fragments: Any) -> None:
        """One delta's ``tool_calls`` (a list of fragments; anything else carries none)."""
        for fragment in fragments if isinstance(fragments, list) else []:
            if isinstance(fragment, dict):
                self._calls.setdefault(self._index(fragment), _PartialCall()).add(fragment)

    def calls(self) -> list[ToolCall]:
        """The calls, in the order of their indexes."""
        return [self._calls[index].finish() for index in sorted(self._calls)]

    def _index(self, fragment: dict[str, Any]) -> int:
        try:
            return int(fragment["index"])
        except (KeyError, TypeError, ValueError):
            pass
        # Servers that leave the index out: a fragment with a new id starts a call, any other continues the last.
        last = max(self._calls, default=-1)
        call_id = _id(fragment)
        if last < 0 or (call_id and call_id not in {c.call_id for c in self._calls.values()}):
            return last + 1
        return last


def _function(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    return function if isinstance(function, dict) else {}


def _name(call: dict[str, Any]) -> str:
    return str(_function(call).get("name") or "")


def _id(call: dict[str, Any]) -> str | None:
    return str(call["id"]) if call.get("id") else None
