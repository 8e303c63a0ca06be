"""A model's streamed answer as the contract's stream chunks: text as it comes, each tool call its own chunk.

Interface (stable; other providers use it):

- ``ToolCallStream(fmt, tools)``: ``feed(text_delta, logprobs=None) -> [chunk]``,
  ``finish(stop_reason, usage=None) -> [chunk]`` (the last chunk carries stop_reason and usage).
"""

from __future__ import annotations

from typing import Any

from llama_stack.apis.common import StopReason, ToolCall, ToolDefinition
from llama_stack.apis.inference import ChatCompletionResponseStreamChunk, Logprobs, TokenLogprob, Usage

from .formats import ToolFormat
from .parse import AnswerSplitter

__all__ = ["ToolCallStream"]


class ToolCallStream:
    """Splits a model's streamed answer into text chunks and tool-call chunks.

    Text that may start a tool call is held back until it is known to be one (:class:`.parse.AnswerSplitter`
    says how); a call is emitted as its own chunk (``text_delta ""``, ``tool_call``, ``tool_call_index``
    counting from 0). Logprobs of held-back text travel with the next chunk emitted. With no tools offered
    the text passes through as it comes.
    """

    def __init__(self, fmt: ToolFormat, tools: list[ToolDefinition]):
        self._splitter = AnswerSplitter(fmt, tools)
        self._active = bool(tools)
        self._held_logprobs: list[TokenLogprob] = []
        self.calls: list[ToolCall] = []

    def feed(
        self, text_delta: str, logprobs: list[TokenLogprob] | None = None
    ) -> list[ChatCompletionResponseStreamChunk]:
        if logprobs:
            self._held_logprobs.extend(logprobs)
        if not self._active:
            if not text_delta and not self._held_logprobs:
                return []
            return [self._chunk(text_delta)]
        return self._chunks(self._splitter.split(text_delta, final=False))

    def finish(
        self, stop_reason: StopReason | str | None, usage: Usage | None = None
    ) -> list[ChatCompletionResponseStreamChunk]:
        chunks = self._chunks(self._splitter.split("", final=True)) if self._active else []
        last = self._chunk("", stop_reason=stop_reason, usage=usage)
        return [*chunks, last]

    def _chunks(self, pieces: list[str | ToolCall]) -> list[ChatCompletionResponseStreamChunk]:
        chunks = []
        for piece in pieces:
            if isinstance(piece, str):
                chunks.append(self._chunk(piece))
                continue
            chunks.append(self._chunk("", tool_call=piece, tool_call_index=len(self.calls)))
            self.calls.append(piece)
        return chunks

    def _chunk(self, text: str, **fields: Any) -> ChatCompletionResponseStreamChunk:
        if self._held_logprobs:
            fields["logprobs"] = Logprobs(content=self._held_logprobs)
            self._held_logprobs = []
        return ChatCompletionResponseStreamChunk(text_delta=text, **fields)
