"""Agentic system: create an agent (model, instructions, tools, memory, shields), run turns, delete it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import Field, field_validator

from .common import (
    JsonObject,
    MemoryBankDocument,
    Message,
    ProviderId,
    SafetyViolation,
    Schema,
    ShieldConfig,
    StepType,
    StopReason,
    ToolCall,
    ToolDefinition,
    ToolResponse,
)
from .dispatch import ByOwner, Creates, dispatch
from .routes import webmethod


class AgenticSystemCreateRequest(Schema):
    uuid: str
    instructions: str
    # The seed enumerates llama3_8b_chat / llama3_70b_chat; any model id the distribution serves is accepted.
    model: str = Field(description="A model id the distribution serves.")
    available_tools: list[ToolDefinition] = Field(default_factory=list)
    executable_tools: list[str] = Field(default_factory=list, json_schema_extra={"uniqueItems": True})
    memory_bank_uuids: list[str] = Field(default_factory=list)
    input_shields: list[ShieldConfig] = Field(default_factory=list)
    output_shields: list[ShieldConfig] = Field(default_factory=list)
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that runs the agent; unset: the agentic_system API's first provider.",
    )

    @field_validator("executable_tools")
    @classmethod
    def _unique_tools(cls, tools: list[str]) -> list[str]:
        repeated = sorted({tool for tool in tools if tools.count(tool) > 1})
        if repeated:
            raise ValueError(f"executable_tools must not repeat a tool: {', '.join(repeated)}")
        return tools


class AgenticSystemCreateResponse(Schema):
    agent_uuid: str


_STEP_TYPE_TITLE = "The type of execution step."


class ModelInferenceStep(Schema):
    step_type: Literal["model_inference"] = Field(default="model_inference", title=_STEP_TYPE_TITLE)
    uuid: str
    text: str
    logprobs: JsonObject | None = None


class ToolExecutionStep(Schema):
    step_type: Literal["tool_execution"] = Field(default="tool_execution", title=_STEP_TYPE_TITLE)
    uuid: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_responses: list[ToolResponse] = Field(default_factory=list)


class SafetyFilteringStep(Schema):
    step_type: Literal["safety_filtering"] = Field(default="safety_filtering", title=_STEP_TYPE_TITLE)
    uuid: str
    violation: SafetyViolation | None = None


class MemoryRetrievalStep(Schema):
    step_type: Literal["memory_retrieval"] = Field(default="memory_retrieval", title=_STEP_TYPE_TITLE)
    uuid: str
    documents: list[MemoryBankDocument] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)


# One step of a turn; `step_type` says which.
ExecutionStep = Annotated[
    ModelInferenceStep | ToolExecutionStep | SafetyFilteringStep | MemoryRetrievalStep,
    Field(discriminator="step_type"),
]


class AgenticSystemTurn(Schema):
    """A single turn in an interaction with an Agentic System."""

    user_messages: list[Message]
    steps: list[ExecutionStep] = Field(default_factory=list)
    response_message: Message


class AgenticSystemExecuteRequest(Schema):
    agent_uuid: str
    messages: list[Message]
    turn_history: list[AgenticSystemTurn] = Field(default_factory=list)
    stream: bool = False


class AgenticSystemExecuteResponse(Schema):
    """non-stream response from the agentic system."""

    turn: AgenticSystemTurn


EventType = Literal["step_start", "step_end", "step_progress"]


class AgenticSystemExecuteResponseStreamChunk(Schema):
    """Streamed agent execution response."""

    event_type: EventType = Field(title="The type of event.")
    step_uuid: str
    step_type: StepType = Field(title=_STEP_TYPE_TITLE)
    violation: SafetyViolation | None = None
    tool_call: ToolCall | None = None
    tool_response_delta: ToolResponse | None = None
    response_text_delta: str | None = None
    retrieved_document: MemoryBankDocument | None = None
    stop_reason: StopReason | None = None


@runtime_checkable
class AgenticSystem(Protocol):
    @webmethod("POST", "/agentic_system/create")
    @dispatch(Creates(resource="agent", field="agent_uuid", from_answer=True, provider_field="request.provider_id"))
    async def create_agentic_system(self, request: AgenticSystemCreateRequest) -> AgenticSystemCreateResponse:
        """Create an agent from a model, instructions, tools, memory banks and shields."""
        ...

    @webmethod("POST", "/agentic_system/execute", streams=True)
    @dispatch(ByOwner(resource="agent", field="request.agent_uuid"))
    async def execute_agentic_system(
        self, request: AgenticSystemExecuteRequest
    ) -> AgenticSystemExecuteResponse | AsyncIterator[AgenticSystemExecuteResponseStreamChunk]:
        """Run one turn of an agent; with ``stream: true`` its steps arrive as events."""
        ...

    @webmethod("DELETE", "/agentic_system/delete")
    @dispatch(ByOwner(resource="agent", field="agent_id", forgets=True))
    async def delete_agentic_system(self, agent_id: str) -> None:
        """Delete an agent."""
        ...
