"""Safety: run a shield over messages. Not in the seed; the agentic system's shields go through it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, Message, SafetyViolation, Schema, ShieldType
from .routes import webmethod


class RunShieldRequest(Schema):
    shield_type: ShieldType = Field(title="The type of safety shield.")
    messages: list[Message]
    params: JsonObject = Field(default_factory=dict)


class RunShieldResponse(Schema):
    """What a shield found; no violation means the messages passed."""

    violation: SafetyViolation | None = None


@runtime_checkable
class Safety(Protocol):
    @webmethod("POST", "/safety/run_shield")
    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        """Run a safety shield over messages."""
        ...
