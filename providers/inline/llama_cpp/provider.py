"""inline::llama-cpp: GGUF models run by llama-cpp-python, each in an engine process of its own.

How requests are served
-----------------------
This module is about requests: it admits them (the model served, its logit bias in its vocabulary), prepares
them (attachments fetched, the chat template rendered, a grammar built and checked) and turns what comes
back into answers. The event loop never decodes: each model's engine process does, behind a queue
(:mod:`.engine`, which also says what happens when llama.cpp crashes); the generation loop itself is in
:mod:`.generation`.

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
from collections.abc import AsyncIterator
from typing import Any, cast

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llama_stack.apis.common import Dialog, ToolDefinition
from llama_stack.apis.errors import BadRequestError, LlamaStackError
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
from llama_stack.providers.utils.model_worker import close_slots, registered_before, served_slot
from llama_stack.providers.utils.process_supervisor import EngineCrashedError

from . import PROVIDER_TYPE
from .config import LlamaCppConfig
from .engine import LlamaCppEngine
from .engine_process import VocabularyFacts
from .generation import Gen, Outcome

log = logging.getLogger(__name__)

# Used for GGUFs without a chat template (llama.cpp's own fallback is ChatML as well).
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


async def build(config: LlamaCppConfig, context: ProviderContext) -> LlamaCppInference:
    return LlamaCppInference(config, context)


def grammar_text(schema: dict[str, Any], *, strict: bool = True) -> str:
    """The llama.cpp grammar (GBNF, root rule ``root``) that a JSON schema's answers must match.

    The one place a schema becomes a grammar: response formats and forced tool calls both come here.
    ``strict`` (response formats) refuses schema keywords the grammar would not enforce; a forced call's
    arguments are constrained as far as the grammar goes.
    """
    return llama_cpp_json_grammar(schema, strict=strict)


class _ModelSlot:
    """A registered model: its engine (:mod:`.engine`) and how its prompts are rendered."""

    def __init__(self, model: Model, reference: str, engine: LlamaCppEngine):
        self.model = model
        self.key = self.reference = reference
        self.origin = repr(reference)
        self.engine = engine
        self.worker = engine.worker
        self.workers = engine.workers

    def adopt(self, vocabulary: VocabularyFacts) -> bool:
        """Take the GGUF's chat template and vocabulary size; whether the model calls tools in the Llama 3.1
        format (see :meth:`LlamaCppEngine.load`)."""
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
        return self.tool_format == ToolFormat.llama3

    def close(self) -> None:
        self.engine.close()

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
            # render_messages writes the OpenAI-shaped dicts the formatter's TypedDicts describe.
            return self.formatter(messages=cast(Any, messages), **extra).prompt
        except (jinja2.TemplateError, ValueError) as exc:  # templates may refuse a dialog (raise_exception)
            raise BadRequestError(
                f"model {self.model.model_id!r}: its chat template refused {where}: {exc}",
                details=[{"loc": where, "in": "body", "message": str(exc)}],
            ) from exc


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
        registered = registered_before(self._slots, model.model_id, reference, self.provider_id)
        if registered is not None:
            return registered
        try:
            path = resolve_gguf(reference)
        except LlamaStackError as exc:
            raise type(exc)(f"model {model.model_id!r}: {exc.message}", provider=self.provider_id) from None
        n_ctx = model.context_length or self.config.n_ctx
        slot = _ModelSlot(model, reference, LlamaCppEngine(model.model_id, self.provider_id, path, n_ctx, self.config))
        try:
            loaded = await asyncio.to_thread(slot.engine.load, slot.adopt)
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
            slot.engine.vocabulary_pid,
        )
        return model

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
            parses = await slot.engine.grammar_parses(grammar)
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
            return slot.engine.stream(gen, CompletionResponseStreamChunk, None)
        ((text, entries, outcome),) = await slot.engine.collect([gen])
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
            return slot.engine.stream(gen, ChatCompletionResponseStreamChunk, stream)
        ((text, entries, outcome),) = await slot.engine.collect([gen])
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
        results = await slot.engine.collect(gens)
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
        results = await slot.engine.collect(gens)
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
