"""One llama.cpp generation, run in the model's engine process (see :mod:`.engine_process`).

The loop drives ``Llama.generate`` (llama.cpp's sampler chain, the KV-cache prefix reuse) rather than
``create_completion``: per token it checks for an end-of-generation token, decodes the token's bytes
incrementally (a UTF-8 character split over tokens waits for its last byte), holds back text that may be
the start of a stop sequence, and, only when logprobs were asked for, reads that step's logits from the
llama.cpp context (the ones the token was sampled from) to compute the token's logprob and its top
alternatives. The model is loaded without ``logits_all``: that would keep a row of logits per context
position (n_ctx x n_vocab floats) and compute logits for every prompt token, for every request; reading
the last row costs nothing when logprobs are off.

:class:`Gen` and :class:`Outcome` cross the process boundary (pickled): a ``Gen`` holds plain data only
(the grammar as GBNF text, the logit bias as a dict); the engine process builds the llama.cpp objects.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any, Protocol

import llama_cpp
import numpy as np
from llama_cpp import Llama, LogitsProcessorList
from llama_cpp.llama_grammar import LlamaGrammar

from llama_stack.apis.common import StopReason
from llama_stack.apis.inference import PromptTokenLogprob, SamplingParams, TokenLogprob, TopLogprob, Usage
from llama_stack.providers.utils.stop_strings import StopStrings

# Why a generation ended: "stop" (an end-of-generation token or a stop sequence), "length" (max_tokens or
# the context window), or None (stopped from outside).
_STOP_REASONS = {"stop": StopReason.finished_ok, "length": StopReason.max_tokens}

PYTHON_TAG = "<|python_tag|>"


class CancellableJob(Protocol):
    """A job as the engine process sees it: ``cancelled`` turns true when its request is given up."""

    @property
    def cancelled(self) -> bool: ...


def _stop_reason(finish: str | None) -> StopReason:
    return _STOP_REASONS.get(finish or "stop", StopReason.finished_ok)


def _sampler_options(sampling: SamplingParams) -> dict[str, Any]:
    """Arguments of ``Llama.generate``: nothing but what the request asks for."""
    if sampling.strategy == "greedy":
        temperature, top_p, top_k = 0.0, 1.0, 0  # llama.cpp samples greedily at temperature 0
    else:
        temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k  # top_k 0: no limit
    return {
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


class Gen:
    """One generation: a prompt (a rendered chat, or raw completion text) and how to continue it."""

    __slots__ = (
        "chat",
        "grammar",
        "logit_bias",
        "max_tokens",
        "options",
        "prompt",
        "prompt_logprobs",
        "seed",
        "stop",
        "top_logprobs",
    )

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
        grammar: str | None,
        prompt_logprobs: int | None = None,
    ):
        self.prompt = prompt
        self.chat = chat
        self.max_tokens = max_tokens
        self.options = _sampler_options(sampling)
        self.logit_bias = dict(sampling.logit_bias)
        self.seed = sampling.seed
        self.stop = [s for s in stop if s]
        self.grammar = grammar  # GBNF text (root rule "root")
        # None: no logprobs; otherwise how many alternatives per token.
        self.top_logprobs = top_logprobs if logprobs else None
        self.prompt_logprobs = prompt_logprobs  # the same, for the prompt's tokens


class Outcome:
    """What a finished generation reports besides its text."""

    __slots__ = ("completion_tokens", "finish", "logprobs", "prompt_logprobs", "prompt_tokens")

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
# The engine process's side


class LoadedModel:
    """A loaded ``Llama`` and the per-model facts the generation loop needs, cached."""

    def __init__(self, llm: Llama, python_tag: bool):
        self.llm = llm
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.pieces: dict[int, bytes] = {}
        self.texts: dict[int, str] = {}
        self.grammars: dict[str, LlamaGrammar] = {}
        # Tokens llama.cpp puts before a completion prompt (add_bos): not part of its text.
        self.added = 1 if llm._model.add_bos_token() else 0
        self.python_tag = -1
        if python_tag:  # the model calls tools in the Llama 3.1 format
            ids = llm.tokenize(PYTHON_TAG.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.python_tag = ids[0]

    def piece(self, token: int) -> bytes:
        piece = self.pieces.get(token)
        if piece is None:
            # <|python_tag|> is a control token: rendered, so that the tool-call parser sees it.
            piece = PYTHON_TAG.encode() if token == self.python_tag else self.llm.detokenize([token])
            self.pieces[token] = piece
        return piece

    def grammar(self, text: str) -> LlamaGrammar:
        grammar = self.grammars.get(text)
        if grammar is None:
            if len(self.grammars) >= 64:  # a small cache: clients tend to send the same few schemas
                self.grammars.pop(next(iter(self.grammars)))
            grammar = self.grammars[text] = LlamaGrammar.from_string(text, verbose=False)
        return grammar

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


def _prompt_logprobs(
    job: CancellableJob, model: LoadedModel, prompt: list[int], top: int
) -> list[PromptTokenLogprob] | None:
    """Score the prompt: each token after the ones llama.cpp put in front (``model.added``) with its logprob under the logits of the position before it, and ``top`` alternatives; None when
    the job is cancelled (checked between batches).

    The model is loaded without logits_all, so llama-cpp-python keeps one row of logits; this evaluates the
    prompt itself, asking llama.cpp for every position's logits, a batch at a time. The prompt stays in the
    KV cache, recorded as llama-cpp-python records what it evaluated, so the generation that follows starts
    from it instead of evaluating the prompt again.
    """
    llm, added = model.llm, model.added
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
        rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), model.n_vocab))
        for offset in range(len(chunk)):
            target = start + offset + 1  # the token this position's logits predict
            if target < added or target >= len(prompt):
                continue
            logprob, alternatives = model.scored(rows[offset], prompt[target], top)
            entries.append(PromptTokenLogprob(token=texts[target - added], logprob=logprob, top_logprobs=alternatives))
    # Llama.generate samples at once from a prompt it finds wholly evaluated (the last row of logits is the
    # prompt's last position, as after its own evaluation).
    llm.input_ids[: len(prompt)] = prompt
    llm.n_tokens = len(prompt)
    llm._requires_eval = False
    return entries


def pump(job: CancellableJob, model: LoadedModel, gen: Gen, emit: Callable[[Any], Any]) -> Outcome | None:
    """Run one generation, handing each text piece to ``emit``; None when stopped from outside.

    A piece is a ``str``, or ``(str, [TokenLogprob])`` when logprobs were asked for.
    """
    llm = model.llm
    prompt = llm.tokenize(gen.prompt.encode("utf-8"), add_bos=not gen.chat, special=True)
    n_ctx = llm.n_ctx()
    if len(prompt) >= n_ctx:
        raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
    scored_prompt: list[PromptTokenLogprob] | None = None
    evaluated = False  # the prompt was just evaluated afresh (by the scoring), and is in the KV cache
    if gen.prompt_logprobs is not None:
        scored_prompt = []
        if len(prompt) > model.added:
            scored_prompt = _prompt_logprobs(job, model, prompt, gen.prompt_logprobs)
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
    is_eog, vocab, piece_of = llama_cpp.llama_vocab_is_eog, model.vocab, model.piece
    stops, top = StopStrings(gen.stop), gen.top_logprobs
    entries: list[TokenLogprob] = []
    held = ""
    count = 0
    finish = "length"
    grammar = model.grammar(gen.grammar) if gen.grammar is not None else None
    options = {**gen.options, "logits_processor": _logit_bias(gen.logit_bias)} if gen.logit_bias else gen.options
    generator = llm.generate(prompt, grammar=grammar, **options)
    try:
        for token in generator:
            if is_eog(vocab, token):
                finish = "stop"
                break
            count += 1
            if top is not None:
                entries.append(model.logprob(token, top))
            text = decode(piece_of(token))
            if stops:
                held += text
                cut = stops.first(held)
                if cut >= 0:
                    held, text = "", held[:cut]
                    finish = "stop"
                else:
                    keep = stops.held_back(held)
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
                return Outcome(finish, len(prompt), count, entries, scored_prompt)
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
    return Outcome(finish, len(prompt), count, entries, scored_prompt)


class _Collected:
    """The pieces of one generation, kept (``keep`` is its emit)."""

    __slots__ = ("entries", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.entries: list[TokenLogprob] = []

    def keep(self, piece: Any) -> None:
        if piece.__class__ is str:
            self.texts.append(piece)
        else:
            self.texts.append(piece[0])
            self.entries.extend(piece[1])


def collect(job: CancellableJob, model: LoadedModel, gens: list[Gen]) -> list[tuple[str, list[TokenLogprob], Outcome]]:
    """Run the generations in order; the text, logprob entries and outcome of each one that finished (those
    after a cancellation are left out)."""
    results = []
    for gen in gens:
        if job.cancelled:
            break
        kept = _Collected()
        outcome = pump(job, model, gen, kept.keep)
        if outcome is None:
            break
        kept.entries.extend(outcome.logprobs)
        results.append(("".join(kept.texts), kept.entries, outcome))
    return results
