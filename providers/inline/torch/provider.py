"""inline::torch: Hugging Face causal language models run in the server process by transformers + torch.

How requests are served
-----------------------
Each registered model owns a single worker thread (a one-thread executor) that runs its generations in
order; requests beyond the running one wait in that executor's FIFO queue, at most ``max_queue`` of them,
and one more is refused with 503. A batch request takes one place in the queue and is decoded as one
padded batch (see :mod:`.engine`): one forward pass per token for all its rows, ``max_batch_size`` rows at
a time.

The event loop admits requests: it checks them, renders the chat template and tokenizes the prompt (well
under a millisecond for ordinary prompts), so that a bad request is refused with its 4xx before anything
is queued or streamed. Everything torch does happens in the worker (:mod:`.engine`). For a streamed request
the worker hands each piece of text to the event loop with ``loop.call_soon_threadsafe(queue.put_nowait,
piece)``, where it becomes a chunk (:mod:`~llama_stack.providers.utils.chunk_stream`); a non-streamed
request (and a batch) wakes the loop once, with the finished rows. Between tokens the worker reads its
job's ``cancelled`` flag: closing a stream, dropping it, or cancelling the task awaiting a response sets it,
so the generation stops within a token and the model's next request starts. The queue, the flag and the
streams are the local providers' shared plumbing (:mod:`~llama_stack.providers.utils.model_worker`).

Logprobs are those of the model's raw distribution (log-softmax of the logits, before the repetition
penalty, a grammar and temperature), as OpenAI reports them; ``usage.completion_tokens`` counts the tokens
generated, the end-of-generation token excepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import jinja2
import torch

from llama_stack.apis.common import Content, Dialog, ToolCall, ToolDefinition
from llama_stack.apis.errors import BadRequestError, LlamaStackError, NotSupportedError, ServiceUnavailableError
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
    SamplingParams,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.chunk_stream import ChunkStream, ChunkType
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments, dialog_contents
from llama_stack.providers.utils.inference.sampling import check_logit_bias
from llama_stack.providers.utils.inference.structured import json_schema_for
from llama_stack.providers.utils.inference.tool_calls.formats import (
    ToolFormat,
    offered_tools,
    tool_call_schema,
    tool_format_for,
)
from llama_stack.providers.utils.inference.tool_calls.parse import parse_tool_calls
from llama_stack.providers.utils.inference.tool_calls.render import render_messages
from llama_stack.providers.utils.inference.tool_calls.stream import ToolCallStream
from llama_stack.providers.utils.model_worker import (
    ModelWorker,
    close_slots,
    guarded,
    registered_before,
    served_slot,
)

from . import PROVIDER_TYPE
from .config import TorchConfig
from .engine import (
    LoadedModel,
    Row,
    Sampling,
    generate_job,
    load_model,
    resolve_device,
    resolve_dtype,
    stream_job,
)

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # an optional dependency: imported when a grammar is made

log = logging.getLogger(__name__)

# Whitespace inside constrained JSON is the compact kind: a small model left free to add whitespace can
# spend its whole budget on it.
_GRAMMAR_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}


async def build(config: TorchConfig, context: ProviderContext) -> TorchInference:
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    return TorchInference(config, context)


# ----------------------------------------------------------------------------------------------------
# Requests


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def _closed(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties and says
    nothing about others (as OpenAI's structured outputs require): JSON Schema would let the model add any
    property it likes, and a small model does, until max_tokens."""
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(closed.get(key), list):
            closed[key] = [_closed(s) for s in closed[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(closed.get(key), dict):
            closed[key] = {name: _closed(s) for name, s in closed[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(closed.get(key), dict):
            closed[key] = _closed(closed[key])
    if "properties" in closed and "additionalProperties" not in closed and "patternProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


class _Prepared:
    """One row of a request, checked and tokenized: what the worker needs to generate it."""

    __slots__ = ("limit", "prompt_ids")

    def __init__(self, prompt_ids: list[int], limit: int):
        self.prompt_ids = prompt_ids
        self.limit = limit


class _Options:
    """What a request asks of every row: sampling, stops, logprobs, a grammar, tools."""

    __slots__ = ("grammar", "prompt_logprobs", "sampling", "stops", "tool_format", "tools", "top_logprobs")

    def __init__(
        self,
        sampling: SamplingParams,
        stops: list[str],
        logprobs: bool,
        top_logprobs: int,
        grammar: str | None = None,
        tools: list[ToolDefinition] | None = None,
        tool_format: ToolFormat | None = None,
        prompt_logprobs: int | None = None,
    ):
        self.sampling = Sampling.of(sampling)
        self.stops = stops
        self.top_logprobs = top_logprobs if logprobs else None
        self.grammar = grammar
        self.tools = tools or []
        self.tool_format = tool_format
        self.prompt_logprobs = prompt_logprobs  # completions only: alternatives per prompt token

    def row(self, prepared: _Prepared) -> Row:
        return Row(prepared.prompt_ids, prepared.limit, stops=self.stops, top_logprobs=self.top_logprobs)


def _logprobs(row: Row) -> Logprobs | None:
    return Logprobs(content=row.logprobs) if row.logprobs is not None else None


def _completion_response(row: Row) -> CompletionResponse:
    return CompletionResponse(
        content=row.text,
        stop_reason=row.stop_reason,
        logprobs=_logprobs(row),
        usage=row.usage,
        prompt_logprobs=row.prompt_logprobs,
    )


def _chat_response(row: Row, options: _Options) -> ChatCompletionResponse:
    content = row.text
    calls: list[ToolCall] = []
    if options.tools and options.tool_format is not None:
        content, calls = parse_tool_calls(row.text, options.tool_format, options.tools)
    return ChatCompletionResponse(
        content=content, tool_calls=calls, stop_reason=row.stop_reason, logprobs=_logprobs(row), usage=row.usage
    )


def _torch_failure(exc: Exception) -> tuple[type[LlamaStackError], str] | None:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ServiceUnavailableError, f"out of GPU memory: {exc}"
    return None


# ----------------------------------------------------------------------------------------------------
# The event-loop side


class _ModelSlot:
    """A loaded model, its worker thread and its queue."""

    def __init__(self, model: Model, provider_id: str, key: tuple[str, str | None], lm: LoadedModel, max_queue: int):
        self.model = model
        self.key = key  # (reference, lora_adapter): what a second registration must match
        reference, adapter = key
        self.origin = repr(reference) + (f" and lora_adapter {adapter!r}" if adapter else "")
        self.lm = lm
        self.tool_format = tool_format_for(model.provider_model_id or model.model_id, lm.chat_template)
        runner = guarded(model.model_id, provider_id, "torch", _torch_failure)
        self.worker = ModelWorker(model.model_id, provider_id, "torch", max_queue, runner)

    def close(self) -> None:
        self.lm.close()


class TorchInference:
    """The Inference API over transformers + torch; models come in through ``register_model``."""

    # The router hands this provider completions with prompt_logprobs (see docs/plugins.md).
    scores_prompts = True

    def __init__(self, config: TorchConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._slots: dict[str, _ModelSlot] = {}
        self._attachments = AttachmentInliner(config.attachments)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Load the model (off the event loop). Called by the runtime before serving; the model comes back
        with the context window it is served with."""
        reference = model.provider_model_id or model.model_id
        adapter = model.metadata.get("lora_adapter")
        if adapter is not None and not isinstance(adapter, str):
            raise BadRequestError(
                f"model {model.model_id!r}: metadata.lora_adapter must be a directory path, got {adapter!r}",
                provider=self.provider_id,
            )
        key = (reference, adapter)
        registered = registered_before(self._slots, model.model_id, key, self.provider_id)
        if registered is not None:
            return registered
        try:
            lm = await asyncio.to_thread(
                load_model,
                reference,
                device=self.device,
                dtype=self.dtype,
                context_length=model.context_length or self.config.context_length or None,
                lora_adapter=adapter,
            )
        except LlamaStackError as exc:
            raise type(exc)(f"model {model.model_id!r}: {exc.message}", provider=self.provider_id) from None
        model = model.model_copy(update={"context_length": lm.context_length})
        self._slots[model.model_id] = _ModelSlot(model, self.provider_id, key, lm, self.config.max_queue)
        log.info(
            "%s: model %s loaded from %s%s on %s (%s, context %d)",
            self.provider_id,
            model.model_id,
            lm.source,
            f" with adapter {adapter}" if adapter else "",
            self.device,
            self.dtype,
            lm.context_length,
        )
        return model

    async def shutdown(self) -> None:
        """Stop every generation and free the models. Called by the runtime at exit."""
        await close_slots(self._slots)

    # -- admission ----------------------------------------------------------------------------------

    def _slot(self, model_id: str) -> _ModelSlot:
        return served_slot(self._slots, model_id, self.provider_id, PROVIDER_TYPE)

    async def _collect(self, slot: _ModelSlot, rows: list[Row], options: _Options) -> list[Row]:
        return await slot.worker.run(
            generate_job, slot.lm, rows, options, slot.model.model_id, self.config.max_batch_size
        )

    def _open_stream(self, slot: _ModelSlot, prepared: _Prepared, options: _Options, chunk: ChunkType) -> ChunkStream:
        tools = None
        if options.tools and options.tool_format is not None:
            tools = ToolCallStream(options.tool_format, options.tools)
        return ChunkStream(
            slot.worker,
            chunk,
            tools,
            stream_job,
            slot.lm,
            options.row(prepared),
            options,
            slot.model.model_id,
            self.config.max_batch_size,
        )

    # -- checking and tokenizing (event loop) --------------------------------------------------------

    def _bad(self, message: str, param: str | None = None) -> BadRequestError:
        return BadRequestError(message, provider=self.provider_id, param=param)

    def _prepare(self, slot: _ModelSlot, prompt_ids: list[int], max_tokens: int, where: str) -> _Prepared:
        lm = slot.lm
        room = lm.context_length - len(prompt_ids)
        if room <= 0:
            raise self._bad(
                f"{where}: the prompt is {len(prompt_ids)} tokens, more than model {slot.model.model_id!r}'s context "
                f"window of {lm.context_length} tokens leaves room for",
                param=where,
            )
        if not prompt_ids:
            raise self._bad(f"{where}: the prompt is empty", param=where)
        return _Prepared(prompt_ids, min(max_tokens, room) if max_tokens else room)

    def _grammar(
        self, slot: _ModelSlot, response_format: ResponseFormat | None, forced_call: dict[str, Any] | None
    ) -> str | None:
        schema = json_schema_for(response_format)
        where = "response_format"
        if schema is None:
            schema, where = forced_call, "tool_choice"
        if schema is None:
            return None
        try:
            import llguidance
        except ImportError:
            if where == "tool_choice":
                return None  # the prompt asks for the call; it is just not enforced
            raise NotSupportedError(
                f"{PROVIDER_TYPE} needs llguidance for response_format: pip install 'llama-stack-runtime[torch]'",
                provider=self.provider_id,
            ) from None
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(_closed(schema), defaults=_GRAMMAR_DEFAULTS)
            error = llguidance.LLMatcher.validate_grammar(grammar)
        except Exception as exc:  # llguidance refuses what it cannot compile
            error = f"{type(exc).__name__}: {exc}"
        if error:
            raise self._bad(f"{where}: the JSON schema cannot be enforced: {error}", param=where)
        return grammar

    async def _inlined(self, contents: list[tuple[Content, str]], model_id: str) -> InlinedAttachments:
        try:
            return await self._attachments.fetch(contents, model=model_id)
        except LlamaStackError as exc:
            if exc.provider is None:
                exc.provider = self.provider_id
            raise

    def _chat_prompt(
        self, slot: _ModelSlot, dialog: Dialog, tools: list[ToolDefinition], tool_choice: str, inline: Any, where: str
    ) -> list[int]:
        lm = slot.lm
        if not lm.chat_template:
            raise NotSupportedError(
                f"model {slot.model.model_id!r} has no chat template (its tokenizer defines none); use "
                "/inference/completion with a prompt",
                provider=self.provider_id,
            )
        messages = render_messages(dialog, tools, tool_choice, slot.tool_format, inline, where=where)
        try:
            text = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError as exc:  # templates refuse some dialogs (say, roles that do not alternate)
            raise self._bad(
                f"{where}: model {slot.model.model_id!r}'s chat template refused the dialog: {exc}", param=where
            ) from exc
        return lm.encode(text, add_special_tokens=False)

    async def _chat_rows(
        self,
        slot: _ModelSlot,
        dialogs: list[tuple[Dialog, str]],
        tools: list[ToolDefinition],
        tool_choice: str,
        max_tokens: int,
    ) -> list[_Prepared]:
        contents = [item for dialog, where in dialogs for item in dialog_contents(dialog, where)]
        inlined = await self._inlined(contents, slot.model.model_id)
        return [
            self._prepare(slot, self._chat_prompt(slot, dialog, tools, tool_choice, inlined, where), max_tokens, where)
            for dialog, where in dialogs
        ]

    async def _completion_rows(
        self, slot: _ModelSlot, contents: list[tuple[Content, str]], max_tokens: int
    ) -> list[_Prepared]:
        inlined = await self._inlined(contents, slot.model.model_id)
        return [
            self._prepare(
                slot, slot.lm.encode(inlined.inline(content, where), add_special_tokens=True), max_tokens, where
            )
            for content, where in contents
        ]

    def _chat_options(self, slot: _ModelSlot, request: ChatCompletionRequest | BatchChatCompletionRequest) -> _Options:
        check_logit_bias(request.sampling_params, slot.lm.vocab_size, slot.model.model_id, self.provider_id)
        tools = offered_tools(request.available_tools, request.tool_choice)
        forced = tool_call_schema(tools, request.tool_choice, slot.tool_format) if tools else None
        return _Options(
            request.sampling_params,
            request.stop,
            request.logprobs,
            request.top_logprobs,
            grammar=self._grammar(slot, request.response_format, forced),
            tools=tools,
            tool_format=slot.tool_format,
        )

    def _completion_options(self, slot: _ModelSlot, request: CompletionRequest | BatchCompletionRequest) -> _Options:
        check_logit_bias(request.sampling_params, slot.lm.vocab_size, slot.model.model_id, self.provider_id)
        return _Options(
            request.sampling_params,
            request.stop,
            request.logprobs,
            request.top_logprobs,
            grammar=self._grammar(slot, request.response_format, None),
            prompt_logprobs=request.prompt_logprobs,
        )

    # -- the Inference API --------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        slot = self._slot(request.model)
        options = self._completion_options(slot, request)
        (prepared,) = await self._completion_rows(slot, [(request.content, "content")], request.max_tokens)
        if request.stream:
            return self._open_stream(slot, prepared, options, CompletionResponseStreamChunk)
        (row,) = await self._collect(slot, [options.row(prepared)], options)
        return _completion_response(row)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        slot = self._slot(request.model)
        options = self._chat_options(slot, request)
        (prepared,) = await self._chat_rows(
            slot, [(request.dialog, "dialog")], request.available_tools, request.tool_choice, request.max_tokens
        )
        if request.stream:
            return self._open_stream(slot, prepared, options, ChatCompletionResponseStreamChunk)
        (row,) = await self._collect(slot, [options.row(prepared)], options)
        return _chat_response(row, options)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """One queue place for the whole batch, decoded as one padded batch; responses in input order."""
        slot = self._slot(request.model)
        options = self._completion_options(slot, request)
        contents = [(content, f"content_batch[{i}]") for i, content in enumerate(request.content_batch)]
        prepared = await self._completion_rows(slot, contents, request.max_tokens)
        if not prepared:
            return []
        rows = await self._collect(slot, [options.row(p) for p in prepared], options)
        return [_completion_response(row) for row in rows]

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """One queue place for the whole batch, decoded as one padded batch; responses in input order."""
        slot = self._slot(request.model)
        options = self._chat_options(slot, request)
        dialogs = [(dialog, f"batch_dialogs[{i}]") for i, dialog in enumerate(request.batch_dialogs)]
        prepared = await self._chat_rows(
            slot, dialogs, request.available_tools, request.tool_choice, request.max_tokens
        )
        if not prepared:
            return []
        rows = await self._collect(slot, [options.row(p) for p in prepared], options)
        return [_chat_response(row, options) for row in rows]
