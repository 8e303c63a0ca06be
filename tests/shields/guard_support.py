"""Test-only inference provider for the shield tests: each model replays the guard verdict its metadata scripts.

``answer: "unsafe\\nS1"`` is what the model says; ``fail: 502`` (or any status) raises that error, ``fail: crash``
an unexpected exception. Every request is kept (``requests``) so that tests can read the prompt the shield wrote.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from llama_stack.apis.errors import ERRORS_BY_STATUS, NotFoundError
from llama_stack.apis.inference import ChatCompletionResponse, CompletionRequest, CompletionResponse
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderSpec, hookimpl


class ScriptedGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptedGuard:
    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.requests: list[CompletionRequest] = []

    async def register_model(self, model: Model) -> None:
        self.models[model.model_id] = model

    def _script(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.models:
            raise NotFoundError(f"scripted-guard serves no model {model_id!r}", provider="scripted")
        metadata = self.models[model_id].metadata
        fail = metadata.get("fail")
        if fail == "crash":
            raise RuntimeError("an internal detail that must not reach a client")
        if fail is not None:
            raise ERRORS_BY_STATUS[int(fail)](f"the guard model replayed a {fail}", provider="scripted", retry_after=7)
        return metadata

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        self.requests.append(request)
        return CompletionResponse(content=self._script(request.model)["answer"], stop_reason="finished_ok")

    async def chat_completion(self, request: Any) -> ChatCompletionResponse:
        raise AssertionError("the llama-guard shield sends its prompt as a completion, not a chat")


def build(config: ScriptedGuardConfig, context: Any) -> ScriptedGuard:
    return ScriptedGuard()


class ScriptedGuardPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                api="inference",
                provider_type="inline::scripted-guard",
                config_class=ScriptedGuardConfig,
                factory="shields.guard_support:build",
                description="Test-only: replays scripted guard verdicts.",
            )
        )
