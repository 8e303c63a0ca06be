"""Test support importable by every test module: a test-only replay provider and server helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict

from llama_stack.apis.common import StopReason, ToolCall
from llama_stack.apis.errors import ERRORS_BY_STATUS, NotFoundError, ServiceUnavailableError
from llama_stack.apis.inference import (
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionResponse,
    CompletionResponseStreamChunk,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Logprobs,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderSpec, hookimpl
from llama_stack.request_context import provider_data

REPO = Path(__file__).resolve().parent.parent
SEED_SPEC = REPO / "tests" / "specs" / "llama-stack-draft-openapi.json"  # a copy of the seed contract


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reply: str = "The capital of France is Paris."


class ReplayInference:
    """Answers a fixed reply, word by word when streaming; drives the server's branches deterministically.

    It honours ``stop`` (the reply is cut before the first stop string), ``max_tokens`` (counted in words,
    then ``stop_reason: max_tokens``) and ``logprobs`` (word i has logprob -(i+1)/10; its alternatives are
    the word itself and ``alt1``, ``alt2``, ... each 1 lower). A model's metadata can add to the answer:
    ``usage: true`` counts words as tokens; ``tool_calls: [{tool_name, arguments, call_id?}, ...]`` makes
    chat answers call those tools (with no text) unless ``tool_choice`` is ``none``.

    It can also make it fail: ``fail: crash`` raises an unexpected error, ``fail: busy`` a 503;
    ``stall: true`` makes a stream stop after its first chunk until it is closed. ``seconds_per_chunk: s``
    paces answers as a model generating would: ``s`` seconds per word (a stream waits before each chunk
    after the first).
    """

    def __init__(self, config: ReplayConfig):
        self.reply = config.reply
        self.models: dict[str, Model] = {}
        self.stream_closed = asyncio.Event()
        self.requests: list[Any] = []
        self.provider_data_seen: list[dict[str, Any]] = []

    async def register_model(self, model: Model) -> None:
        self.models[model.model_id] = model

    def _check(self, model_id: str) -> None:
        if model_id not in self.models:
            raise NotFoundError(f"unknown model {model_id}")
        fail = self.models[model_id].metadata.get("fail")
        if fail == "crash":
            raise RuntimeError("secret internal detail /etc/passwd")
        if fail == "busy":
            raise ServiceUnavailableError("model is busy", provider="replay", retry_after=5)
        if isinstance(fail, int):
            raise ERRORS_BY_STATUS[fail](f"replayed a {fail}", provider="replay")

    def _answer(self, request: Any, silent: bool = False) -> tuple[list[str], StopReason]:
        """The reply's words (each but the first with its leading space) and why it stopped."""
        text = "" if silent else self.reply
        cuts = [text.find(stop) for stop in getattr(request, "stop", []) if stop in text]
        if cuts:
            text = text[: min(cuts)]
        words = [piece for i, word in enumerate(text.split(" ")) if (piece := word if i == 0 else " " + word)]
        if request.max_tokens and len(words) > request.max_tokens:
            return words[: request.max_tokens], StopReason.max_tokens
        return words, StopReason.finished_ok

    @staticmethod
    def _logprobs(request: Any, words: list[str], start: int = 0) -> Logprobs | None:
        if not request.logprobs:
            return None
        tokens = []
        for i, word in enumerate(words, start):
            logprob = -(i + 1) / 10
            alternatives = [TopLogprob(token=word, logprob=logprob)]
            alternatives += [TopLogprob(token=f"alt{k}", logprob=logprob - k) for k in range(1, request.top_logprobs)]
            tokens.append(TokenLogprob(token=word, logprob=logprob, top_logprobs=alternatives[: request.top_logprobs]))
        return Logprobs(content=tokens)

    def _usage(self, model_id: str, prompt: Any, words: list[str]) -> Usage | None:
        if not self.models[model_id].metadata.get("usage"):
            return None
        return Usage(prompt_tokens=len(_text_of(prompt).split()), completion_tokens=len(words))

    async def _generating(self, model_id: str, words: int) -> None:
        """The time a model paced by ``seconds_per_chunk`` takes to write ``words`` words."""
        pace = self.models[model_id].metadata.get("seconds_per_chunk")
        if pace:
            await asyncio.sleep(pace * words)  # the model's pace, not a test's wait

    def _tool_calls(self, request: Any) -> list[ToolCall]:
        if request.tool_choice == "none":
            return []
        return [ToolCall(**call) for call in self.models[request.model].metadata.get("tool_calls", [])]

    async def _stream(
        self, request: Any, make_chunk: Any, prompt: Any, tool_calls: list[ToolCall] = ()
    ) -> AsyncIterator[Any]:
        words, stop = self._answer(request, silent=bool(tool_calls))
        try:
            for index, word in enumerate(words):
                yield make_chunk(text_delta=word, logprobs=self._logprobs(request, [word], index))
                metadata = self.models[request.model].metadata
                if metadata.get("stall"):
                    await asyncio.Event().wait()  # until the consumer goes away
                if metadata.get("fail_mid_stream"):
                    raise ERRORS_BY_STATUS[metadata["fail_mid_stream"]]("the stream broke", provider="replay")
                await self._generating(request.model, 1)
            for index, call in enumerate(tool_calls):
                yield make_chunk(text_delta="", tool_call=call, tool_call_index=index)
            usage = self._usage(request.model, prompt, words)
            yield make_chunk(text_delta="", stop_reason=stop, **({"usage": usage} if usage else {}))
        finally:
            self.stream_closed.set()

    async def completion(self, request: Any) -> Any:
        self._check(request.model)
        self.requests.append(request)
        if request.stream:
            return self._stream(request, CompletionResponseStreamChunk, request.content)
        words, stop = self._answer(request)
        await self._generating(request.model, len(words))
        return CompletionResponse(
            content="".join(words),
            stop_reason=stop,
            logprobs=self._logprobs(request, words),
            usage=self._usage(request.model, request.content, words),
        )

    async def chat_completion(self, request: Any) -> Any:
        self._check(request.model)
        self.requests.append(request)
        self.provider_data_seen.append(dict(provider_data()))
        tool_calls = self._tool_calls(request)
        prompt = [m.content for m in [*request.dialog.message_history, request.dialog.message]]
        if request.stream:
            return self._stream(request, ChatCompletionResponseStreamChunk, prompt, tool_calls)
        words, stop = self._answer(request, silent=bool(tool_calls))
        await self._generating(request.model, len(words))
        return ChatCompletionResponse(
            content="".join(words),
            tool_calls=tool_calls,
            stop_reason=stop,
            logprobs=self._logprobs(request, words),
            usage=self._usage(request.model, prompt, words),
        )

    async def batch_completion(self, request: Any) -> list[CompletionResponse]:
        self._check(request.model)
        self.requests.append(request)
        return [
            CompletionResponse(
                content=f"{self.reply} #{i}",
                stop_reason="finished_ok",
                usage=self._usage(request.model, content, self.reply.split()),
            )
            for i, content in enumerate(request.content_batch)
        ]

    async def batch_chat_completion(self, request: Any) -> list[ChatCompletionResponse]:
        self._check(request.model)
        self.requests.append(request)
        return [
            ChatCompletionResponse(content=f"{self.reply} #{i}", stop_reason="finished_ok")
            for i, _ in enumerate(request.batch_dialogs)
        ]

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        """Four numbers per text: its length, its word count, its count of 'a's, and 1."""
        self._check(request.model)
        return EmbeddingsResponse(
            embeddings=[[float(len(t)), float(len(t.split())), float(t.count("a")), 1.0] for t in request.contents]
        )

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        """Relevance is the share of the query's words a document contains."""
        self._check(request.model)
        query = set(request.query.lower().split())
        scores = [len(query & set(doc.lower().split())) / max(1, len(query)) for doc in request.documents]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n or len(scores)]
        return RerankResponse(results=[RerankResult(index=i, relevance_score=scores[i]) for i in order])


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part) for part in content)
    return ""


def build_replay(config: ReplayConfig, context: Any) -> ReplayInference:
    return ReplayInference(config)


class ReplayPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                api="inference",
                provider_type="inline::replay",
                config_class=ReplayConfig,
                factory="support:build_replay",
                description="Test-only: replays a fixed reply.",
            )
        )


# What the entry point of replay_plugin_env names.
REPLAY_PLUGIN = ReplayPlugin()


def replay_plugin_env(directory: Path) -> dict[str, str]:
    """This environment, in which a ``llama-stack run`` subprocess also finds ``inline::replay``.

    The plugin comes in as an installed one would: through an entry point, here of a package whose only
    files are its metadata (a ``.dist-info`` folder in ``directory``), its module being this one.
    """
    metadata = directory / "llama_stack_replay_plugin-0.dist-info"
    metadata.mkdir(parents=True, exist_ok=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: llama-stack-replay-plugin\nVersion: 0\n")
    (metadata / "entry_points.txt").write_text("[llama_stack]\nreplay = support:REPLAY_PLUGIN\n")
    path = [str(directory), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


# What tool-model calls: one call with the provider's id, one without (the OpenAI layer makes one up).
TOOL_CALLS = [
    {"tool_name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "call_id": "call_weather_1"},
    {"tool_name": "get_time", "arguments": {"zone": "Europe/Paris"}},
]

TOOL_MODEL = (
    "  - "
    + json.dumps(
        {"model_id": "tool-model", "provider_id": "replay", "metadata": {"usage": True, "tool_calls": TOOL_CALLS}}
    )
    .replace("{", "{{")
    .replace("}", "}}")
    + "\n"
)

FAILING_STATUSES = [400, 404, 409, 422, 501, 502, 503, 504]
FAILING_MODELS = "".join(
    f"  - {{{{model_id: failing-{status}, provider_id: replay, metadata: {{{{fail: {status}}}}}}}}}\n"
    for status in FAILING_STATUSES
)

REPLAY_YAML = (
    """
name: replay
apis: [inference]
providers:
  inference:
    - provider_id: replay
      provider_type: inline::replay
      config: {{}}
models:
  - {{model_id: replay-model, provider_id: replay, aliases: [replay-alias], context_length: 4096}}
  - {{model_id: prompted-model, provider_id: replay, system_prompt: Be brief.}}
  - {{model_id: crashing-model, provider_id: replay, metadata: {{fail: crash}}}}
  - {{model_id: busy-model, provider_id: replay, metadata: {{fail: busy}}}}
  - {{model_id: stalling-model, provider_id: replay, metadata: {{stall: true}}}}
  - {{model_id: slow-model, provider_id: replay, metadata: {{seconds_per_chunk: 0.5}}}}
  - {{model_id: breaking-model, provider_id: replay, metadata: {{fail_mid_stream: 502}}}}
  - {{model_id: counting-model, provider_id: replay, metadata: {{usage: true}}}}
  - {{model_id: replay-embedder, provider_id: replay, model_type: embedding}}
  - {{model_id: replay-reranker, provider_id: replay, model_type: rerank}}
"""
    + TOOL_MODEL
    + """"""
    + FAILING_MODELS
    + """server:
  api_keys: {api_keys}
storage:
  dir: {storage}
"""
)


def write_replay_distribution(directory: Path, api_keys: list[str] | None = None) -> Path:
    path = directory / "replay.yaml"
    path.write_text(REPLAY_YAML.format(api_keys=api_keys or [], storage=directory / "state"))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(
    base_url: str, process: subprocess.Popen[bytes], timeout: float = 120.0, output: IO[bytes] | None = None
) -> None:
    """Poll /health until the server answers and every model is ready (or the process dies, failing with
    ``output``, its stderr so far; or a model fails to load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = output if output is not None else process.stderr
            if said is not None and said.seekable():
                said.seek(0)
            raise RuntimeError(f"server exited with {process.returncode}: {said.read().decode() if said else ''}")
        try:
            health = httpx.get(f"{base_url}/health", timeout=1)
        except httpx.TransportError:
            pass
        else:
            readiness = health.json().get("models", {}) if health.status_code == 200 else {"server": "loading"}
            failed = sorted(model for model, status in readiness.items() if status == "failed")
            if failed:
                raise RuntimeError(f"{base_url}: models {', '.join(failed)} failed to load")
            if all(status == "ready" for status in readiness.values()):
                return
        time.sleep(0.1)  # polling interval while the server starts, not a race cover
    raise TimeoutError(f"{base_url} did not become healthy in {timeout}s")


def llama_stack_command() -> list[str]:
    return [str(Path(sys.executable).with_name("llama-stack"))]


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def serving(
    distribution: str | Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    health_timeout: float = 120.0,
) -> Iterator[Served]:
    """``llama-stack run <distribution>`` on a free port, until the block ends; ready once /health answers with
    every model ready.

    ``env`` replaces the environment (default: this one); ``log`` collects the server's output (default: its
    stderr goes to an unnamed temporary file, so that a server dying at start-up fails the test with its own
    message; never a pipe, which nobody drains: a server logging past the pipe's 64 KiB would block).
    """
    port = free_port()
    command = [*llama_stack_command(), "run", str(distribution), "--port", str(port), *args]
    environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with ExitStack() as open_files:
        stderr: IO[bytes] | None = None
        if log is None:
            stderr = open_files.enter_context(tempfile.TemporaryFile())
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
        else:
            with log.open("wb") as sink:  # the server has its own descriptor; the caller reads the file
                process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_health(url, process, timeout=health_timeout, output=stderr)
            yield Served(url, process)
        finally:
            process.terminate()
            process.wait(timeout=30)


@asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn in this event loop until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # the server failed to start: raise its error
        await asyncio.sleep(0.01)  # yields to the server task until it has bound its socket
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
