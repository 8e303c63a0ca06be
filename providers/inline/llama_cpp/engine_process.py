"""The llama.cpp engine process of one model: it loads the GGUF and runs generations, one at a time.

:func:`open_llama` is the opener :class:`~llama_stack.providers.utils.process_worker.WorkerProcess`
calls in the child. It reports the facts the server needs from the loaded model (the context window
llama.cpp gave it) and serves two kinds of job:

- ``"stream"``: one :class:`~.generation.Gen`, each text piece sent to the server as it is decoded;
- ``"collect"``: a list of them, run in order; their texts come back together at the end.

Both end with :class:`~.generation.Outcome` values. Everything llama.cpp touches (the weights, the
context, grammars, the sampler) lives here only: when llama.cpp aborts, this process dies, not the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llama_cpp import Llama

from .generation import Gen, LoadedModel, collect, pump

STREAM = "stream"
COLLECT = "collect"


@dataclass(frozen=True)
class LlamaSpec:
    """How to load a model (pickled to the engine process)."""

    path: str
    n_ctx: int
    n_threads: int | None
    n_batch: int
    verbose: bool
    python_tag: bool  # the model calls tools in the Llama 3.1 format: render <|python_tag|> as text


@dataclass(frozen=True)
class LoadedFacts:
    """What the engine process reports once the model is loaded."""

    n_ctx: int  # the window llama.cpp gave the model (a multiple of 256)
    logits_all: bool  # logits kept for every position (never: see generation.py)


def load_llama(spec: LlamaSpec) -> Llama:
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
