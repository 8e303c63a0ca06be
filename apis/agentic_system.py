"""Agentic system: create an agent (model, instructions, tools, memory, shields), run turns, delete it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
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
    ShieldType,
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
    max_iterations: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Extension: the most model calls one turn makes (each tool round trip is one more); unset: the "
            "provider's default. A turn that reaches it ends with stop_reason max_iterations."
        ),
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
_STARTED = "Extension: when the step started (UTC)."
_COMPLETED = "Extension: when the step ended (UTC)."


class ToolExecutionError(Schema):
    """Extension: a tool call that failed; the model was given ``error`` as the tool's response."""

    tool_name: str
    call_id: str | None = None
    error: str


class ModelInferenceStep(Schema):
    step_type: Literal["model_inference"] = Field(default="model_inference", title=_STEP_TYPE_TITLE)
    uuid: str
    text: str
    logprobs: JsonObject | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list, description="Extension: the tools the model called.")
    stop_reason: StopReason | None = Field(default=None, description="Extension: why the model stopped.")
    started_at: datetime | None = Field(default=None, description=_STARTED)
    completed_at: datetime | None = Field(default=None, description=_COMPLETED)


class ToolExecutionStep(Schema):
    step_type: Literal["tool_execution"] = Field(default="tool_execution", title=_STEP_TYPE_TITLE)
    uuid: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_responses: list[ToolResponse] = Field(default_factory=list)
    errors: list[ToolExecutionError] = Field(
        default_factory=list, description="Extension: the calls that failed, with their errors."
    )
    started_at: datetime | None = Field(default=None, description=_STARTED)
    completed_at: datetime | None = Field(default=None, description=_COMPLETED)


class SafetyFilteringStep(Schema):
    step_type: Literal["safety_filtering"] = Field(default="safety_filtering", title=_STEP_TYPE_TITLE)
    uuid: str
    violation: SafetyViolation | None = None
    shield_type: ShieldType | None = Field(default=None, description="Extension: the shield that ran.")
    stage: Literal["input", "output"] | None = Field(
        default=None, description="Extension: input shields screen the turn's messages, output shields its answer."
    )
    started_at: datetime | None = Field(default=None, description=_STARTED)
    completed_at: datetime | None = Field(default=None, description=_COMPLETED)


class MemoryRetrievalStep(Schema):
    step_type: Literal["memory_retrieval"] = Field(default="memory_retrieval", title=_STEP_TYPE_TITLE)
    uuid: str
    documents: list[MemoryBankDocument] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    query: str | None = Field(default=None, description="Extension: the text the banks were queried with.")
    started_at: datetime | None = Field(default=None, description=_STARTED)
    completed_at: datetime | None = Field(default=None, description=_COMPLETED)


# One step of a turn; `step_type` says which.
ExecutionStep = Annotated[
    ModelInferenceStep | ToolExecutionStep | SafetyFilteringStep | MemoryRetrievalStep,
    Field(discriminator="step_type"),
]


# Extension: why a turn ended. end_of_turn: the model answered; client_tool_calls: the answer calls custom tools,
# which the client runs and answers in its next execute; max_iterations: the model still called tools when the
# agent's iteration limit was reached; shield_violation: a shield stopped the turn (its suggested response is
# the answer).
TurnStopReason = Literal["end_of_turn", "client_tool_calls", "max_iterations", "shield_violation"]


class AgenticSystemTurn(Schema):
    """A single turn in an interaction with an Agentic System."""

    user_messages: list[Message]
    steps: list[ExecutionStep] = Field(default_factory=list)
    response_message: Message
    stop_reason: TurnStopReason | None = Field(default=None, description="Extension: why the turn ended.")
    started_at: datetime | None = Field(default=None, description="Extension: when the turn started (UTC).")
    completed_at: datetime | None = Field(default=None, description="Extension: when the turn ended (UTC).")


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
    step: ExecutionStep | None = Field(default=None, description="Extension: on step_end, the step as recorded.")
    turn: AgenticSystemTurn | None = Field(
        default=None, description="Extension: on the turn's last event, the turn as a non-streaming execute answers it."
    )


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
