"""What every tool runtime does with a ToolInvocationRequest before running its tool: the tool's name, and its
arguments validated into the tool's own model (a 400 naming each bad ``arguments.<field>``)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.common import BuiltinTool
from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.tool_runtime import ToolInvocationRequest

ArgumentsT = TypeVar("ArgumentsT", bound=BaseModel)


def invoked_tool(request: ToolInvocationRequest) -> str:
    """The tool's name, a built-in tool's included (``math`` rather than ``BuiltinTool.math``)."""
    name = request.tool_name
    return name.value if isinstance(name, BuiltinTool) else name


def tool_arguments(model: type[ArgumentsT], tool: str, arguments: dict[str, Any], provider: str) -> ArgumentsT:
    """``arguments`` as the tool's model; a 400 listing every field that does not fit, before anything runs."""
    try:
        return model.model_validate(arguments)
    except PydanticValidationError as exc:
        details = [
            {"loc": ".".join(["arguments", *map(str, error["loc"])]), "in": "body", "message": error["msg"]}
            for error in exc.errors()
        ]
        summary = "; ".join(f"{d['loc']}: {d['message']}" for d in details)
        raise BadRequestError(
            f"{tool} arguments do not fit its parameters: {summary}", details=details, provider=provider
        ) from None
