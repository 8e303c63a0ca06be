"""One llama.cpp model as the server holds it: its engine and vocabulary processes, their queues, its jobs.

Each registered model runs in a child process of the server, its engine (:mod:`.engine_process`,
supervised by :class:`~llama_stack.providers.utils.process_supervisor.SupervisedWorker`): llama.cpp's
weights, context, grammars and sampling live there, so a C++ exception, an assertion or a segfault in
llama.cpp ends that process and not the server. A second, small process per model holds the GGUF's
vocabulary alone (``vocab_only``): it reports the chat template, the token texts and the vocabulary size at
registration, and parses each new grammar, since llama.cpp's grammar parser can be crashed by a schema.
The server process loads no model and parses no grammar.

The server keeps, per model, one worker thread with a FIFO queue
(:class:`~llama_stack.providers.utils.model_worker.ModelWorker`) that hands jobs to the engine process one
at a time: llama.cpp decodes one request at a time per model. Requests beyond the running one wait there,
at most ``max_queue`` of them; one more is refused with 503. Grammar checks have a queue of their own, in
front of the vocabulary process, so that they never wait behind a generation.

For a streamed request the engine process sends each text piece over its pipe as it is decoded; the
worker thread hands it to the event loop with ``loop.call_soon_threadsafe(queue.put_nowait, piece)``, where
it becomes a chunk (:class:`~llama_stack.providers.utils.chunk_stream.ChunkStream`). A non-streamed request
(and a batch) is collected in the engine process and comes back once. Closing a stream, dropping it, or
cancelling the task awaiting a response cancels the job: the job's number goes to the engine process over
a control pipe, and the generation stops within a token.

When the engine process dies (killed by SIGABRT, SIGSEGV, ...), the request it was serving fails with 502
and the requests queued behind it with 503 (``Retry-After``); every error names the provider and the
model and says that llama.cpp crashed and the model is being reloaded. (A grammar that crashes the
vocabulary process is the request's fault: the provider answers 400 naming the field.) The crash is logged
with the exit signal, the model is reloaded in a new process, and later requests are served (crashes in a
row back off up to 30 s). :meth:`LlamaCppEngine.close` stops the engine processes; an engine process also
exits by itself when the server dies (its control pipe closes).

The generation loop itself (stop sequences, UTF-8 pieces, logprobs without ``logits_all``, prompt
logprobs) is in :mod:`.generation`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from llama_stack.apis.errors import BadRequestError, LlamaStackError, ProviderError
from llama_stack.apis.inference import TokenLogprob
from llama_stack.providers.utils.chunk_stream import ChunkStream, ChunkType
from llama_stack.providers.utils.inference.tool_calls.stream import ToolCallStream
from llama_stack.providers.utils.model_worker import ModelWorker, guarded
from llama_stack.providers.utils.process_supervisor import SupervisedWorker, no_backoff
from llama_stack.providers.utils.process_worker import EngineError, WorkerCrashed

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

# Grammar checks that may wait for the vocabulary process (each takes milliseconds); one more is a 503.
_CHECKS_QUEUED = 64

# A generation's text, its logprob entries (when asked for) and how it ended.
Collected = tuple[str, list[TokenLogprob], Outcome]


def _llama_failure(exc: Exception) -> tuple[type[LlamaStackError], str] | None:
    if isinstance(exc, ValueError):  # a prompt longer than the context window
        return BadRequestError, str(exc)
    return None


def _engine_env(config: LlamaCppConfig) -> dict[str, str]:
    env = dict(os.environ)
    if not config.verbose:
        # On an abort ggml attaches gdb to print a backtrace: seconds during which the requests wait for the
        # crash to be noticed. llama.cpp's own message ("terminate called ...") is printed either way.
        env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


class LlamaCppEngine:
    """A model's engine process (generations) and vocabulary process (grammar checks), each behind a worker
    thread and queue of its own. :meth:`load` and :meth:`close` block: call them off the event loop."""

    def __init__(self, model_id: str, provider_id: str, path: Path, n_ctx: int, config: LlamaCppConfig):
        self.model_id = model_id
        self.provider_id = provider_id
        self.path = path
        runner = guarded(model_id, provider_id, "llama.cpp", _llama_failure)
        self.worker = ModelWorker(model_id, provider_id, "llama-cpp", config.max_queue, runner)
        self._checks = ModelWorker(model_id, provider_id, "llama-cpp-vocab", _CHECKS_QUEUED, runner)
        self.workers = [self.worker, self._checks]
        env = _engine_env(config)
        self._vocabulary = SupervisedWorker(
            engine="llama.cpp (vocabulary)",
            model_id=model_id,
            provider_id=provider_id,
            opener=open_vocabulary,
            argument=VocabularySpec(path=str(path), verbose=config.verbose),
            worker=self._checks,
            env=env,
            # It crashes only on a grammar a request sent (that request gets a 400), and reloads in a moment:
            # others' checks should not wait out a backoff.
            backoff=no_backoff,
        )
        spec = LlamaSpec(
            path=str(path),
            n_ctx=n_ctx,
            n_threads=config.n_threads,
            n_batch=config.n_batch,
            verbose=config.verbose,
            python_tag=False,
            repack_weights=config.repack_weights,
        )
        self._generations = SupervisedWorker(
            engine="llama.cpp",
            model_id=model_id,
            provider_id=provider_id,
            opener=open_llama,
            argument=spec,
            worker=self.worker,
            env=env,
        )
        self.loaded: LoadedFacts | None = None

    @property
    def pid(self) -> int | None:
        """The engine process's id (None while there is none)."""
        return self._generations.pid

    @property
    def vocabulary_pid(self) -> int | None:
        return self._vocabulary.pid

    # -- loading (blocking) -------------------------------------------------------------------------

    def load(self, adopt: Callable[[VocabularyFacts], bool]) -> LoadedFacts:
        """Start the vocabulary process and hand what it reports to ``adopt`` (the provider's part: the chat
        template), which answers whether the model calls tools in the Llama 3.1 format (its
        ``<|python_tag|>`` is then rendered as text, for the tool-call parser to see); then start the engine
        process, which loads the weights. Raises a 400 or a 500 naming the model and the file."""
        with self._loading():
            python_tag = adopt(self._vocabulary.start())
            self._generations.argument = replace(self._generations.argument, python_tag=python_tag)
            loaded: LoadedFacts = self._generations.start()
        # Reloads after a crash ask for the window llama.cpp gave (padded), sparing its second load.
        self._generations.argument = replace(self._generations.argument, n_ctx=loaded.n_ctx)
        self.loaded = loaded
        return loaded

    @contextmanager
    def _loading(self) -> Iterator[None]:
        model, path = repr(self.model_id), repr(str(self.path))
        try:
            yield
        except ValueError as exc:  # "Failed to load model from file: ..."
            raise BadRequestError(
                f"model {model}: llama.cpp could not load {path} (is it a GGUF model?): {exc}",
                provider=self.provider_id,
            ) from exc
        except WorkerCrashed as crash:
            raise ProviderError(
                f"model {model}: llama.cpp crashed ({crash.status}) while loading {path}", provider=self.provider_id
            ) from None
        except Exception as exc:
            kind = exc.type_name if isinstance(exc, EngineError) else type(exc).__name__
            raise ProviderError(
                f"model {model}: llama.cpp could not load {path}: {kind}: {exc}", provider=self.provider_id
            ) from exc

    def close(self) -> None:
        """Stop both processes (after the workers have finished their jobs)."""
        self._generations.close()
        self._vocabulary.close()

    # -- jobs ---------------------------------------------------------------------------------------

    async def grammar_parses(self, grammar: str) -> bool:
        """Whether llama.cpp parses ``grammar`` (in the vocabulary process); raises
        :class:`~llama_stack.providers.utils.process_supervisor.EngineCrashedError` when the parser crashed."""
        vocabulary = self._vocabulary
        parses: bool = await self._checks.run(vocabulary.run, vocabulary.epoch, CHECK_GRAMMAR, grammar)
        return parses

    async def collect(self, gens: list[Gen]) -> list[Collected]:
        """Run the generations one after another (one queue place for them all); their results in order."""
        generations = self._generations
        collected: list[Collected] = await self.worker.run(generations.run, generations.epoch, COLLECT, gens)
        return collected

    def stream(self, gen: Gen, chunk: ChunkType, tools: ToolCallStream | None) -> ChunkStream:
        """Queue one generation; its chunks as the engine process decodes it."""
        generations = self._generations
        return ChunkStream(self.worker, chunk, tools, generations.run, generations.epoch, STREAM, gen)
