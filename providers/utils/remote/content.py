"""A message's content (text, an attachment, or a list of both) for vendors: its attachments with their
field paths, and its text for vendors whose APIs read text only (Together's chat and completions, Emissary)."""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.apis.common import Attachment, Content
from llama_stack.providers.utils.inference.attachments import attachments_of


def plain_text(content: Content, where: str, refuse: Callable[[Attachment, str], Exception]) -> str:
    """The content's text; its first attachment raises ``refuse(attachment, its field path)``.

    Refused, not dropped: a model answering without the document it was shown would answer wrongly.
    """
    for attachment, at in attachments_of(content, where):
        raise refuse(attachment, at)
    if isinstance(content, list):
        return "".join(part for part in content if isinstance(part, str))
    return content if isinstance(content, str) else ""
