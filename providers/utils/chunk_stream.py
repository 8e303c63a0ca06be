"""The chunks of a streamed local generation, made on the event loop from what the model's worker emits.

Shared by the local providers. Their engines (on the model's worker thread, or in an engine process behind
it) emit the answer's text as it is decoded, stop strings already applied, as *pieces*: a ``str``, or
``(str, [TokenLogprob])`` when logprobs were asked for (the entries of the tokens that piece completes).
The job's result says how the generation ended (:class:`StreamEnd`). :class:`ChunkStream` turns each
piece into a text chunk, or feeds it to the tool-call parser when tools are offered, and the end into a
last chunk with the stop reason and usage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from llama_stack.apis.common import StopReason
from llama_stack.apis.inference import (
    ChatCompletionResponseStreamChunk,
    CompletionResponseStreamChunk,
    Logprobs,
    TokenLogprob,
    Usage,
)
from llama_stack.providers.utils.model_worker import ModelWorker, WorkerStream

if TYPE_CHECKING:
    from llama_stack.providers.utils.inference.tool_calls.stream import ToolCallStream

Piece = str | tuple[str, list[TokenLogprob]]
ChunkType = type[ChatCompletionResponseStreamChunk] | type[CompletionResponseStreamChunk]


class StreamEnd(Protocol):
    """How a streamed generation ended: the result of its job."""

    @property
    def stop_reason(self) -> StopReason: ...

    @property
    def usage(self) -> Usage: ...

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        """Entries no piece carried (tokens after the last one), else empty or None."""
        ...


def piece_emitter(emit: Callable[[Piece], Any]) -> Callable[[str, list[TokenLogprob] | None], None]:
    """``on_text(text, entries)`` for a decode loop that hands text and logprob entries separately: sends
    them as one piece (text alone when no entry came with it)."""

    def on_text(text: str, entries: list[TokenLogprob] | None) -> None:
        emit((text, entries) if entries else text)

    return on_text


class ChunkStream(WorkerStream):
    """The chunks of one streamed generation: ``fn(job, *args, emit)`` runs on ``worker`` and emits pieces;
    each becomes a ``chunk`` (through ``tools``, the tool-call parser, when tools are offered); then a last
    chunk with the stop reason and usage."""

    __slots__ = ("_chunk", "_ready", "_tools")

    def __init__(
        self,
        worker: ModelWorker,
        chunk: ChunkType,
        tools: ToolCallStream | None,
        fn: Callable[..., Any],
        *args: Any,
    ):
        self._chunk = chunk
        self._tools = tools
        self._ready: deque[Any] = deque()
        super().__init__(worker, fn, *args)

    async def __anext__(self) -> Any:
        # Once per token: the common cases are tested first, by exact class.
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._done:
                raise StopAsyncIteration
            item = await self._next_item()
            kind = item.__class__
            if kind is str:
                if self._tools is None:
                    return self._chunk(text_delta=item)
                self._ready.extend(self._tools.feed(item))
            elif kind is tuple:
                text, entries = item
                if self._tools is None:
                    return self._chunk(text_delta=text, logprobs=Logprobs(content=entries))
                self._ready.extend(self._tools.feed(text, entries))
            else:  # the job's future: the generation is over (or failed)
                self._done = True
                self._finish(item.result())

    def _finish(self, end: StreamEnd) -> None:
        trailing = end.logprobs
        if self._tools is None:
            logprobs = Logprobs(content=trailing) if trailing else None
            self._ready.append(
                self._chunk(text_delta="", stop_reason=end.stop_reason, usage=end.usage, logprobs=logprobs)
            )
            return
        self._ready.extend(self._tools.finish(end.stop_reason, usage=end.usage))
        if trailing:  # the last chunk carries them
            last = self._ready[-1]
            held = last.logprobs.content if last.logprobs else []
            self._ready[-1] = last.model_copy(update={"logprobs": Logprobs(content=[*held, *trailing])})

    def _stop(self) -> None:
        super()._stop()
        self._ready.clear()
