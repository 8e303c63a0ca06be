"""What an agent and a turn may hold: bounds checked before any work starts, and what the distribution serves.

Every refusal is a 4xx naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_stack.apis.agentic_system import AgenticSystemCreateRequest, AgenticSystemExecuteRequest
from llama_stack.apis.common import Role
from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.apis.registry import Api

from .config import AgentsConfig
from .conversation import answers, message_size, pending_tool_calls

MAX_UUID_LENGTH = 256


def _too_many(field: str, count: int, limit: int, what: str) -> BadRequestError:
    return BadRequestError(f"{field} holds {count} {what}; at most {limit} are accepted", param=field)


def check_agent_bounds(request: AgenticSystemCreateRequest, config: AgentsConfig) -> None:
    if not 1 <= len(request.uuid) <= MAX_UUID_LENGTH:
        raise BadRequestError(f"uuid must be 1 to {MAX_UUID_LENGTH} characters", param="uuid")
    if len(request.instructions) > config.max_instructions_characters:
        raise BadRequestError(
            f"instructions are {len(request.instructions)} characters; at most "
            f"{config.max_instructions_characters} are accepted",
            param="instructions",
        )
    if len(request.available_tools) > config.max_tools:
        raise _too_many("available_tools", len(request.available_tools), config.max_tools, "tools")
    if len(request.executable_tools) > config.max_tools:
        raise _too_many("executable_tools", len(request.executable_tools), config.max_tools, "tools")
    if len(request.memory_bank_uuids) > config.max_memory_banks:
        raise _too_many("memory_bank_uuids", len(request.memory_bank_uuids), config.max_memory_banks, "banks")
    for field in ("input_shields", "output_shields"):
        count = len(getattr(request, field))
        if count > config.max_shields:
            raise _too_many(field, count, config.max_shields, "shields")
    names = [str(getattr(tool.tool_name, "value", tool.tool_name)) for tool in request.available_tools]
    for i, tool in enumerate(request.available_tools):
        size = len(tool.model_dump_json())
        if size > config.max_tool_schema_bytes:
            raise BadRequestError(
                f"available_tools[{i}] is {size} bytes as JSON; at most {config.max_tool_schema_bytes} are accepted",
                param=f"available_tools[{i}]",
            )
        if len(tool.input_shields) + len(tool.output_shields) > 2 * config.max_shields:
            raise _too_many(f"available_tools[{i}]", len(tool.input_shields), config.max_shields, "shields")
        if names.count(names[i]) > 1:
            raise BadRequestError(f"available_tools names {names[i]!r} twice", param=f"available_tools[{i}]")
    repeated = sorted({bank for bank in request.memory_bank_uuids if request.memory_bank_uuids.count(bank) > 1})
    if repeated:
        raise BadRequestError(f"memory_bank_uuids repeats {', '.join(repeated)}", param="memory_bank_uuids")
    missing = [tool for tool in request.executable_tools if tool not in names]
    if missing:
        raise BadRequestError(
            f"executable_tools names tools that are not in available_tools: {', '.join(missing)} "
            f"(available: {', '.join(names) or 'none'})",
            param="executable_tools",
        )


def _unserved(what: str, field: str, api: Api) -> BadRequestError:
    return BadRequestError(
        f"The agent asks for {what} ({field}), but this distribution does not serve the {api.value} API; add a "
        f"{api.value} provider to its YAML",
        param=field,
    )


def check_apis_served(request: AgenticSystemCreateRequest, deps: Mapping[Api, Any]) -> None:
    if request.executable_tools and Api.tool_runtime not in deps:
        raise _unserved("tools to run", "executable_tools", Api.tool_runtime)
    if request.memory_bank_uuids and Api.memory_banks not in deps:
        raise _unserved("memory banks", "memory_bank_uuids", Api.memory_banks)
    for field in ("input_shields", "output_shields"):
        if getattr(request, field) and Api.safety not in deps:
            raise _unserved("shields", field, Api.safety)
    for i, tool in enumerate(request.available_tools):
        if (tool.input_shields or tool.output_shields) and Api.safety not in deps:
            raise _unserved("tool shields", f"available_tools[{i}]", Api.safety)


async def check_tools_served(request: AgenticSystemCreateRequest, tool_runtime: Any) -> None:
    served = {str(getattr(t.tool_name, "value", t.tool_name)) for t in await tool_runtime.list_tools()}
    missing = [tool for tool in request.executable_tools if tool not in served]
    if missing:
        raise BadRequestError(
            f"executable_tools names tools no tool_runtime provider runs: {', '.join(missing)} "
            f"(served tools: {', '.join(sorted(served)) or 'none'})",
            param="executable_tools",
        )


async def check_banks_exist(request: AgenticSystemCreateRequest, memory_banks: Any) -> None:
    known = {bank.uuid for bank in await memory_banks.list_memory_banks()}
    missing = [bank for bank in request.memory_bank_uuids if bank not in known]
    if missing:
        raise NotFoundError(
            f"No memory bank {', '.join(repr(b) for b in missing)} (banks: {', '.join(sorted(known)[:20]) or 'none'})",
            param="memory_bank_uuids",
            code="bank_not_found",
        )


def check_model(request: AgenticSystemCreateRequest, inference: Any) -> str:
    """The model_id the request's model names (an alias resolved): a 404 listing the served models, a 400 for
    a model that does not chat."""
    model_id: str = inference.model_id(request.model)
    chat_models = {model.model_id for model in inference.models("llm")}
    if model_id not in chat_models:
        raise BadRequestError(
            f"Model '{request.model}' is not a chat model (llm); served chat models: "
            f"{', '.join(sorted(chat_models)) or 'none'}",
            param="model",
        )
    return model_id


def check_turn_bounds(request: AgenticSystemExecuteRequest, config: AgentsConfig) -> None:
    if not request.messages:
        raise BadRequestError("messages must hold at least one message", param="messages")
    if len(request.messages) > config.max_messages:
        raise _too_many("messages", len(request.messages), config.max_messages, "messages")
    if len(request.turn_history) > config.max_turn_history:
        raise _too_many("turn_history", len(request.turn_history), config.max_turn_history, "turns")
    total = 0
    for i, message in enumerate(request.messages):
        if message.role not in (Role.user, Role.tool):
            raise BadRequestError(
                f"messages[{i}].role is {message.role.value}; a turn's messages come from the user or answer tools "
                "(user or tool); the agent's instructions are its system message",
                param=f"messages[{i}].role",
            )
        size = message_size(message)
        if size > config.max_message_characters:
            raise BadRequestError(
                f"messages[{i}] holds {size} characters; at most {config.max_message_characters} are accepted",
                param=f"messages[{i}]",
            )
        total += size
    for t, turn in enumerate(request.turn_history):
        if len(turn.steps) > config.max_steps_per_turn:
            raise _too_many(f"turn_history[{t}].steps", len(turn.steps), config.max_steps_per_turn, "steps")
        if len(turn.user_messages) > config.max_messages:
            raise _too_many(
                f"turn_history[{t}].user_messages", len(turn.user_messages), config.max_messages, "messages"
            )
        total += len(turn.model_dump_json())
    if total > config.max_conversation_characters:
        raise BadRequestError(
            f"the conversation (messages and turn_history) holds about {total} characters; at most "
            f"{config.max_conversation_characters} are accepted",
            param="turn_history",
        )


def check_tool_responses(request: AgenticSystemExecuteRequest) -> None:
    """Tool responses must answer the custom tool calls the last turn ended on."""
    pending = pending_tool_calls(request.turn_history)
    for i, message in enumerate(request.messages):
        for j, response in enumerate(message.tool_responses):
            if not any(answers(response, call) for call in pending):
                waiting = ", ".join(f"{c.tool_name} ({c.call_id})" for c in pending) or "none"
                raise BadRequestError(
                    f"messages[{i}].tool_responses[{j}] answers no tool call the last turn of turn_history ended on "
                    f"(waiting: {waiting})",
                    param=f"messages[{i}].tool_responses[{j}]",
                )
