"""Safety: run a shield over messages. Not in the seed; the agentic system's shields go through it."""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, Message, SafetyViolation, Schema, ShieldType
from .dispatch import ByShield, dispatch
from .routes import webmethod

ShieldId = Annotated[str, Field(min_length=1, max_length=256)]


class Shield(Schema):
    """Extension: a shield registered in the distribution (its ``shields:`` list), run by one provider."""

    shield_id: ShieldId = Field(description="The id requests name in shield_id.")
    provider_id: str = Field(description="The safety provider that runs the shield.")
    shield_type: ShieldType = Field(title="The type of safety shield.")
    params: JsonObject = Field(default_factory=dict, description="Defaults for the params of requests it serves.")


class RunShieldRequest(Schema):
    shield_type: ShieldType = Field(title="The type of safety shield.")
    messages: list[Message]
    params: JsonObject = Field(default_factory=dict)
    shield_id: ShieldId | None = Field(
        default=None,
        description=(
            "Extension: a shield registered in the distribution, of this shield_type; unset: the first registered "
            "shield of the type, else the first provider serving the type."
        ),
    )


class RunShieldResponse(Schema):
    """What a shield found; no violation means the messages passed."""

    violation: SafetyViolation | None = None


@runtime_checkable
class Safety(Protocol):
    @webmethod("POST", "/safety/run_shield")
    @dispatch(ByShield())
    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        """Run a safety shield over messages."""
        ...
