"""Walking a dialog's messages with the field path of each, for the errors that name a field."""

from __future__ import annotations

from collections.abc import Iterator

from llama_stack.apis.common import Dialog, Message

__all__ = ["iter_messages"]


def iter_messages(dialog: Dialog, where: str = "dialog") -> Iterator[tuple[str, Message]]:
    """Each message of a dialog in order, with its field path (``dialog.message_history[0]``, ``dialog.message``)."""
    for index, message in enumerate(dialog.message_history):
        yield f"{where}.message_history[{index}]", message
    yield f"{where}.message", dialog.message
