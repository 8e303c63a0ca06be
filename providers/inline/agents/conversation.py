"""The messages a model sees for a turn: earlier turns rebuilt from their steps, then this turn's messages.

An earlier turn is replayed as it happened: its user messages; for each model call whose tool calls were run,
the assistant message with those calls and one tool message per response; then its answer. A turn that ended
on custom tool calls (``client_tool_calls``) answered with the assistant message holding them, which the next
execute's tool responses follow.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_stack.apis.agentic_system import (
    AgenticSystemTurn,
    ModelInferenceStep,
    ToolExecutionStep,
)
from llama_stack.apis.common import Attachment, Content, Message, Role, ToolCall, ToolResponse


def content_text(content: Content) -> str:
    """The text parts of a message's content (attachments left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Attachment):
        return ""
    return "".join(part for part in content if isinstance(part, str))


def content_size(content: Content) -> int:
    """Characters a content holds, its attachments' URLs (which may be data: URLs) included."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, Attachment):
        return len(content.url) + len(content.mime_type)
    return sum(content_size(part) for part in content)


def message_size(message: Message) -> int:
    calls = sum(len(call.model_dump_json()) for call in message.tool_calls)
    responses = sum(content_size(r.content) + len(r.tool_name) for r in message.tool_responses)
    return content_size(message.content) + calls + responses


def tool_message(response: ToolResponse) -> Message:
    """One tool message per response, its text as the content (attachments stay in the step, not the prompt)."""
    return Message(role=Role.tool, content=content_text(response.content), tool_responses=[response])


def turn_messages(turn: AgenticSystemTurn) -> list[Message]:
    messages = list(turn.user_messages)
    last_calls: list[ToolCall] = []
    for i, step in enumerate(turn.steps):
        following = turn.steps[i + 1] if i + 1 < len(turn.steps) else None
        if isinstance(step, ModelInferenceStep) and step.tool_calls and isinstance(following, ToolExecutionStep):
            messages.append(Message(role=Role.assistant, content=step.text, tool_calls=step.tool_calls))
            last_calls = step.tool_calls
        elif isinstance(step, ToolExecutionStep):
            messages.extend(tool_message(response) for response in step.tool_responses)
    answer = turn.response_message
    # The answer of a turn that ended on custom tools beside built-in ones repeats calls already replayed.
    if not (answer.tool_calls and all(call in last_calls for call in answer.tool_calls)):
        messages.append(answer)
    return messages


def history_messages(turns: Sequence[AgenticSystemTurn]) -> list[Message]:
    return [message for turn in turns for message in turn_messages(turn)]


def pending_tool_calls(turns: Sequence[AgenticSystemTurn]) -> list[ToolCall]:
    """The custom tool calls the last turn ended on, which this execute's tool responses may answer."""
    if not turns or turns[-1].stop_reason not in (None, "client_tool_calls"):
        return []
    return list(turns[-1].response_message.tool_calls)


def answers(response: ToolResponse, call: ToolCall) -> bool:
    if response.call_id is not None and call.call_id is not None:
        return response.call_id == call.call_id
    return response.tool_name == call.tool_name
