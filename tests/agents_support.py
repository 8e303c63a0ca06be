"""Test-only providers for agent turns: a model that replays a script, a tool runtime and a shield.

``inline::scripted`` (inference) answers each chat call with the next entry of its script, in order: text
(streamed word by word), tool calls, or both. A script is set per model, in the model's ``metadata: {script:
[...]}`` or by a test through :meth:`ScriptedInference.set_script`; past its end it repeats its last entry. An
entry may ``stall`` (a stream stops after its first word until it is closed) or ``fail`` (a status to raise).
It records every request, so a test can check what the model was shown.

``inline::scripted-tools`` (tool_runtime) runs ``math`` (adds ``a`` and ``b``), ``web_search`` (its service is
down: a 502), ``get_weather`` (a result with ``error`` set) and ``crash`` (an unexpected exception).

``inline::scripted-shield`` (safety) finds a violation when the last message contains ``params.block``; with
``params.error`` it raises (``crash``: an unexpected exception; a status: that error).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from llama_stack.apis.common import (
    BuiltinTool,
    SafetyViolation,
    ShieldType,
    StopReason,
    ToolCall,
    ToolDefinition,
)
from llama_stack.apis.errors import ERRORS_BY_STATUS, NotFoundError, ProviderError
from llama_stack.apis.inference import ChatCompletionResponse, ChatCompletionResponseStreamChunk
from llama_stack.apis.inspect import Model
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.plugins import ProviderSpec, hookimpl


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptedInference:
    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.calls: dict[str, int] = {}
        self.requests: list[Any] = []
        self.stream_closed = asyncio.Event()

    async def register_model(self, model: Model) -> None:
        self.models[model.model_id] = model
        self.scripts[model.model_id] = list(model.metadata.get("script", [{"text": "Hello."}]))

    def set_script(self, model_id: str, script: list[dict[str, Any]]) -> None:
        self.scripts[model_id], self.calls[model_id] = list(script), 0

    def _next(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.models:
            raise NotFoundError(f"unknown model {model_id}")
        script = self.scripts[model_id]
        index = self.calls.get(model_id, 0)
        self.calls[model_id] = index + 1
        entry = script[min(index, len(script) - 1)]
        if "fail" in entry:
            raise ERRORS_BY_STATUS[entry["fail"]]("the scripted model failed", provider="scripted")
        return entry

    async def chat_completion(self, request: Any) -> Any:
        self.requests.append(request)
        entry = self._next(request.model)
        calls = [ToolCall(**call) for call in entry.get("tool_calls", [])]
        if not request.stream:
            return ChatCompletionResponse(content=entry.get("text", ""), tool_calls=calls, stop_reason="finished_ok")
        return self._stream(entry, calls)

    async def _stream(self, entry: dict[str, Any], calls: list[ToolCall]) -> AsyncIterator[Any]:
        self.stream_closed.clear()
        words = entry.get("text", "").split(" ") if entry.get("text") else []
        try:
            for i, word in enumerate(words):
                yield ChatCompletionResponseStreamChunk(text_delta=word if i == 0 else " " + word)
                if entry.get("stall"):
                    await asyncio.Event().wait()  # until the consumer goes away
            for i, call in enumerate(calls):
                yield ChatCompletionResponseStreamChunk(text_delta="", tool_call=call, tool_call_index=i)
            yield ChatCompletionResponseStreamChunk(text_delta="", stop_reason=StopReason.finished_ok)
        finally:
            self.stream_closed.set()

    async def completion(self, request: Any) -> Any:
        raise NotImplementedError


class ScriptedTools:
    def __init__(self) -> None:
        self.invocations: list[ToolInvocationRequest] = []

    async def list_tools(self) -> list[ToolDefinition]:
        number = {"type": "number"}
        return [
            ToolDefinition(
                tool_name=BuiltinTool.math,
                description="Adds a and b.",
                parameters={"type": "object", "properties": {"a": number, "b": number}, "required": ["a", "b"]},
            ),
            ToolDefinition(tool_name=BuiltinTool.web_search, description="Searches the web (its service is down)."),
            ToolDefinition(tool_name="get_weather", description="Reports the weather (and fails)."),
            ToolDefinition(tool_name="crash", description="Raises an unexpected error."),
        ]

    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        self.invocations.append(request)
        name = getattr(request.tool_name, "value", request.tool_name)
        if name == "math":
            total = request.arguments["a"] + request.arguments["b"]
            return ToolInvocationResult(content=str(total))
        if name == "web_search":
            raise ProviderError("the search service answered 503", provider="scripted-tools")
        if name == "get_weather":
            return ToolInvocationResult(content="", error="no weather station answered")
        if name == "crash":
            raise RuntimeError("secret internal detail /etc/shadow")
        raise NotFoundError(f"no tool {name}", provider="scripted-tools")


class ScriptedShield:
    def __init__(self) -> None:
        self.shield_types = [ShieldType.llama_guard, ShieldType.code_guard, ShieldType.prompt_guard]
        self.requests: list[RunShieldRequest] = []

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self.requests.append(request)
        error = request.params.get("error")
        if error == "crash":
            raise RuntimeError("secret internal detail /etc/shadow")
        if error:
            raise ERRORS_BY_STATUS[error]("the guard model is unreachable", provider="scripted-shield")
        block = request.params.get("block")
        last = request.messages[-1].content if request.messages else ""
        if block and isinstance(last, str) and block in last:
            return RunShieldResponse(
                violation=SafetyViolation(
                    violation_type="unsafe",
                    details=f"mentions {block}",
                    suggested_user_response="I can't help with that.",
                )
            )
        return RunShieldResponse()


def build_scripted(config: EmptyConfig, context: Any) -> ScriptedInference:
    return ScriptedInference()


def build_tools(config: EmptyConfig, context: Any) -> ScriptedTools:
    return ScriptedTools()


def build_shield(config: EmptyConfig, context: Any) -> ScriptedShield:
    return ScriptedShield()


class AgentsTestPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        for api, provider_type, factory in (
            ("inference", "inline::scripted", "agents_support:build_scripted"),
            ("tool_runtime", "inline::scripted-tools", "agents_support:build_tools"),
            ("safety", "inline::scripted-shield", "agents_support:build_shield"),
        ):
            register(
                ProviderSpec(
                    api=api,
                    provider_type=provider_type,
                    config_class=EmptyConfig,
                    factory=factory,
                    description="Test-only.",
                )
            )


AGENTS_TEST_PLUGIN = AgentsTestPlugin()

MODEL = "scripted-model"


def agents_distribution(
    directory: Path,
    *,
    apis: tuple[str, ...] = ("inference", "agentic_system", "tool_runtime", "safety", "memory_banks"),
    agents_config: dict[str, Any] | None = None,
) -> Path:
    """A distribution serving the agentic system on the scripted model, with the scripted tools and shield, and
    memory banks on faiss embedded by the replay provider's embedder."""
    providers: dict[str, list[dict[str, Any]]] = {
        "inference": [
            {"provider_id": "scripted", "provider_type": "inline::scripted", "config": {}},
            {"provider_id": "replay", "provider_type": "inline::replay", "config": {}},
        ],
        "agentic_system": [{"provider_id": "agents", "provider_type": "inline::agents", "config": agents_config or {}}],
        "tool_runtime": [{"provider_id": "scripted-tools", "provider_type": "inline::scripted-tools", "config": {}}],
        "safety": [{"provider_id": "scripted-shield", "provider_type": "inline::scripted-shield", "config": {}}],
        "memory_banks": [
            {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {"embedding_model": "replay-embedder"}}
        ],
    }
    document = {
        "name": "agents-test",
        "apis": list(apis),
        "providers": {api: providers[api] for api in apis},
        "models": [
            {"model_id": MODEL, "provider_id": "scripted", "aliases": ["scripted-alias"]},
            {"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"},
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "agents.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
