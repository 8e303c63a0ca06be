"""inline::llama-cpp: GGUF models run by llama-cpp-python, each in an engine process of its own.

How requests are served
-----------------------
Each registered model runs in a child process of the server, its engine (:mod:`.engine_process`,
supervised by :class:`~llama_stack.providers.utils.process_supervisor.SupervisedWorker`): llama.cpp's
weights, context, grammars and sampling live there, so a C++ exception, an assertion or a segfault in
llama.cpp ends that process and not the server. A second, small process per model holds the GGUF's
vocabulary alone (``vocab_only``): it reports the chat template, the token texts and the vocabulary size at
registration, and parses each new grammar, since llama.cpp's grammar parser can be crashed by a schema.
The server process loads no model and parses no grammar (it imports llama-cpp-python for its chat formatter).

The server keeps, per model, one worker thread with a FIFO queue (``ModelWorker``) that hands jobs to the
engine process one at a time: llama.cpp decodes one request at a time per model. Requests beyond the
running one wait there, at most ``max_queue`` of them; one more is refused with 503. The event loop never
decodes: it admits requests, prepares them (attachments fetched, the chat template rendered, a grammar
built and checked) and relays the output.

For a streamed request the engine process sends each text piece over its pipe as it is decoded; the
worker thread hands it to the event loop with ``loop.call_soon_threadsafe(queue.put_nowait, piece)``. A
non-streamed request (and a batch) is collected in the engine process and comes back once. Closing a
stream, dropping it, or cancelling the task awaiting a response cancels the job: the job's number goes to
the engine process over a control pipe, and the generation stops within a token.

When the engine process dies (killed by SIGABRT, SIGSEGV, ...), the request it was serving fails with 502
and the requests queued behind it with 503 (``Retry-After``); every error names the provider and the
model and says that llama.cpp crashed and the model is being reloaded. (A grammar that crashes the
vocabulary process is the request's fault: a 400 naming the field.) The crash is logged with the exit
signal, the model is reloaded in a new process, and later requests are served (crashes in a row back off
up to 30 s). :meth:`LlamaCppInference.shutdown` stops the generations and the engine processes; an
engine process also exits by itself when the server dies (its control pipe closes).

The generation loop itself (stop sequences, UTF-8 pieces, logprobs without ``logits_all``, prompt
logprobs) is in :mod:`.generation`.

Chat, tools, structured output
------------------------------
Chat messages go through :func:`~llama_stack.providers.utils.inference.tool_calls.render.render_messages` (tools
offered in the model's format: Llama 3.x models get Meta's Llama 3.1 format, others the documented json
format) and then the GGUF's own chat template. Answers are split into text and tool calls by the shared
parser, streamed through ``ToolCallStream``. A ``response_format`` becomes a llama.cpp grammar (GBNF
text made from the JSON schema in this process by :func:`grammar_text`, parsed once by the vocabulary
process, compiled in the engine process); so does a forced tool call (``tool_choice`` 'required' or a tool's name), which makes
even a small model answer with a well-formed call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llama_stack.apis.common import Dialog, ToolDefinition
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
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
    Logprobs,
    ResponseFormat,
    TokenLogprob,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.gguf import resolve_gguf
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments, dialog_contents
from llama_stack.providers.utils.inference.sampling import check_logit_bias
from llama_stack.providers.utils.inference.structured import json_schema_for, llama_cpp_json_grammar
from llama_stack.providers.utils.inference.tool_calls.formats import (
    ToolFormat,
    offered_tools,
    tool_call_schema,
    tool_format_for,
)
from llama_stack.providers.utils.inference.tool_calls.parse import parse_tool_calls
from llama_stack.providers.utils.inference.tool_calls.render import llama3_builtin_names, render_messages
from llama_stack.providers.utils.inference.tool_calls.stream import ToolCallStream
from llama_stack.providers.utils.model_worker import Job, ModelWorker, WorkerStream, close_slots, served_slot
from llama_stack.providers.utils.process_supervisor import EngineCrashedError, SupervisedWorker, no_backoff
from llama_stack.providers.utils.process_worker import EngineError, WorkerCrashed

from . import PROVIDER_TYPE
from .config import LlamaCppConfig
from .engine_process import (
    CHECK_GRAMMAR,
    COLLECT,
    STREAM,
    LlamaSpec,
    LoadedFacts,
    VocabularyFacts,
    VocabularySpec,
    open_llama,
    open_vocabulary,
)
from .generation import Gen, Outcome

log = logging.getLogger(__name__)

# Used for GGUFs without a chat template (llama.cpp's own fallback is ChatML as well).
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Grammar checks that may wait for the vocabulary process (each takes milliseconds); one more is a 503.
_CHECKS_QUEUED = 64


async def build(config: LlamaCppConfig, context: ProviderContext) -> LlamaCppInference:
    return LlamaCppInference(config, context)


def grammar_text(schema: dict[str, Any], *, strict: bool = True) -> str:
    """The llama.cpp grammar (GBNF, root rule ``root``) that a JSON schema's answers must match.

    The one place a schema becomes a grammar: response formats and forced tool calls both come here.
    ``strict`` (response formats) refuses schema keywords the grammar would not enforce; a forced call's
    arguments are constrained as far as the grammar goes.
    """
    return llama_cpp_json_grammar(schema, strict=strict)


def _run_job(model_id: str, provider_id: str, job: Job, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs on the model's worker thread; ``fn`` hands the job to the engine process."""
    try:
        if not job.cancelled:  # else given up while it waited
            result = fn(job, *args)
        if not job.cancelled:
            return result
    except LlamaStackError:
        raise
    except ValueError as exc:
        # A prompt longer than the context window.
        raise BadRequestError(f"model {model_id!r}: {exc}", provider=provider_id) from exc
    except Exception as exc:
        kind = exc.type_name if isinstance(exc, EngineError) else type(exc).__name__
        raise ProviderError(f"model {model_id!r}: llama.cpp failed: {kind}: {exc}", provider=provider_id) from exc
    # Stopped: whoever asked is gone (a closed stream, a cancelled task), or the provider is shutting down.
    raise ServiceUnavailableError(
        f"model {model_id!r}: the generation was stopped ({provider_id} is shutting down)", provider=provider_id
    )


def _engine_env(config: LlamaCppConfig) -> dict[str, str]:
    env = dict(os.environ)
    if not config.verbose:
        # On an abort ggml attaches gdb to print a backtrace: seconds during which the requests wait for the
        # crash to be noticed. llama.cpp's own message ("terminate called ...") is printed either way.
        env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


# ----------------------------------------------------------------------------------------------------
# The event-loop side


class _ModelSlot:
    """A registered model: its two processes (the engine, the vocabulary) with a worker thread and queue each,
    its chat template."""

    def __init__(self, model: Model, provider_id: str, reference: str, path: Path, config: LlamaCppConfig):
        self.model = model
        self.reference = reference
        self.path = path
        self.worker = ModelWorker(
            model.model_id, provider_id, "llama-cpp", config.max_queue, partial(_run_job, model.model_id, provider_id)
        )
        # Grammar checks do not wait behind a generation: the vocabulary process has its own queue.
        self.checks = ModelWorker(
            model.model_id,
            provider_id,
            "llama-cpp-vocab",
            _CHECKS_QUEUED,
            partial(_run_job, model.model_id, provider_id),
        )
        self.workers = [self.worker, self.checks]
        supervised = {"model_id": model.model_id, "provider_id": provider_id, "env": _engine_env(config)}
        self.vocabulary = SupervisedWorker(
            engine="llama.cpp (vocabulary)",
            opener=open_vocabulary,
            argument=VocabularySpec(path=str(path), verbose=config.verbose),
            worker=self.checks,
            # It crashes only on a grammar a request sent (that request gets a 400), and reloads in a moment:
            # others' checks should not wait out a backoff.
            backoff=no_backoff,
            **supervised,
        )
        self._spec = LlamaSpec(
            path=str(path),
            n_ctx=model.context_length or config.n_ctx,
            n_threads=config.n_threads,
            n_batch=config.n_batch,
            verbose=config.verbose,
            python_tag=False,
        )
        self.engine = SupervisedWorker(
            engine="llama.cpp", opener=open_llama, argument=self._spec, worker=self.worker, **supervised
        )
        self.loaded: LoadedFacts | None = None

    def load(self) -> LoadedFacts:
        """Start the vocabulary process, then the engine process, which loads the weights (blocking)."""
        vocabulary: VocabularyFacts = self.vocabulary.start()
        self.n_vocab = vocabulary.n_vocab
        template = vocabulary.chat_template
        name = " ".join(filter(None, [self.model.model_id, self.reference, vocabulary.name]))
        self.tool_format = tool_format_for(name, template)
        self.chat_template = template or _CHATML_TEMPLATE
        self.formatter = Jinja2ChatFormatter(
            template=self.chat_template, eos_token=vocabulary.eos_text, bos_token=vocabulary.bos_text
        )
        # Llama 3.1+ templates write the "Cutting Knowledge Date" header themselves.
        self.template_writes_llama3_header = "Cutting Knowledge Date" in self.chat_template

        self.engine.argument = replace(self._spec, python_tag=self.tool_format == ToolFormat.llama3)
        loaded: LoadedFacts = self.engine.start()
        # Reloads after a crash ask for the window llama.cpp gave (padded), sparing its second load.
        self.engine.argument = replace(self.engine.argument, n_ctx=loaded.n_ctx)
        self.loaded = loaded
        return loaded

    def close(self) -> None:
        self.engine.close()
        self.vocabulary.close()

    async def grammar_parses(self, grammar: str) -> bool:
        """Whether llama.cpp parses ``grammar`` (in the vocabulary process); raises EngineCrashedError when
        the parser crashed."""
        return await self.checks.run(self.vocabulary.run, self.vocabulary.epoch, CHECK_GRAMMAR, grammar)

    def render(self, dialog: Dialog, request: Any, inlined: InlinedAttachments, where: str) -> str:
        tools = offered_tools(request.available_tools, request.tool_choice)
        extra: dict[str, Any] = {}
        header = True
        if self.tool_format == ToolFormat.llama3 and tools and self.template_writes_llama3_header:
            header = False
            builtins = llama3_builtin_names(tools)
            if builtins:
                extra["builtin_tools"] = builtins
        messages = render_messages(
            dialog,
            request.available_tools,
            request.tool_choice,
            self.tool_format,
            inlined,
            where=where,
            llama3_header=header,
        )
        try:
            return self.formatter(messages=messages, **extra).prompt
        except (jinja2.TemplateError, ValueError) as exc:  # templates may refuse a dialog (raise_exception)
            raise BadRequestError(
                f"model {self.model.model_id!r}: its chat template refused {where}: {exc}",
                details=[{"loc": where, "in": "body", "message": str(exc)}],
            ) from exc

    async def run(self, kind: str, payload: Any) -> Any:
        """Queue a job for the engine process and wait for its result."""
        return await self.worker.run(self.engine.run, self.engine.epoch, kind, payload)


class _ChunkStream(WorkerStream):
    """The chunks of one streamed generation: the worker's text pieces (through the tool-call parser when
    tools are offered), then a last chunk with the stop reason and usage."""

    __slots__ = ("_chunk", "_ready", "_tools")

    def __init__(
        self,
        slot: _ModelSlot,
        gen: Gen,
        chunk: type[ChatCompletionResponseStreamChunk] | type[CompletionResponseStreamChunk],
        tools: ToolCallStream | None,
    ):
        self._chunk = chunk
        self._tools = tools
        self._ready: deque[Any] = deque()
        super().__init__(slot.worker, slot.engine.run, slot.engine.epoch, STREAM, gen)

    async def __anext__(self) -> Any:
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
                outcome: Outcome = item.result()
                if self._tools is not None:
                    self._ready.extend(self._tools.finish(outcome.stop_reason, usage=outcome.usage))
                    if outcome.logprobs:
                        last = self._ready[-1]
                        held = last.logprobs.content if last.logprobs else []
                        self._ready[-1] = last.model_copy(
                            update={"logprobs": Logprobs(content=[*held, *outcome.logprobs])}
                        )
                else:
                    logprobs = Logprobs(content=outcome.logprobs) if outcome.logprobs else None
                    self._ready.append(
                        self._chunk(
                            text_delta="", stop_reason=outcome.stop_reason, usage=outcome.usage, logprobs=logprobs
                        )
                    )

    def _stop(self) -> None:
        super()._stop()
        self._ready.clear()


class LlamaCppInference:
    """The Inference API over llama-cpp-python; models come in through ``register_model``."""

    # The router hands this provider completions with prompt_logprobs (see docs/plugins.md).
    scores_prompts = True

    def __init__(self, config: LlamaCppConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self._slots: dict[str, _ModelSlot] = {}
        self._attachments = AttachmentInliner(config.attachments)
        self._grammars: dict[str, str] = {}  # JSON schema -> grammar text (checked once)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Load the model's GGUF (off the event loop). Called by the runtime before serving.

        The context window is the entry's ``context_length``, else the provider's ``n_ctx``; the model comes
        back with the window llama.cpp gave it (rounded up to a multiple of 256).
        """
        reference = model.provider_model_id or model.model_id
        existing = self._slots.get(model.model_id)
        if existing is not None:
            if existing.reference == reference:
                return existing.model
            raise ConflictError(
                f"model {model.model_id!r} is already registered with {existing.reference!r}",
                provider=self.provider_id,
            )
        try:
            path = resolve_gguf(reference)
        except LlamaStackError as exc:
            raise type(exc)(f"model {model.model_id!r}: {exc.message}", provider=self.provider_id) from None
        slot = _ModelSlot(model, self.provider_id, reference, path, self.config)
        try:
            loaded = await asyncio.to_thread(self._load, slot)
        except BaseException:
            await asyncio.to_thread(slot.close)
            raise
        slot.model = model = model.model_copy(update={"context_length": loaded.n_ctx})
        self._slots[model.model_id] = slot
        log.info(
            "%s: model %s loaded from %s (n_ctx %d) in llama.cpp process %s (vocabulary: process %s)",
            self.provider_id,
            model.model_id,
            path,
            loaded.n_ctx,
            slot.engine.pid,
            slot.vocabulary.pid,
        )
        return model

    def _load(self, slot: _ModelSlot) -> LoadedFacts:
        model_id = slot.model.model_id
        try:
            return slot.load()
        except ValueError as exc:  # "Failed to load model from file: ..."
            raise BadRequestError(
                f"model {model_id!r}: llama.cpp could not load {str(slot.path)!r} (is it a GGUF model?): {exc}",
                provider=self.provider_id,
            ) from exc
        except WorkerCrashed as crash:
            raise ProviderError(
                f"model {model_id!r}: llama.cpp crashed ({crash.status}) while loading {str(slot.path)!r}",
                provider=self.provider_id,
            ) from None
        except Exception as exc:
            kind = exc.type_name if isinstance(exc, EngineError) else type(exc).__name__
            raise ProviderError(
                f"model {model_id!r}: llama.cpp could not load {str(slot.path)!r}: {kind}: {exc}",
                provider=self.provider_id,
            ) from exc

    async def shutdown(self) -> None:
        """Stop every generation and free the models. Called by the runtime at exit."""
        await close_slots(self._slots)

    # -- admission ----------------------------------------------------------------------------------

    def _slot(self, request: Any) -> _ModelSlot:
        """The model's slot, once the request's logit_bias is known to fit its vocabulary."""
        slot = served_slot(self._slots, request.model, self.provider_id, PROVIDER_TYPE)
        check_logit_bias(request.sampling_params, slot.n_vocab, slot.model.model_id, self.provider_id)
        return slot

    # -- preparing requests -------------------------------------------------------------------------

    async def _grammar(
        self, slot: _ModelSlot, response_format: ResponseFormat | None, forced_call: dict[str, Any] | None
    ) -> str | None:
        """A llama.cpp grammar for the response format (or, without one, for a forced tool call), once
        llama.cpp has parsed it (in the model's vocabulary process: a schema can crash the parser)."""
        schema = json_schema_for(response_format)
        where = (
            "response_format.json_schema"
            if response_format and response_format.type == "json_schema"
            else "response_format"
        )
        if schema is None:
            schema, where = forced_call, "tool_choice"
        if schema is None:
            return None
        strict = where != "tool_choice"
        key = json.dumps([strict, schema], sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        try:
            grammar = grammar_text(schema, strict=strict)
        except Exception as exc:  # the converter rejects what it cannot express (remote $ref, ...)
            raise BadRequestError(
                f"{where}: llama.cpp cannot turn this JSON schema into a grammar: {type(exc).__name__}: {exc}",
                details=[{"loc": where, "in": "body", "message": str(exc)}],
                provider=self.provider_id,
            ) from None
        try:
            parses = await slot.grammar_parses(grammar)
        except EngineCrashedError:
            raise BadRequestError(
                f"{where}: llama.cpp crashed parsing the grammar made from this JSON schema (nested too deeply?)",
                details=[{"loc": where, "in": "body", "message": "unsupported JSON schema"}],
                provider=self.provider_id,
            ) from None
        if not parses:
            raise BadRequestError(
                f"{where}: llama.cpp could not parse the grammar made from this JSON schema",
                details=[{"loc": where, "in": "body", "message": "unsupported JSON schema"}],
                provider=self.provider_id,
            )
        if len(self._grammars) >= 64:  # a small cache: clients tend to send the same few schemas
            self._grammars.pop(next(iter(self._grammars)))
        self._grammars[key] = grammar
        return grammar

    def _gen(self, slot: _ModelSlot, prompt: str, chat: bool, request: Any, grammar: str | None) -> Gen:
        return Gen(
            prompt,
            chat,
            sampling=request.sampling_params,
            max_tokens=request.max_tokens,
            stop=request.stop,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
            grammar=grammar,
            prompt_logprobs=getattr(request, "prompt_logprobs", None),
        )

    async def _chat_grammar(self, slot: _ModelSlot, request: Any) -> str | None:
        tools = offered_tools(request.available_tools, request.tool_choice)
        return await self._grammar(
            slot, request.response_format, tool_call_schema(tools, request.tool_choice, slot.tool_format)
        )

    # -- the Inference API --------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        slot = self._slot(request)
        grammar = await self._grammar(slot, request.response_format, None)
        inlined = await self._attachments.fetch([(request.content, "content")], model=request.model)
        gen = self._gen(slot, inlined(request.content, "content"), False, request, grammar)
        if request.stream:
            return _ChunkStream(slot, gen, CompletionResponseStreamChunk, None)
        ((text, entries, outcome),) = await slot.run(COLLECT, [gen])
        return _completion_response(text, entries, outcome, request.logprobs)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        slot = self._slot(request)
        grammar = await self._chat_grammar(slot, request)
        inlined = await self._attachments.fetch(dialog_contents(request.dialog), model=request.model)
        gen = self._gen(slot, slot.render(request.dialog, request, inlined, "dialog"), True, request, grammar)
        tools = offered_tools(request.available_tools, request.tool_choice)
        if request.stream:
            stream = ToolCallStream(slot.tool_format, tools) if tools else None
            return _ChunkStream(slot, gen, ChatCompletionResponseStreamChunk, stream)
        ((text, entries, outcome),) = await slot.run(COLLECT, [gen])
        return _chat_response(text, entries, outcome, slot.tool_format, tools, request.logprobs)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """One queue place for the whole batch; the prompts run one after another, in input order."""
        slot = self._slot(request)
        grammar = await self._grammar(slot, request.response_format, None)
        contents = [(c, f"content_batch[{i}]") for i, c in enumerate(request.content_batch)]
        inlined = await self._attachments.fetch(contents, model=request.model)
        gens = [self._gen(slot, inlined(c, where), False, request, grammar) for c, where in contents]
        if not gens:
            return []
        results = await slot.run(COLLECT, gens)
        return [_completion_response(text, entries, outcome, request.logprobs) for text, entries, outcome in results]

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """One queue place for the whole batch; the dialogs run one after another, in input order."""
        slot = self._slot(request)
        grammar = await self._chat_grammar(slot, request)
        contents = [
            item for i, d in enumerate(request.batch_dialogs) for item in dialog_contents(d, f"batch_dialogs[{i}]")
        ]
        inlined = await self._attachments.fetch(contents, model=request.model)
        gens = [
            self._gen(slot, slot.render(d, request, inlined, f"batch_dialogs[{i}]"), True, request, grammar)
            for i, d in enumerate(request.batch_dialogs)
        ]
        if not gens:
            return []
        tools = offered_tools(request.available_tools, request.tool_choice)
        results = await slot.run(COLLECT, gens)
        return [
            _chat_response(text, entries, outcome, slot.tool_format, tools, request.logprobs)
            for text, entries, outcome in results
        ]


def _logprobs(wanted: bool, entries: list[TokenLogprob]) -> Logprobs | None:
    return Logprobs(content=entries) if wanted else None


def _completion_response(
    text: str, entries: list[TokenLogprob], outcome: Outcome, logprobs: bool
) -> CompletionResponse:
    return CompletionResponse(
        content=text,
        stop_reason=outcome.stop_reason,
        logprobs=_logprobs(logprobs, entries),
        usage=outcome.usage,
        prompt_logprobs=outcome.prompt_logprobs,
    )


def _chat_response(
    text: str,
    entries: list[TokenLogprob],
    outcome: Outcome,
    fmt: ToolFormat,
    tools: list[ToolDefinition],
    logprobs: bool,
) -> ChatCompletionResponse:
    content, calls = parse_tool_calls(text, fmt, tools)
    return ChatCompletionResponse(
        content=content,
        tool_calls=calls,
        stop_reason=outcome.stop_reason,
        logprobs=_logprobs(logprobs, entries),
        usage=outcome.usage,
    )
