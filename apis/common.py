"""Types shared by several APIs (messages, attachments, tools, shields, documents)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The seed's untyped objects: any JSON value per key.
JsonObject = dict[str, Any]

URL = Annotated[
    str,
    Field(pattern=r"^(https?://|file://|data:)", description="An http(s)://, file:// or data: URL."),
]

# An extension field naming one of the distribution's providers (provider_ids are short names from its YAML).
ProviderId = Annotated[str, Field(min_length=1, max_length=256)]


class Schema(BaseModel):
    """Base of every contract type: unknown fields are refused, as the seed's schemas declare."""

    model_config = ConfigDict(extra="forbid")


class Attachment(Schema):
    """Attachments are used to refer to external resources, such as images, videos, audio, etc."""

    url: URL
    mime_type: str


# Message content: plain text, one attachment, or a sequence mixing both.
Content = str | Attachment | list[str | Attachment]


class Role(str, Enum):
    system = "system"
    user = "user"
    assistant = "assistant"
    tool = "tool"


class ToolCall(Schema):
    """A tool call is a request to a tool."""

    tool_name: str
    arguments: JsonObject
    # Extension: links a tool's response to this call when a message holds several.
    call_id: str | None = None


class ToolResponse(Schema):
    tool_name: str
    content: Content
    call_id: str | None = Field(default=None, description="The call_id of the ToolCall this answers (extension).")


class Message(Schema):
    role: Role
    content: Content
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_responses: list[ToolResponse] = Field(default_factory=list)


class Dialog(Schema):
    message: Message
    message_history: list[Message] = Field(default_factory=list)


class ShieldType(str, Enum):
    llama_guard = "llama_guard"
    prompt_guard = "prompt_guard"
    code_guard = "code_guard"


class ShieldConfig(Schema):
    shield_type: ShieldType = Field(title="The type of safety shield.")
    params: JsonObject = Field(default_factory=dict)


class BuiltinTool(str, Enum):
    web_search = "web_search"
    math = "math"
    image_gen = "image_gen"
    code_interpreter = "code_interpreter"


class ToolDefinition(Schema):
    # A built-in tool's name, or any custom tool's.
    tool_name: BuiltinTool | str
    description: str | None = Field(default=None, description="What the tool does, for the model (extension).")
    parameters: JsonObject | None = Field(
        default=None, description="A JSON Schema object describing the tool's arguments."
    )
    input_shields: list[ShieldConfig] = Field(default_factory=list)
    output_shields: list[ShieldConfig] = Field(default_factory=list)


class StopReason(str, Enum):
    """Stop reasons are used to indicate why the model stopped generating text."""

    not_stopped = "not_stopped"
    finished_ok = "finished_ok"
    max_tokens = "max_tokens"


class MemoryBankDocument(Schema):
    uuid: str
    content: str = Field(
        description="The document's bytes, base64-encoded.", json_schema_extra={"contentEncoding": "base64"}
    )
    metadata: JsonObject = Field(default_factory=dict)
    mime_type: str


class SafetyViolation(Schema):
    violation_type: str
    details: str
    suggested_user_response: str | None = None


StepType = Literal["model_inference", "tool_execution", "safety_filtering", "memory_retrieval"]
