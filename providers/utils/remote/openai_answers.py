"""Reading answers in OpenAI's chat and completion shape, as vendors with such an API send them.

Together, Emissary and any OpenAI-compatible server answer ``{choices: [...], usage: {...}}`` with
``finish_reason`` and ``message.tool_calls`` (or, streamed, ``delta.tool_calls`` fragments); this module
reads those parts from the decoded JSON, one way for every adapter, and :class:`OpenAIAnswerReader`
turns whole answers and streams into the contract's responses and chunks. It reads leniently: a part in
an unexpected shape counts as absent, as a vendor adding or dropping an optional field must not fail an
answer. What is missing for good (no choice at all, an answer or stream event that is not an object) is
the vendor's fault: a 502 naming the provider.

What a vendor shapes otherwise than OpenAI (its logprobs, the text of its completion stream events) it
reads by overriding the reader's part readers; how an answer without ``finish_reason`` ended is its
reader's :attr:`~OpenAIAnswerReader.unstated_finish`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeGuard

from llama_stack.apis.common import StopReason, ToolCall
from llama_stack.apis.errors import ProviderError
from llama_stack.apis.inference import (
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionResponse,
    CompletionResponseStreamChunk,
    Logprobs,
    PromptTokenLogprob,
    TokenLogprob,
    TopLogprob,
    Usage,
)

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
    if not _is_number(prompt) or not _is_number(completion):
        return None
    return Usage(prompt_tokens=int(prompt), completion_tokens=int(completion))


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


# ------------------------------------------------------------------------------------------ logprobs
@dataclass(frozen=True)
class LegacyPosition:
    """One position of the legacy ``logprobs{tokens, token_logprobs, top_logprobs}`` shape."""

    token: str
    logprob: float | None  # None: the vendor gives none here (the first token of an echoed prompt)
    alternatives: list[TopLogprob]  # most likely first


def legacy_positions(part: Any) -> list[LegacyPosition]:
    """The legacy shape's parallel lists as positions: one per token, alternatives ranked most likely first
    (``top_logprobs`` maps each alternative to its logprob). A missing or malformed value counts as absent."""
    if not isinstance(part, dict) or not isinstance(part.get("tokens"), list):
        return []
    tokens = part["tokens"]
    values = _list(part.get("token_logprobs"))
    tops = _list(part.get("top_logprobs"))
    positions = []
    for index, token in enumerate(tokens):
        value = values[index] if index < len(values) else None
        listed = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
        ranked = sorted(((str(t), float(lp)) for t, lp in listed.items() if _is_number(lp)), key=lambda a: -a[1])
        positions.append(
            LegacyPosition(
                token=str(token),
                logprob=float(value) if _is_number(value) else None,
                alternatives=[TopLogprob(token=t, logprob=lp) for t, lp in ranked],
            )
        )
    return positions


def legacy_logprobs(part: Any, top: int) -> Logprobs | None:
    """A completion choice's legacy ``logprobs`` as ours, at most ``top`` alternatives per token; positions
    without a logprob are left out. None when the choice has no such part."""
    if not isinstance(part, dict):
        return None
    return Logprobs(
        content=[
            TokenLogprob(token=p.token, logprob=p.logprob, top_logprobs=p.alternatives[:top])
            for p in legacy_positions(part)
            if p.logprob is not None
        ]
    )


def chat_logprobs(part: Any, top: int) -> Logprobs | None:
    """A chat choice's ``logprobs{content: [{token, logprob, top_logprobs: [{token, logprob}]}]}`` as ours, at
    most ``top`` alternatives per token; entries without a token and a logprob are left out."""
    content = part.get("content") if isinstance(part, dict) else None
    if not isinstance(content, list):
        return None
    return Logprobs(
        content=[
            TokenLogprob(
                token=entry["token"],
                logprob=float(entry["logprob"]),
                top_logprobs=[
                    TopLogprob(token=a["token"], logprob=float(a["logprob"]))
                    for a in _list(entry.get("top_logprobs"))
                    if _is_token_logprob(a)
                ][:top],
            )
            for entry in content
            if _is_token_logprob(entry)
        ]
    )


def prompt_logprobs(positions: list[LegacyPosition], top: int) -> list[PromptTokenLogprob]:
    """Prompt positions as the prompt's token logprobs (a token without a logprob keeps None), at most
    ``top`` alternatives each."""
    return [
        PromptTokenLogprob(
            token=p.token, logprob=p.logprob, top_logprobs=p.alternatives[:top] if p.logprob is not None else []
        )
        for p in positions
    ]


@dataclass(frozen=True)
class EchoedCompletion:
    """An echoed completion split where the prompt ends."""

    text: str  # the answer's, without the prompt
    prompt_logprobs: list[PromptTokenLogprob]
    logprobs: Logprobs | None  # the answer's, when asked


def split_echo(choice: dict[str, Any], prompt: str, prompt_top: int, top: int | None) -> EchoedCompletion | None:
    """OpenAI's echo (``echo`` with ``logprobs``): choice 0's text and legacy logprobs begin with the prompt
    and its tokens. None when they do not (a server that does not echo cannot score prompts)."""
    text = _text(choice.get("text"))
    positions = legacy_positions(choice.get("logprobs"))
    if not positions or not text.startswith(prompt):
        return None
    length = split = 0
    while split < len(positions) and length < len(prompt):
        length += len(positions[split].token)
        split += 1
    if length != len(prompt):
        return None
    answer = None
    if top is not None:
        answer = Logprobs(
            content=[
                TokenLogprob(token=p.token, logprob=p.logprob, top_logprobs=p.alternatives[:top])
                for p in positions[split:]
                if p.logprob is not None
            ]
        )
    return EchoedCompletion(text[len(prompt) :], prompt_logprobs(positions[:split], prompt_top), answer)


# ---------------------------------------------------------------------------------------- embeddings
def embeddings_of(answer: Any, count: int, service: RemoteService, what: str) -> list[list[float]]:
    """``data[{index, embedding}]`` as the vectors of ``count`` texts in input order (vendors number them by
    ``index`` and do not promise their order); a 502 naming the provider when they do not match the texts."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise _bad_answer(service, f"{what} without data: {excerpt(answer)}")
    try:
        ordered = sorted(((int(item["index"]), item["embedding"]) for item in data), key=lambda pair: pair[0])
        vectors = [[float(x) for x in vector] for _, vector in ordered]
    except (KeyError, TypeError, ValueError):
        raise _bad_answer(service, f"{what} with an embedding without index or vector") from None
    indexes = [index for index, _ in ordered]
    if indexes != list(range(count)):
        raise _bad_answer(service, f"{what} with {len(indexes)} embeddings (indexes {indexes[:20]}) for {count} texts")
    return vectors


# ------------------------------------------------------------------------------------------ the reader
def requested_alternatives(request: Any) -> int | None:
    """A request's ``top`` for the reader: how many alternatives each token's logprob entry lists, or None
    when it asked for no logprobs."""
    return int(request.top_logprobs) if request.logprobs else None


class OpenAIAnswerReader:
    """Whole answers and streams in OpenAI's shape, read into the contract's responses and chunks.

    ``top`` is how many alternatives each token's logprob entry lists, or None when the request asked for
    no logprobs (then none are read, whatever the vendor sends). The part readers (:meth:`chat_logprobs`,
    :meth:`chat_event_logprobs`, :meth:`completion_logprobs`, :meth:`completion_event`) read OpenAI's
    shapes; a vendor that shapes a part otherwise overrides its reader.
    """

    # How an answer without finish_reason ended. OpenAI-compatible servers leave it out of their last stream
    # event now and then, having finished all the same.
    unstated_finish = StopReason.finished_ok

    def __init__(self, service: RemoteService):
        self.service = service

    # ---- the parts, in OpenAI's shapes
    def chat_logprobs(self, part: Any, top: int) -> Logprobs | None:
        """A chat choice's ``logprobs``, whole or in a stream event."""
        return chat_logprobs(part, top)

    def chat_event_logprobs(self, choice: dict[str, Any], text: str, top: int) -> Logprobs | None:
        """The logprobs of a chat stream event's choice 0, whose delta's text is ``text``."""
        return self.chat_logprobs(choice.get("logprobs"), top)

    def completion_logprobs(self, part: Any, top: int) -> Logprobs | None:
        """A completion choice's ``logprobs``, whole or in a stream event."""
        return legacy_logprobs(part, top)

    def completion_event(self, event: dict[str, Any], choice: dict[str, Any], top: int | None) -> _Piece:
        """A completion stream event's text and logprobs (``choice``: its choice 0, empty when it has none)."""
        logprobs = None if top is None else self.completion_logprobs(choice.get("logprobs"), top)
        return _text(choice.get("text")), logprobs

    # ---- whole answers
    def chat_response(
        self, answer: Any, top: int | None, what: str = "POST /chat/completions"
    ) -> ChatCompletionResponse:
        choice = first_choice(answer, self.service, what)
        message = _object(choice.get("message"))
        return ChatCompletionResponse(
            content=_text(message.get("content")),
            tool_calls=tool_calls(message.get("tool_calls")),
            stop_reason=self.stop_reason(choice.get("finish_reason")),
            logprobs=None if top is None else self.chat_logprobs(choice.get("logprobs"), top),
            usage=usage_of(answer.get("usage")),
        )

    def completion_response(self, answer: Any, top: int | None, what: str = "POST /completions") -> CompletionResponse:
        choice = first_choice(answer, self.service, what)
        return CompletionResponse(
            content=_text(choice.get("text")),
            stop_reason=self.stop_reason(choice.get("finish_reason")),
            logprobs=None if top is None else self.completion_logprobs(choice.get("logprobs"), top),
            usage=usage_of(answer.get("usage")),
        )

    def stop_reason(self, finish_reason: Any) -> StopReason:
        return stop_reason(finish_reason) if finish_reason else self.unstated_finish

    # ---- streams
    async def chat_chunks(
        self, events: AsyncGenerator[Any, None], top: int | None
    ) -> AsyncIterator[ChatCompletionResponseStreamChunk]:
        """Text as it comes; the tool calls, gathered from their fragments, in order at the end; then the stop
        reason and the usage (of the last event that has one)."""
        calls = ToolCallAssembler()
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):
            async for event in events:
                event = self._event(event, "a chat stream event")
                usage = usage_of(event.get("usage")) or usage
                choice = choice_zero(event) or {}
                finish = _finish_reason(event, choice) or finish
                delta = _object(choice.get("delta"))
                calls.add(delta.get("tool_calls"))
                text = _text(delta.get("content"))
                logprobs = None if top is None else self.chat_event_logprobs(choice, text, top)
                if text or (logprobs is not None and logprobs.content):
                    yield ChatCompletionResponseStreamChunk(
                        text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs
                    )
        for index, call in enumerate(calls.calls()):
            yield ChatCompletionResponseStreamChunk(
                text_delta="", tool_call=call, tool_call_index=index, stop_reason=StopReason.not_stopped
            )
        yield ChatCompletionResponseStreamChunk(text_delta="", stop_reason=self.stop_reason(finish), usage=usage)

    async def completion_chunks(
        self, events: AsyncGenerator[Any, None], top: int | None
    ) -> AsyncIterator[CompletionResponseStreamChunk]:
        """Text as it comes, then the stop reason and the usage (of the last event that has one)."""
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):
            async for event in events:
                event = self._event(event, "a completion stream event")
                usage = usage_of(event.get("usage")) or usage
                choice = choice_zero(event) or {}
                finish = _finish_reason(event, choice) or finish
                text, logprobs = self.completion_event(event, choice, top)
                if text or (logprobs is not None and logprobs.content):
                    yield CompletionResponseStreamChunk(
                        text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs
                    )
        yield CompletionResponseStreamChunk(text_delta="", stop_reason=self.stop_reason(finish), usage=usage)

    def _event(self, event: Any, what: str) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise _bad_answer(self.service, f"{what} that is not an object: {excerpt(event)}")
        return event


# A completion stream event's text and its logprobs.
_Piece = tuple[str, Logprobs | None]


def _finish_reason(event: dict[str, Any], choice: dict[str, Any]) -> Any:
    # Choice 0's, else the event's own: Together's completion stream events carry it beside the choices.
    return choice.get("finish_reason") or event.get("finish_reason")


def _bad_answer(service: RemoteService, what: str) -> ProviderError:
    return ProviderError(f"{service.name} answered {what}", provider=service.provider_id)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_token_logprob(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("token"), str) and _is_number(entry.get("logprob"))


def _function(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    return function if isinstance(function, dict) else {}


def _name(call: dict[str, Any]) -> str:
    return str(_function(call).get("name") or "")


def _id(call: dict[str, Any]) -> str | None:
    return str(call["id"]) if call.get("id") else None
