"""What remote safety shields share: the conversation's attachments read up front, and how a violation
is reported to the caller."""

from __future__ import annotations

from llama_stack.apis.common import Message, SafetyViolation
from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.inference.attachments import (
    AttachmentInliner,
    InlinedAttachments,
    located,
    message_contents,
)

SUGGESTED_USER_RESPONSE = "I can't answer that. Can I help with something else?"


async def conversation_texts(
    inliner: AttachmentInliner, messages: list[Message], *, model: str, provider: str
) -> InlinedAttachments:
    """The attachments of every message, read; 400 when there is no conversation to check.

    Done before anything is sent to the vendor, so a bad attachment or an empty request costs no call.
    """
    if not messages:
        raise BadRequestError(
            "messages is empty: give the shield the conversation to check", param="messages", provider=provider
        )
    return await inliner.fetch(message_contents(located(messages, "messages")), model=model)


def violation(kinds: list[str], details: str) -> SafetyViolation:
    """A violation of the ``kinds`` named (comma-joined, the worst first), with the same advice to the user."""
    return SafetyViolation(
        violation_type=",".join(kinds), details=details, suggested_user_response=SUGGESTED_USER_RESPONSE
    )
