"""The llama.cpp processes of one model: its engine, which runs generations, and its vocabulary.

These are the openers :class:`~llama_stack.providers.utils.process_worker.WorkerProcess` calls in a child
process; everything llama.cpp touches lives there only, so that when llama.cpp aborts or segfaults that
process dies, not the server.

- :func:`open_llama` loads the model and reports the context window llama.cpp gave it. Its jobs:
  ``"stream"`` (one :class:`~.generation.Gen`, each text piece sent to the server as it is decoded) and
  ``"collect"`` (a list of them, run in order; their texts come back together at the end). Both end with
  :class:`~.generation.Outcome` values.
- :func:`open_vocabulary` loads the GGUF's vocabulary only (``vocab_only``: no weights) and reports what the
  server renders prompts and checks requests with (chat template, token texts, vocabulary size). Its job,
  ``"check_grammar"``, asks llama.cpp whether it can parse a grammar: its parser recurses once per nesting
  level, and a schema like ``{"maxItems": 100000}`` overflows the stack. That kills this small process (the
  request gets a 400, the vocabulary is reloaded), never a generation in progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_module
from llama_cpp import Llama
from llama_cpp._internals import LlamaModel
from llama_cpp.llama_grammar import LLAMA_GRAMMAR_DEFAULT_ROOT

from .generation import Gen, LoadedModel, collect, pump

STREAM = "stream"
COLLECT = "collect"
CHECK_GRAMMAR = "check_grammar"


@dataclass(frozen=True)
class LlamaSpec:
    """How to load a model (pickled to the engine process)."""

    path: str
    n_ctx: int
    n_threads: int | None
    n_batch: int
    verbose: bool
    python_tag: bool  # the model calls tools in the Llama 3.1 format: render <|python_tag|> as text
    repack_weights: bool = False  # llama.cpp's CPU extra buffer types (see LlamaCppConfig.repack_weights)


@dataclass(frozen=True)
class LoadedFacts:
    """What the engine process reports once the model is loaded."""

    n_ctx: int  # the window llama.cpp gave the model (a multiple of 256)
    logits_all: bool  # logits kept for every position (never: see generation.py)


def _without_extra_buffer_types() -> None:
    """Make this process's Llama models load without llama.cpp's CPU extra buffer types (use_extra_bufts).

    llama-cpp-python's Llama takes no argument for it and builds its model params from
    ``llama_model_default_params()``; this engine process loads one model, so wrapping that function here
    changes nothing else.
    """
    default_params = llama_cpp_module.llama_model_default_params
    if getattr(default_params, "_no_extra_buffer_types", False):
        return

    def params() -> Any:
        made = default_params()
        if hasattr(made, "use_extra_bufts"):
            made.use_extra_bufts = False
        return made

    params._no_extra_buffer_types = True  # type: ignore[attr-defined]
    llama_cpp.llama_model_default_params = params
    llama_cpp_module.llama_model_default_params = params


def load_llama(spec: LlamaSpec) -> Llama:
    if not spec.repack_weights:
        _without_extra_buffer_types()

    def load(n_ctx: int) -> Llama:
        return Llama(
            model_path=spec.path, n_ctx=n_ctx, n_threads=spec.n_threads, n_batch=spec.n_batch, verbose=spec.verbose
        )

    llm = load(spec.n_ctx)
    if llm.n_ctx() != len(llm.input_ids):
        # llama.cpp pads the context (to a multiple of 256) while llama-cpp-python sizes its token buffer by
        # the n_ctx asked for; past that size it fails or drops tokens. Ask for the padded size.
        padded = llm.n_ctx()
        llm.close()
        llm = load(padded)
    return llm


def open_llama(spec: LlamaSpec) -> tuple[LoadedFacts, Callable[[Any, str, Any, Callable[[Any], None]], Any]]:
    """Load the model; its facts and the job handler (in the engine process)."""
    model = LoadedModel(load_llama(spec), spec.python_tag)

    def handle(job: Any, kind: str, payload: Any, emit: Callable[[Any], None]) -> Any:
        if kind == STREAM:
            gen: Gen = payload
            return pump(job, model, gen, emit)
        if kind == COLLECT:
            return collect(job, model, payload)
        raise RuntimeError(f"unknown job kind {kind!r}")

    return LoadedFacts(n_ctx=model.llm.n_ctx(), logits_all=model.llm._logits_all), handle


@dataclass(frozen=True)
class VocabularySpec:
    path: str
    verbose: bool


@dataclass(frozen=True)
class VocabularyFacts:
    """What the server needs from a GGUF besides its generations."""

    n_vocab: int
    chat_template: str | None  # tokenizer.chat_template
    name: str | None  # general.name
    eos_text: str
    bos_text: str


def open_vocabulary(
    spec: VocabularySpec,
) -> tuple[VocabularyFacts, Callable[[Any, str, Any, Callable[[Any], None]], Any]]:
    """Load the GGUF's vocabulary (in its process); raises ValueError when the file is no GGUF model."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    vocab = LlamaModel(path_model=spec.path, params=params, verbose=spec.verbose)
    metadata = vocab.metadata()

    def token_text(token_id: int) -> str:
        return vocab.token_get_text(token_id) if token_id != -1 else ""

    facts = VocabularyFacts(
        n_vocab=vocab.n_vocab(),
        chat_template=metadata.get("tokenizer.chat_template"),
        name=metadata.get("general.name"),
        eos_text=token_text(vocab.token_eos()),
        bos_text=token_text(vocab.token_bos()),
    )

    def handle(job: Any, kind: str, payload: Any, emit: Callable[[Any], None]) -> Any:
        if kind != CHECK_GRAMMAR:
            raise RuntimeError(f"unknown job kind {kind!r}")
        grammar: str = payload
        sampler = llama_cpp.llama_sampler_init_grammar(
            vocab.vocab, grammar.encode(), LLAMA_GRAMMAR_DEFAULT_ROOT.encode()
        )
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    return facts, handle
