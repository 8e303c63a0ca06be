"""Messages as plain text, for vendor endpoints that take text rather than chat messages (moderation
models, classifiers, judges).

A message's text is its content, then its tool calls and the tools' responses, with text attachments
inlined: what a shield or a scorer sees must include everything the model saw. Every content is named by
its field path (``messages[2].tool_responses[0].content``) so that a bad attachment's 400 says where it is.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from llama_stack.apis.common import Attachment, Message, Role
from llama_stack.providers.utils.inference.attachments import InlinedAttachments, Located


def message_text(message: Message, where: str, texts: InlinedAttachments) -> str:
    """A message (at field path ``where``) as plain text: its content, then its tool calls and responses."""
    # An attachment alone is content even though it has no text of its own; an empty string is not.
    has_content = isinstance(message.content, Attachment) or bool(message.content)
    parts = [texts(message.content, f"{where}.content")] if has_content else []
    for call in message.tool_calls:
        parts.append(f"[calls tool {call.tool_name} with {json.dumps(call.arguments, sort_keys=True)}]")
    for at, response in enumerate(message.tool_responses):
        output = texts(response.content, f"{where}.tool_responses[{at}].content")
        parts.append(f"[tool {response.tool_name} returned]\n{output}")
    return "\n".join(part for part in parts if part)


def transcript(
    messages: Iterable[Located],
    texts: InlinedAttachments,
    *,
    turn: str = "{role}: {text}",
    skip: Collection[Role] = (),
) -> str:
    """The messages as one text, each a ``turn`` (formatted with its ``role`` and ``text``), blank-line separated;
    those whose role is in ``skip`` left out."""
    return "\n\n".join(
        turn.format(role=message.role.value, text=message_text(message, at, texts))
        for at, message in messages
        if message.role not in skip
    )
