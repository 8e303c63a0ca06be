"""Tool runtime (extension): runs built-in tools such as ``image_gen`` and ``code_interpreter``.

Not in the seed. The agentic system calls it for the built-in tools an agent is given; clients may call
it directly to run a tool once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import Field

from .common import Attachment, BuiltinTool, JsonObject, Schema, ToolDefinition
from .dispatch import AllProviders, ByTool, dispatch
from .routes import webmethod


class ToolInvocationRequest(Schema):
    tool_name: BuiltinTool | str
    arguments: JsonObject = Field(default_factory=dict, description="Matches the tool's parameters schema.")


class ToolInvocationResult(Schema):
    """What a tool produced: text for the model, and any files (images, outputs) as attachments."""

    content: str = Field(description="The tool's output as text, as the model will read it.")
    attachments: list[Attachment] = Field(default_factory=list)
    error: str | None = Field(default=None, description="Set when the tool ran but failed (e.g. the code raised).")
    metadata: JsonObject = Field(default_factory=dict)


@runtime_checkable
class ToolRuntime(Protocol):
    @webmethod("GET", "/tool_runtime/list")
    @dispatch(AllProviders())
    async def list_tools(self) -> list[ToolDefinition]:
        """The tools this runtime can run, with their parameter schemas."""
        ...

    @webmethod("POST", "/tool_runtime/invoke")
    @dispatch(ByTool())
    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        """Run one tool with the given arguments."""
        ...
