"""inline::llama-cpp: GGUF models run in the server process by llama-cpp-python.

How requests are served
-----------------------
llama-cpp-python decodes one request at a time per ``Llama`` object, so each registered model owns a
single worker thread (a one-thread executor) that runs its generations in order. Requests beyond the
running one wait in that executor's FIFO queue, at most ``max_queue`` of them; one more is refused with
503. The event loop never decodes: it admits requests, prepares them (attachments fetched, the chat
template rendered, a grammar built) and relays the worker's output.

The generation loop
-------------------
The worker drives ``Llama.generate`` (llama.cpp's sampler chain, the KV-cache prefix reuse) with its own
loop rather than ``create_completion``: per token it checks for an end-of-generation token, decodes the
token's bytes incrementally (a UTF-8 character split over tokens waits for its last byte), holds back
text that may be the start of a stop sequence, and, only when logprobs were asked for, reads that step's
logits from the llama.cpp context (the ones the token was sampled from) to compute the token's logprob
and its top alternatives. The model is loaded without ``logits_all``: that would keep a row of logits
per context position (n_ctx x n_vocab floats) and compute logits for every prompt token, for every
request; reading the last row costs nothing when logprobs are off.

For a streamed request each text piece is handed to the event loop with
``loop.call_soon_threadsafe(queue.put_nowait, piece)``, the least a thread can do to wake the loop; a
non-streamed request (and a batch) collects the pieces in the worker and wakes the loop once. Between
tokens the worker checks its job's ``cancelled`` flag: closing a stream, dropping it, or cancelling the
task awaiting a response sets it, so the generation stops within a token and the model's next request
starts.

Chat, tools, structured output
------------------------------
Chat messages go through :func:`~llama_stack.providers.utils.inference.tool_calls.render_messages` (tools
offered in the model's format: Llama 3.x models get Meta's Llama 3.1 format, others the documented json
format) and then the GGUF's own chat template. Answers are split into text and tool calls by the shared
parser, streamed through ``ToolCallStream``. A ``response_format`` becomes a llama.cpp grammar (built from
the JSON schema); so does a forced tool call (``tool_choice`` 'required' or a tool's name), which makes
even a small model answer with a well-formed call.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llama_stack.apis.common import Dialog, StopReason, ToolDefinition
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
    PromptTokenLogprob,
    ResponseFormat,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.model_worker import Job, ModelWorker, WorkerStream, close_slots, served_slot
from llama_stack.providers.utils.gguf import resolve_gguf
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments, dialog_contents
from llama_stack.providers.utils.inference.sampling import check_logit_bias
from llama_stack.providers.utils.inference.structured import json_schema_for
from llama_stack.providers.utils.inference.tool_calls import (
    ToolCallStream,
    ToolFormat,
    llama3_builtin_names,
    offered_tools,
    parse_tool_calls,
    render_messages,
    tool_call_schema,
    tool_format_for,
)

from . import PROVIDER_TYPE
from .config import LlamaCppConfig

log = logging.getLogger(__name__)

# Why a generation ended: "stop" (an end-of-generation token or a stop sequence), "length" (max_tokens or
# the context window), or None (stopped from outside).
_STOP_REASONS = {"stop": StopReason.finished_ok, "length": StopReason.max_tokens}

# Used for GGUFs without a chat template (llama.cpp's own fallback is ChatML as well).
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_PYTHON_TAG = "<|python_tag|>"


async def build(config: LlamaCppConfig, context: ProviderContext) -> "LlamaCppInference":
    return LlamaCppInference(config, context)


def _stop_reason(finish: str | None) -> StopReason:
    return _STOP_REASONS.get(finish or "stop", StopReason.finished_ok)


# ----------------------------------------------------------------------------------------------------
# Requests -> generations


def _sampler_options(sampling: SamplingParams) -> dict[str, Any]:
    """Arguments of ``Llama.generate``: nothing but what the request asks for."""
    if sampling.strategy == "greedy":
        temperature, top_p, top_k = 0.0, 1.0, 0  # llama.cpp samples greedily at temperature 0
    else:
        temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k  # top_k 0: no limit
    biased = {"logits_processor": _logit_bias(sampling.logit_bias)} if sampling.logit_bias else {}
    return {
        **biased,
        "temp": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": sampling.repetition_penalty,
        # llama.cpp counts the last 64 tokens of the answer (Llama's last_n_tokens_size).
        "frequency_penalty": sampling.frequency_penalty,
        "presence_penalty": sampling.presence_penalty,
    }


def _logit_bias(bias: dict[int, float]) -> LogitsProcessorList:
    """A processor adding each token's bias to its logit (llama-cpp-python runs it first in the sampler
    chain, where the candidates are still in token id order)."""
    ids = np.fromiter(bias.keys(), dtype=np.intc, count=len(bias))
    values = np.fromiter(bias.values(), dtype=np.single, count=len(bias))

    def add(input_ids: Any, scores: np.ndarray) -> np.ndarray:
        scores[ids] += values
        return scores

    return LogitsProcessorList([add])


class _Gen:
    """One generation: a prompt (a rendered chat, or raw completion text) and how to continue it."""

    __slots__ = ("prompt", "chat", "max_tokens", "options", "seed", "stop", "grammar", "top_logprobs", "prompt_logprobs")

    def __init__(
        self,
        prompt: str,
        chat: bool,
        *,
        sampling: SamplingParams,
        max_tokens: int,
        stop: list[str],
        logprobs: bool,
        top_logprobs: int,
        grammar: LlamaGrammar | None,
        prompt_logprobs: int | None = None,
    ):
        self.prompt = prompt
        self.chat = chat
        self.max_tokens = max_tokens
        self.options = _sampler_options(sampling)
        self.seed = sampling.seed
        self.stop = [s for s in stop if s]
        self.grammar = grammar
        # None: no logprobs; otherwise how many alternatives per token.
        self.top_logprobs = top_logprobs if logprobs else None
        self.prompt_logprobs = prompt_logprobs  # the same, for the prompt's tokens


class _Outcome:
    """What a finished generation reports besides its text."""

    __slots__ = ("finish", "prompt_tokens", "completion_tokens", "logprobs", "prompt_logprobs")

    def __init__(
        self,
        finish: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        logprobs: list[TokenLogprob],
        prompt_logprobs: list[PromptTokenLogprob] | None = None,
    ):
        self.finish = finish
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.logprobs = logprobs  # entries not sent with a text piece (after the last one)
        self.prompt_logprobs = prompt_logprobs

    @property
    def stop_reason(self) -> StopReason:
        return _stop_reason(self.finish)

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


# ----------------------------------------------------------------------------------------------------
# The worker side (runs in a model's thread)


class _Tokens:
    """Per-model token facts the generation loop needs, cached."""

    def __init__(self, llm: Llama, tool_format: ToolFormat):
        self.llm = llm
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.pieces: dict[int, bytes] = {}
        self.texts: dict[int, str] = {}
        # Tokens llama.cpp puts before a completion prompt (add_bos): not part of its text.
        self.added = 1 if llm._model.add_bos_token() else 0
        self.python_tag = -1
        if tool_format == ToolFormat.llama3:
            ids = llm.tokenize(_PYTHON_TAG.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.python_tag = ids[0]

    def piece(self, token: int) -> bytes:
        piece = self.pieces.get(token)
        if piece is None:
            if token == self.python_tag:
                piece = _PYTHON_TAG.encode()  # a control token: rendered, so the tool-call parser sees it
            else:
                piece = self.llm.detokenize([token])
            self.pieces[token] = piece
        return piece

    def text(self, token: int) -> str:
        """A token as logprobs show it (control tokens by name)."""
        text = self.texts.get(token)
        if text is None:
            text = self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")
            self.texts[token] = text
        return text

    def logprob(self, token: int, top: int) -> TokenLogprob:
        """The sampled token's logprob and the ``top`` most likely alternatives, from this step's logits."""
        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))  # float32, llama.cpp's buffer: no copy
        logprob, alternatives = self.scored(logits, token, top)
        return TokenLogprob(token=self.text(token), logprob=logprob, top_logprobs=alternatives)

    def scored(self, logits: np.ndarray, token: int, top: int) -> tuple[float, list[TopLogprob]]:
        """``token``'s log-probability under one position's logits, and the ``top`` most likely tokens there."""
        peak = float(logits.max())
        normalizer = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
        alternatives: list[TopLogprob] = []
        if top:
            best = np.argpartition(logits, -top)[-top:] if top < self.n_vocab else np.arange(self.n_vocab)
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = [TopLogprob(token=self.text(int(t)), logprob=float(logits[t]) - normalizer) for t in best]
        return float(logits[token]) - normalizer, alternatives


def _prompt_logprobs(job: Job, tokens: _Tokens, prompt: list[int], top: int) -> list[PromptTokenLogprob] | None:
    """Score the prompt: each token after the ones llama.cpp put in front (``tokens.added``) with its logprob under the logits of the position before it, and ``top`` alternatives; None when
    the job is cancelled (checked between batches).

    The model is loaded without logits_all, so llama-cpp-python keeps one row of logits; this evaluates the
    prompt itself, asking llama.cpp for every position's logits, a batch at a time. The prompt stays in the
    KV cache, recorded as llama-cpp-python records what it evaluated, so the generation that follows starts
    from it instead of evaluating the prompt again.
    """
    llm, added = tokens.llm, tokens.added
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    texts = [decode(llm.detokenize([t], special=True)) for t in prompt[added:]]
    texts[-1] += decode(b"", True)
    entries = [PromptTokenLogprob(token=texts[0])] if not added else []
    for start in range(0, len(prompt), llm.n_batch):
        if job.cancelled:
            return None
        chunk = prompt[start : start + llm.n_batch]
        llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
        llm._ctx.decode(llm._batch)
        rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), tokens.n_vocab))
        for offset in range(len(chunk)):
            target = start + offset + 1  # the token this position's logits predict
            if target < added or target >= len(prompt):
                continue
            logprob, alternatives = tokens.scored(rows[offset], prompt[target], top)
            entries.append(PromptTokenLogprob(token=texts[target - added], logprob=logprob, top_logprobs=alternatives))
    # Llama.generate samples at once from a prompt it finds wholly evaluated (the last row of logits is the
    # prompt's last position, as after its own evaluation).
    llm.input_ids[: len(prompt)] = prompt
    llm.n_tokens = len(prompt)
    llm._requires_eval = False
    return entries


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could start a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _pump(job: Job, tokens: _Tokens, gen: _Gen, emit: Callable[[Any], Any]) -> _Outcome | None:
    """Run one generation, handing each text piece to ``emit``; None when stopped from outside.

    A piece is a ``str``, or ``(str, [TokenLogprob])`` when logprobs were asked for.
    """
    llm = tokens.llm
    prompt = llm.tokenize(gen.prompt.encode("utf-8"), add_bos=not gen.chat, special=True)
    n_ctx = llm.n_ctx()
    if len(prompt) >= n_ctx:
        raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
    scored_prompt = None
    evaluated = False  # the prompt was just evaluated afresh (by the scoring), and is in the KV cache
    if gen.prompt_logprobs is not None:
        scored_prompt = []
        if len(prompt) > tokens.added:
            scored_prompt = _prompt_logprobs(job, tokens, prompt, gen.prompt_logprobs)
            if scored_prompt is None:
                return None
            evaluated = True
    room = n_ctx - len(prompt)
    limit = min(gen.max_tokens, room) if gen.max_tokens > 0 else room
    # llama.cpp draws a random seed for LLAMA_DEFAULT_SEED.
    llm.set_seed(gen.seed if gen.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
    if (gen.seed is not None or gen.top_logprobs is not None) and not evaluated:
        # Repeatable whatever ran before: a prompt evaluated partly from the KV cache of an earlier request
        # gets logits a rounding error away from a fresh evaluation (quantized kernels round differently
        # for one token than for a batch), enough to tip a sampled token and to move logprobs by ~0.1.
        llm.reset()

    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    is_eog, vocab, piece_of = llama_cpp.llama_vocab_is_eog, tokens.vocab, tokens.piece
    stops, top = gen.stop, gen.top_logprobs
    entries: list[TokenLogprob] = []
    held = ""
    count = 0
    finish = "length"
    generator = llm.generate(prompt, grammar=gen.grammar, **gen.options)
    try:
        for token in generator:
            if is_eog(vocab, token):
                finish = "stop"
                break
            count += 1
            if top is not None:
                entries.append(tokens.logprob(token, top))
            text = decode(piece_of(token))
            if stops:
                held += text
                cut = min((at for at in (held.find(s) for s in stops) if at >= 0), default=-1)
                if cut >= 0:
                    held, text = "", held[:cut]
                    finish = "stop"
                else:
                    keep = _stop_prefix_length(held, stops)
                    held, text = held[len(held) - keep :], held[: len(held) - keep]
            if text:
                if top is None:
                    emit(text)
                else:
                    emit((text, entries))
                    entries = []
            if job.cancelled:
                return None
            if finish == "stop":  # a stop sequence: nothing after it is sent
                return _Outcome(finish, len(prompt), count, entries, scored_prompt)
            if count >= limit:
                break
    finally:
        generator.close()
    rest = held + decode(b"", True)  # a held stop-sequence prefix that never completed, a cut-off character
    if rest:
        if top is None:
            emit(rest)
        else:
            emit((rest, entries))
            entries = []
    return _Outcome(finish, len(prompt), count, entries, scored_prompt)


def _collect_job(job: Job, tokens: _Tokens, gens: list[_Gen]) -> list[tuple[str, list[TokenLogprob], _Outcome]]:
    results = []
    for gen in gens:
        if job.cancelled:
            break
        pieces: list[str] = []
        entries: list[TokenLogprob] = []

        def collect(piece: Any) -> None:
            if piece.__class__ is str:
                pieces.append(piece)
            else:
                pieces.append(piece[0])
                entries.extend(piece[1])

        outcome = _pump(job, tokens, gen, collect)
        if outcome is None:
            break
        entries.extend(outcome.logprobs)
        results.append(("".join(pieces), entries, outcome))
    return results


def _run_job(model_id: str, provider_id: str, job: Job, fn: Callable[..., Any], *args: Any) -> Any:
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
        raise ProviderError(f"model {model_id!r}: llama.cpp failed: {type(exc).__name__}: {exc}", provider=provider_id) from exc
    # Stopped: whoever asked is gone (a closed stream, a cancelled task), or the provider is shutting down.
    raise ServiceUnavailableError(
        f"model {model_id!r}: the generation was stopped ({provider_id} is shutting down)", provider=provider_id
    )


# ----------------------------------------------------------------------------------------------------
# The event-loop side


class _ModelSlot:
    """A loaded model, its chat template, its worker thread and its queue."""

    def __init__(self, model: Model, provider_id: str, reference: str, path: Path, llm: Llama, max_queue: int):
        self.model = model
        self.reference = reference
        self.path = path
        self.llm = llm
        self.worker = ModelWorker(
            model.model_id, provider_id, "llama-cpp", max_queue, partial(_run_job, model.model_id, provider_id)
        )

        template = llm.metadata.get("tokenizer.chat_template")
        name = " ".join(filter(None, [model.model_id, reference, llm.metadata.get("general.name")]))
        self.tool_format = tool_format_for(name, template)
        self.tokens = _Tokens(llm, self.tool_format)

        def token_text(token_id: int) -> str:
            return llm._model.token_get_text(token_id) if token_id != -1 else ""

        self.chat_template = template or _CHATML_TEMPLATE
        self.formatter = Jinja2ChatFormatter(
            template=self.chat_template, eos_token=token_text(llm.token_eos()), bos_token=token_text(llm.token_bos())
        )
        # Llama 3.1+ templates write the "Cutting Knowledge Date" header themselves.
        self.template_writes_llama3_header = "Cutting Knowledge Date" in self.chat_template

    def close(self) -> None:
        self.llm.close()

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
            dialog, request.available_tools, request.tool_choice, self.tool_format, inlined, where=where, llama3_header=header
        )
        try:
            return self.formatter(messages=messages, **extra).prompt
        except (jinja2.TemplateError, ValueError) as exc:  # templates may refuse a dialog (raise_exception)
            raise BadRequestError(
                f"model {self.model.model_id!r}: its chat template refused {where}: {exc}", details=[{"loc": where, "in": "body", "message": str(exc)}]
            ) from exc


class _ChunkStream(WorkerStream):
    """The chunks of one streamed generation: the worker's text pieces (through the tool-call parser when
    tools are offered), then a last chunk with the stop reason and usage."""

    __slots__ = ("_chunk", "_tools", "_ready")

    def __init__(
        self,
        slot: _ModelSlot,
        gen: _Gen,
        chunk: type[ChatCompletionResponseStreamChunk] | type[CompletionResponseStreamChunk],
        tools: ToolCallStream | None,
    ):
        self._chunk = chunk
        self._tools = tools
        self._ready: deque[Any] = deque()
        super().__init__(slot.worker, _pump, slot.tokens, gen)

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
                outcome: _Outcome = item.result()
                if self._tools is not None:
                    self._ready.extend(self._tools.finish(outcome.stop_reason, usage=outcome.usage))
                    if outcome.logprobs:
                        last = self._ready[-1]
                        held = last.logprobs.content if last.logprobs else []
                        self._ready[-1] = last.model_copy(update={"logprobs": Logprobs(content=[*held, *outcome.logprobs])})
                else:
                    logprobs = Logprobs(content=outcome.logprobs) if outcome.logprobs else None
                    self._ready.append(
                        self._chunk(text_delta="", stop_reason=outcome.stop_reason, usage=outcome.usage, logprobs=logprobs)
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
        self._grammars: dict[str, LlamaGrammar] = {}  # JSON schema -> compiled grammar (checked once)

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
        llm = await asyncio.to_thread(self._load, model.model_id, path, model.context_length or self.config.n_ctx)
        model = model.model_copy(update={"context_length": llm.n_ctx()})
        self._slots[model.model_id] = _ModelSlot(model, self.provider_id, reference, path, llm, self.config.max_queue)
        log.info("%s: model %s loaded from %s (n_ctx %d)", self.provider_id, model.model_id, path, llm.n_ctx())
        return model

    def _load(self, model_id: str, path: Path, n_ctx: int) -> Llama:
        def load(n_ctx: int) -> Llama:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=self.config.n_threads,
                n_batch=self.config.n_batch,
                verbose=self.config.verbose,
            )

        try:
            llm = load(n_ctx)
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
        await close_slots(self._slots)

    # -- admission ----------------------------------------------------------------------------------

    def _slot(self, request: Any) -> _ModelSlot:
        """The model's slot, once the request's logit_bias is known to fit its vocabulary."""
        slot = served_slot(self._slots, request.model, self.provider_id, PROVIDER_TYPE)
        check_logit_bias(request.sampling_params, slot.tokens.n_vocab, slot.model.model_id, self.provider_id)
        return slot

    # -- preparing requests -------------------------------------------------------------------------

    def _grammar(self, slot: _ModelSlot, response_format: ResponseFormat | None, forced_call: dict[str, Any] | None) -> LlamaGrammar | None:
        """A llama.cpp grammar for the response format (or, without one, for a forced tool call)."""
        schema = json_schema_for(response_format)
        where = "response_format.json_schema" if response_format and response_format.type == "json_schema" else "response_format"
        if schema is None:
            schema, where = forced_call, "tool_choice"
        if schema is None:
            return None
        key = json.dumps(schema, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        try:
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # the converter rejects what it cannot express (remote $ref, ...)
            raise BadRequestError(
                f"{where}: llama.cpp cannot turn this JSON schema into a grammar: {type(exc).__name__}: {exc}",
                details=[{"loc": where, "in": "body", "message": str(exc)}],
                provider=self.provider_id,
            ) from None
        sampler = llama_cpp.llama_sampler_init_grammar(slot.tokens.vocab, grammar._grammar.encode(), grammar._root.encode())
        if not sampler:
            raise BadRequestError(
                f"{where}: llama.cpp could not parse the grammar made from this JSON schema",
                details=[{"loc": where, "in": "body", "message": "unsupported JSON schema"}],
                provider=self.provider_id,
            )
        llama_cpp.llama_sampler_free(sampler)
        if len(self._grammars) >= 64:  # a small cache: clients tend to send the same few schemas
            self._grammars.pop(next(iter(self._grammars)))
        self._grammars[key] = grammar
        return grammar

    def _gen(self, slot: _ModelSlot, prompt: str, chat: bool, request: Any, grammar: LlamaGrammar | None) -> _Gen:
        return _Gen(
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

    def _chat_grammar(self, slot: _ModelSlot, request: Any) -> LlamaGrammar | None:
        tools = offered_tools(request.available_tools, request.tool_choice)
        return self._grammar(slot, request.response_format, tool_call_schema(tools, request.tool_choice, slot.tool_format))

    # -- the Inference API --------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        slot = self._slot(request)
        grammar = self._grammar(slot, request.response_format, None)
        inlined = await self._attachments.fetch([(request.content, "content")], model=request.model)
        gen = self._gen(slot, inlined(request.content, "content"), False, request, grammar)
        if request.stream:
            return _ChunkStream(slot, gen, CompletionResponseStreamChunk, None)
        ((text, entries, outcome),) = await slot.worker.run(_collect_job, slot.tokens, [gen])
        return _completion_response(text, entries, outcome, request.logprobs)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        slot = self._slot(request)
        grammar = self._chat_grammar(slot, request)
        inlined = await self._attachments.fetch(dialog_contents(request.dialog), model=request.model)
        gen = self._gen(slot, slot.render(request.dialog, request, inlined, "dialog"), True, request, grammar)
        tools = offered_tools(request.available_tools, request.tool_choice)
        if request.stream:
            stream = ToolCallStream(slot.tool_format, tools) if tools else None
            return _ChunkStream(slot, gen, ChatCompletionResponseStreamChunk, stream)
        ((text, entries, outcome),) = await slot.worker.run(_collect_job, slot.tokens, [gen])
        return _chat_response(text, entries, outcome, slot.tool_format, tools, request.logprobs)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """One queue place for the whole batch; the prompts run one after another, in input order."""
        slot = self._slot(request)
        grammar = self._grammar(slot, request.response_format, None)
        contents = [(c, f"content_batch[{i}]") for i, c in enumerate(request.content_batch)]
        inlined = await self._attachments.fetch(contents, model=request.model)
        gens = [self._gen(slot, inlined(c, where), False, request, grammar) for c, where in contents]
        if not gens:
            return []
        results = await slot.worker.run(_collect_job, slot.tokens, gens)
        return [_completion_response(text, entries, outcome, request.logprobs) for text, entries, outcome in results]

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """One queue place for the whole batch; the dialogs run one after another, in input order."""
        slot = self._slot(request)
        grammar = self._chat_grammar(slot, request)
        contents = [item for i, d in enumerate(request.batch_dialogs) for item in dialog_contents(d, f"batch_dialogs[{i}]")]
        inlined = await self._attachments.fetch(contents, model=request.model)
        gens = [
            self._gen(slot, slot.render(d, request, inlined, f"batch_dialogs[{i}]"), True, request, grammar)
            for i, d in enumerate(request.batch_dialogs)
        ]
        if not gens:
            return []
        tools = offered_tools(request.available_tools, request.tool_choice)
        results = await slot.worker.run(_collect_job, slot.tokens, gens)
        return [_chat_response(text, entries, outcome, slot.tool_format, tools, request.logprobs) for text, entries, outcome in results]


def _logprobs(wanted: bool, entries: list[TokenLogprob]) -> Logprobs | None:
    return Logprobs(content=entries) if wanted else None


def _completion_response(text: str, entries: list[TokenLogprob], outcome: _Outcome, logprobs: bool) -> CompletionResponse:
    return CompletionResponse(
        content=text,
        stop_reason=outcome.stop_reason,
        logprobs=_logprobs(logprobs, entries),
        usage=outcome.usage,
        prompt_logprobs=outcome.prompt_logprobs,
    )


def _chat_response(
    text: str, entries: list[TokenLogprob], outcome: _Outcome, fmt: ToolFormat, tools: list[ToolDefinition], logprobs: bool
) -> ChatCompletionResponse:
    content, calls = parse_tool_calls(text, fmt, tools)
    return ChatCompletionResponse(
        content=content, tool_calls=calls, stop_reason=outcome.stop_reason, logprobs=_logprobs(logprobs, entries), usage=outcome.usage
    )
