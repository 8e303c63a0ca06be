"""Test support importable by every test module: a test-only replay provider and server helpers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from llama_stack.apis.errors import ERRORS_BY_STATUS, NotFoundError, ServiceUnavailableError
from llama_stack.apis.inference import (
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionResponse,
    CompletionResponseStreamChunk,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderSpec, discover_providers, hookimpl

REPO = Path(__file__).resolve().parent.parent
SEED_SPEC = REPO.parent / "shared" / "specs" / "llama-stack-draft-openapi.json"


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reply: str = "The capital of France is Paris."


class ReplayInference:
    """Answers a fixed reply, word by word when streaming; drives the server's branches deterministically.

    A model's metadata can make it fail: ``fail: crash`` raises an unexpected error,
    ``fail: busy`` a 503; ``stall: true`` makes a stream stop after its first chunk until it is closed.
    """

    def __init__(self, config: ReplayConfig):
        self.reply = config.reply
        self.models: dict[str, Model] = {}
        self.stream_closed = asyncio.Event()
        self.requests: list[Any] = []

    async def register_model(self, model: Model) -> None:
        self.models[model.model_id] = model

    def _check(self, model_id: str) -> None:
        if model_id not in self.models:
            raise NotFoundError(f"unknown model {model_id}")
        fail = self.models[model_id].metadata.get("fail")
        if fail == "crash":
            raise RuntimeError("secret internal detail /etc/passwd")
        if fail == "busy":
            raise ServiceUnavailableError("model is busy", provider="replay")
        if isinstance(fail, int):
            raise ERRORS_BY_STATUS[fail](f"replayed a {fail}", provider="replay")

    async def _words(self, model_id: str, make_chunk: Any) -> AsyncIterator[Any]:
        try:
            words = self.reply.split(" ")
            for index, word in enumerate(words):
                yield make_chunk(word if index == 0 else " " + word, None)
                metadata = self.models[model_id].metadata
                if metadata.get("stall"):
                    await asyncio.Event().wait()  # until the consumer goes away
                if metadata.get("fail_mid_stream"):
                    raise ERRORS_BY_STATUS[metadata["fail_mid_stream"]]("the stream broke", provider="replay")
            yield make_chunk("", "finished_ok")
        finally:
            self.stream_closed.set()

    async def completion(self, request: Any) -> Any:
        self._check(request.model)
        if request.stream:
            return self._words(request.model, lambda text, stop: CompletionResponseStreamChunk(text_delta=text, stop_reason=stop))
        return CompletionResponse(content=self.reply, stop_reason="finished_ok")

    async def chat_completion(self, request: Any) -> Any:
        self._check(request.model)
        self.requests.append(request)
        if request.stream:
            return self._words(request.model, lambda text, stop: ChatCompletionResponseStreamChunk(text_delta=text, stop_reason=stop))
        return ChatCompletionResponse(content=self.reply, stop_reason="finished_ok")

    async def batch_completion(self, request: Any) -> list[CompletionResponse]:
        self._check(request.model)
        return [CompletionResponse(content=f"{self.reply} #{i}", stop_reason="finished_ok") for i, _ in enumerate(request.content_batch)]

    async def batch_chat_completion(self, request: Any) -> list[ChatCompletionResponse]:
        self._check(request.model)
        return [ChatCompletionResponse(content=f"{self.reply} #{i}", stop_reason="finished_ok") for i, _ in enumerate(request.batch_dialogs)]


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


FAILING_STATUSES = [400, 404, 409, 422, 501, 502, 503, 504]
FAILING_MODELS = "".join(
    f"  - {{{{model_id: failing-{status}, provider_id: replay, metadata: {{{{fail: {status}}}}}}}}}\n" for status in FAILING_STATUSES
)

REPLAY_YAML = """
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
  - {{model_id: breaking-model, provider_id: replay, metadata: {{fail_mid_stream: 502}}}}
""" + FAILING_MODELS + """server:
  api_keys: {api_keys}
storage:
  dir: {storage}
"""


def write_replay_distribution(directory: Path, api_keys: list[str] | None = None) -> Path:
    path = directory / "replay.yaml"
    path.write_text(REPLAY_YAML.format(api_keys=api_keys or [], storage=directory / "state"))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base_url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll /health until the server answers (or the process dies); the model loads before it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling interval while the server starts, not a race cover
    raise TimeoutError(f"{base_url} did not become healthy in {timeout}s")


def llama_stack_command() -> list[str]:
    return [str(Path(sys.executable).with_name("llama-stack"))]
