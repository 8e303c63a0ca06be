"""inline::llama-cpp: GGUF models run in the server process by llama-cpp-python.

How requests are served
-----------------------
llama-cpp-python decodes one request at a time per ``Llama`` object, so each registered model owns a
single worker thread (a one-thread executor) that runs its generations in order. Requests beyond the
running one wait in that executor's FIFO queue, at most ``max_queue`` of them; one more is refused with
503. The event loop never decodes: it admits requests, hands them to the worker and relays its output.

Every generation runs llama-cpp-python's streaming iterator in the worker. For a streamed request each
text piece is handed to the event loop with ``loop.call_soon_threadsafe(queue.put_nowait, text)``, the
least a thread can do to wake the loop; a non-streamed request (and a batch) collects the pieces in the
worker and wakes the loop once. Between tokens the worker checks its job's ``cancelled`` flag: closing a
stream, dropping it, or cancelling the task awaiting a response sets it, so the generation stops within
a token and the model's next request starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import jinja2
from llama_cpp import Llama

from llama_stack.apis.common import Attachment, Content, Dialog, Role, StopReason
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
    SamplingParams,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext

from . import PROVIDER_TYPE
from .config import LlamaCppConfig
from .gguf import resolve_gguf

log = logging.getLogger(__name__)

# llama-cpp-python's finish_reason -> ours. "stop": an end-of-generation token; "length": max_tokens or
# the context window was reached.
_STOP_REASONS = {"stop": StopReason.finished_ok, "length": StopReason.max_tokens}


async def build(config: LlamaCppConfig, context: ProviderContext) -> "LlamaCppInference":
    return LlamaCppInference(config, context)


# ----------------------------------------------------------------------------------------------------
# Requests -> llama-cpp-python calls


def _unsupported(what: str) -> NotSupportedError:
    return NotSupportedError(f"{PROVIDER_TYPE} does not support {what} yet", provider=PROVIDER_TYPE)


def _text(content: Content, where: str) -> str:
    """Plain text of a message's content; a list of strings is concatenated as is."""
    if isinstance(content, str):
        return content
    if isinstance(content, Attachment):
        raise _unsupported(f"attachments ({where} is an attachment of type {content.mime_type})")
    parts = []
    for part in content:
        if not isinstance(part, str):
            raise _unsupported(f"attachments ({where} holds an attachment of type {part.mime_type})")
        parts.append(part)
    return "".join(parts)


def _chat_messages(dialog: Dialog, where: str = "dialog") -> list[dict[str, str]]:
    messages = []
    for index, message in enumerate((*dialog.message_history, dialog.message)):
        at = f"{where}.message" if index == len(dialog.message_history) else f"{where}.message_history[{index}]"
        if message.role == Role.tool:
            raise _unsupported(f"tool messages ({at} has role 'tool')")
        if message.tool_calls:
            raise _unsupported(f"tool calls ({at} has tool_calls)")
        if message.tool_responses:
            raise _unsupported(f"tool responses ({at} has tool_responses)")
        messages.append({"role": message.role.value, "content": _text(message.content, f"{at}.content")})
    return messages


def _check_options(logprobs: bool, available_tools: list[Any] | None = None) -> None:
    if logprobs:
        raise _unsupported("logprobs (logprobs: true)")
    if available_tools:
        names = ", ".join(str(getattr(t.tool_name, "value", t.tool_name)) for t in available_tools)
        raise _unsupported(f"tools (available_tools: {names})")


def _options(sampling: SamplingParams, max_tokens: int) -> dict[str, Any]:
    """llama-cpp-python's sampling arguments: nothing but what the request asks for."""
    if sampling.strategy == "greedy":
        temperature, top_p, top_k = 0.0, 1.0, 0  # llama.cpp samples greedily at temperature 0
    else:
        temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k  # top_k 0: no limit
    return {
        "max_tokens": max_tokens,  # 0: until the model stops or the context is full
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
    }


def _stop_reason(finish_reason: str | None) -> StopReason:
    return _STOP_REASONS.get(finish_reason or "stop", StopReason.finished_ok)


def _chat_text(choice: dict[str, Any]) -> str | None:
    return choice["delta"].get("content")


def _completion_text(choice: dict[str, Any]) -> str:
    return choice["text"]


class _Call:
    """One generation: a chat (messages, through the GGUF's chat template) or a raw completion (prompt)."""

    __slots__ = ("chat", "prompt", "options")

    def __init__(self, chat: bool, prompt: Any, options: dict[str, Any]):
        self.chat = chat
        self.prompt = prompt
        self.options = options

    def start(self, llm: Llama) -> Iterator[dict[str, Any]]:
        if self.chat:
            # chat_format unset: llama-cpp-python formats with the GGUF's tokenizer.chat_template.
            return llm.create_chat_completion(messages=self.prompt, stream=True, **self.options)  # type: ignore[return-value]
        return llm.create_completion(self.prompt, stream=True, **self.options)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# The worker side (runs in a model's thread)


class _Job:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        # Set from the event loop, read by the worker between tokens (a plain attribute: no lock needed).
        self.cancelled = False


def _pump(job: _Job, llm: Llama, call: _Call, emit: Callable[[str], Any]) -> str | None:
    """Run one generation, handing each text piece to ``emit``; return llama.cpp's finish_reason."""
    text_of = _chat_text if call.chat else _completion_text
    chunks = call.start(llm)
    finish = None
    try:
        for chunk in chunks:
            choice = chunk["choices"][0]
            text = text_of(choice)
            if text:
                emit(text)
            if job.cancelled:
                return None
            finish = choice["finish_reason"]
    finally:
        chunks.close()  # type: ignore[attr-defined]  # a generator: stops llama.cpp at once
    return finish


def _collect_job(job: _Job, llm: Llama, calls: list[_Call]) -> list[tuple[str, str | None]]:
    results = []
    for call in calls:
        if job.cancelled:
            break
        pieces: list[str] = []
        finish = _pump(job, llm, call, pieces.append)
        results.append(("".join(pieces), finish))
    return results


def _run_job(model_id: str, provider_id: str, job: _Job, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        if not job.cancelled:  # else given up while it waited
            result = fn(job, *args)
        if not job.cancelled:
            return result
    except LlamaStackError:
        raise
    except (ValueError, jinja2.TemplateError) as exc:
        # llama-cpp-python raises ValueError for a prompt longer than the context; templates may refuse a dialog.
        raise BadRequestError(f"model {model_id!r}: {exc}", provider=provider_id) from exc
    except Exception as exc:
        raise ProviderError(f"model {model_id!r}: llama.cpp failed: {type(exc).__name__}: {exc}", provider=provider_id) from exc
    # Stopped: whoever asked is gone (a closed stream, a cancelled task), or the provider is shutting down.
    raise ServiceUnavailableError(
        f"model {model_id!r}: the generation was stopped ({provider_id} is shutting down)", provider=provider_id
    )


# ----------------------------------------------------------------------------------------------------
# The event-loop side


class _ModelSlot:
    """A loaded model, its worker thread and its queue."""

    def __init__(self, model: Model, reference: str, path: Path, llm: Llama, max_queue: int):
        self.model = model
        self.reference = reference
        self.path = path
        self.llm = llm
        self.max_queue = max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-cpp[{model.model_id}]")
        # Requests admitted and not finished: the running one plus those waiting. Event loop only.
        self.admitted = 0
        self.jobs: set[_Job] = set()


class _ChunkStream:
    """The chunks of one streamed generation, fed by the model's worker thread.

    ``aclose()`` (or dropping the stream, or cancelling the task awaiting the next chunk) stops the
    generation; ``aclose()`` also waits until the worker has let go of the model, at most a token away.
    """

    __slots__ = ("_queue", "_job", "_future", "_released", "_chunk", "_done", "__weakref__")

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        job: _Job,
        future: Future[Any],
        released: asyncio.Future[None],
        chunk: type[ChatCompletionResponseStreamChunk] | type[CompletionResponseStreamChunk],
    ):
        self._queue = queue
        self._job = job
        self._future = future
        self._released = released
        self._chunk = chunk
        self._done = False

    def __aiter__(self) -> "_ChunkStream":
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled: the client went away
            self._stop()
            raise
        if item.__class__ is str:
            return self._chunk(text_delta=item)
        # The job's future: the generation is over (or failed).
        self._done = True
        finish = item.result()
        return self._chunk(text_delta="", stop_reason=_stop_reason(finish))

    def _stop(self) -> None:
        self._done = True
        self._job.cancelled = True
        self._future.cancel()  # still waiting for the model: leave the queue now

    async def aclose(self) -> None:
        self._stop()
        await asyncio.shield(self._released)

    def __del__(self) -> None:
        if not self._done:
            self._stop()


class LlamaCppInference:
    """The Inference API over llama-cpp-python; models come in through ``register_model``."""

    def __init__(self, config: LlamaCppConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self._slots: dict[str, _ModelSlot] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> None:
        """Load the model's GGUF (off the event loop). Called by the runtime before serving."""
        reference = model.provider_model_id or model.model_id
        existing = self._slots.get(model.model_id)
        if existing is not None:
            if existing.reference == reference:
                return
            raise ConflictError(
                f"model {model.model_id!r} is already registered with {existing.reference!r}",
                provider=self.provider_id,
            )
        try:
            path = resolve_gguf(reference)
        except LlamaStackError as exc:
            raise type(exc)(f"model {model.model_id!r}: {exc.message}", provider=self.provider_id) from None
        llm = await asyncio.to_thread(self._load, model.model_id, path)
        self._slots[model.model_id] = _ModelSlot(model, reference, path, llm, self.config.max_queue)
        log.info("%s: model %s loaded from %s (n_ctx %d)", self.provider_id, model.model_id, path, llm.n_ctx())

    def _load(self, model_id: str, path: Path) -> Llama:
        def load(n_ctx: int) -> Llama:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=self.config.n_threads,
                n_batch=self.config.n_batch,
                verbose=self.config.verbose,
            )

        try:
            llm = load(self.config.n_ctx)
            if llm.n_ctx() != len(llm.input_ids):
                # llama.cpp pads the context (to a multiple of 256) while llama-cpp-python sizes its token
                # buffer by the n_ctx asked for; past that size it fails or drops tokens. Ask for the padded size.
                padded = llm.n_ctx()
                llm.close()
                llm = load(padded)
            return llm
        except ValueError as exc:  # "Failed to load model from file: ..."
            raise BadRequestError(
                f"model {model_id!r}: llama.cpp could not load {str(path)!r} (is it a GGUF model?): {exc}",
                provider=self.provider_id,
            ) from exc

    async def shutdown(self) -> None:
        """Stop every generation and free the models. Called by the runtime at exit."""
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            for job in slot.jobs:  # running and waiting: each ends with 503 at once
                job.cancelled = True
        if slots:
            await asyncio.to_thread(_close_slots, slots)

    # -- admission ----------------------------------------------------------------------------------

    def _slot(self, model_id: str) -> _ModelSlot:
        slot = self._slots.get(model_id)
        if slot is None:
            served = ", ".join(repr(m) for m in sorted(self._slots)) or "none"
            raise NotFoundError(
                f"model {model_id!r} is not served by {self.provider_id} ({PROVIDER_TYPE}); its models: {served}",
                provider=self.provider_id,
            )
        return slot

    def _submit(
        self, slot: _ModelSlot, fn: Callable[..., Any], *args: Any, on_done: Callable[[Future[Any]], Any] | None = None
    ) -> tuple[_Job, Future[Any]]:
        """Queue a job on the model's worker, or refuse it with 503 when max_queue are already waiting."""
        if slot.admitted > slot.max_queue:
            raise ServiceUnavailableError(
                f"model {slot.model.model_id!r} is busy: a request is being generated and {slot.max_queue} "
                f"more are waiting, the most its queue holds (max_queue={slot.max_queue}); retry later",
                provider=self.provider_id,
            )
        loop = asyncio.get_running_loop()
        job = _Job()
        try:
            future = slot.executor.submit(_run_job, slot.model.model_id, self.provider_id, job, fn, *args)
        except RuntimeError:  # the executor is shut down
            raise ServiceUnavailableError(
                f"model {slot.model.model_id!r}: {self.provider_id} is shutting down", provider=self.provider_id
            ) from None
        slot.admitted += 1
        slot.jobs.add(job)

        def settle(done: Future[Any]) -> None:  # on the event loop
            slot.admitted -= 1
            slot.jobs.discard(job)
            if on_done is not None:
                on_done(done)

        def finished(done: Future[Any]) -> None:  # in the worker thread (or wherever it was cancelled)
            try:
                loop.call_soon_threadsafe(settle, done)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                pass

        future.add_done_callback(finished)
        return job, future

    async def _collect(self, slot: _ModelSlot, calls: list[_Call]) -> list[tuple[str, str | None]]:
        job, future = self._submit(slot, _collect_job, slot.llm, calls)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            job.cancelled = True  # wrap_future cancels it too if it is still waiting
            raise

    def _open_stream(self, slot: _ModelSlot, call: _Call, chunk: type[Any]) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        released: asyncio.Future[None] = loop.create_future()

        def on_done(done: Future[Any]) -> None:
            queue.put_nowait(done)
            if not released.done():
                released.set_result(None)

        emit = partial(loop.call_soon_threadsafe, queue.put_nowait)
        job, future = self._submit(slot, _pump, slot.llm, call, emit, on_done=on_done)
        return _ChunkStream(queue, job, future, released, chunk)

    # -- the Inference API --------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        slot = self._slot(request.model)
        _check_options(request.logprobs)
        call = _Call(False, _text(request.content, "content"), _options(request.sampling_params, request.max_tokens))
        if request.stream:
            return self._open_stream(slot, call, CompletionResponseStreamChunk)
        ((text, finish),) = await self._collect(slot, [call])
        return CompletionResponse(content=text, stop_reason=_stop_reason(finish))

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        slot = self._slot(request.model)
        _check_options(request.logprobs, request.available_tools)
        call = _Call(True, _chat_messages(request.dialog), _options(request.sampling_params, request.max_tokens))
        if request.stream:
            return self._open_stream(slot, call, ChatCompletionResponseStreamChunk)
        ((text, finish),) = await self._collect(slot, [call])
        return ChatCompletionResponse(content=text, stop_reason=_stop_reason(finish))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """One queue place for the whole batch; the prompts run one after another, in input order."""
        slot = self._slot(request.model)
        _check_options(request.logprobs)
        options = _options(request.sampling_params, request.max_tokens)
        calls = [_Call(False, _text(c, f"content_batch[{i}]"), options) for i, c in enumerate(request.content_batch)]
        if not calls:
            return []
        results = await self._collect(slot, calls)
        return [CompletionResponse(content=text, stop_reason=_stop_reason(finish)) for text, finish in results]

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """One queue place for the whole batch; the dialogs run one after another, in input order."""
        slot = self._slot(request.model)
        _check_options(request.logprobs, request.available_tools)
        options = _options(request.sampling_params, request.max_tokens)
        calls = [
            _Call(True, _chat_messages(d, f"batch_dialogs[{i}]"), options) for i, d in enumerate(request.batch_dialogs)
        ]
        if not calls:
            return []
        results = await self._collect(slot, calls)
        return [ChatCompletionResponse(content=text, stop_reason=_stop_reason(finish)) for text, finish in results]


def _close_slots(slots: list[_ModelSlot]) -> None:
    for slot in slots:
        slot.executor.shutdown(wait=True)  # the running generation stops at its next token
        try:
            slot.llm.close()
        except Exception:  # freeing is best effort at exit
            log.exception("closing model %s failed", slot.model.model_id)
