"""Text attachments inlined into the prompt, for models that read text only.

A request's content may hold attachments (``{"url": ..., "mime_type": ...}``). Text ones are fetched and
put into the prompt between a header naming the URL and an end marker (:data:`ATTACHMENT_BLOCK`); any
other kind is refused with 400 naming the field, an image saying the model reads text only.

Where text comes from: ``data:`` URLs, ``file://`` URLs inside ``file_roots`` and, where the distribution
turns ``allow_http`` on, ``http(s)://`` URLs of public hosts (or of ``allowed_hosts``), read as
``providers/utils/url_reader.py`` reads every URL a client names.

Use (two steps, so that fetching is async and rendering a prompt stays a plain function)::

    inliner = AttachmentInliner(config.attachments)
    inlined = await inliner.fetch(dialog_contents(request.dialog), model=request.model)
    text = inlined.inline(message.content, "dialog.message.content")   # or inlined(content, where)

``fetch`` checks and fetches every attachment (concurrently, each URL once) and raises the first
problem in field order; ``inline`` is then synchronous and never does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import httpx
from pydantic import Field

from llama_stack.apis.common import Attachment, Content, Dialog, Message
from llama_stack.providers.utils.inference.dialog import iter_messages
from llama_stack.providers.utils.url_reader import MIB, URLReader, URLSourceConfig
from llama_stack.providers.utils.url_reader import bad_field as _bad

__all__ = [
    "ATTACHMENT_BLOCK",
    "AttachmentConfig",
    "AttachmentInliner",
    "InlinedAttachments",
    "dialog_contents",
    "is_text_mime_type",
    "located",
    "message_contents",
]

# How an attachment's text appears in the prompt.
ATTACHMENT_BLOCK = "[Attachment: {name} ({mime_type})]\n{text}\n[End of attachment]"

_TEXT_APPLICATION_TYPES = {
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/javascript",
    "application/x-ndjson",
}


class AttachmentConfig(URLSourceConfig):
    """How a provider fetches text attachments (the ``attachments:`` block of its config)."""

    file_roots: list[Path] = Field(
        default_factory=list,
        description=(
            "Folders whose files file:// attachments may name (after resolving symlinks and '..'); "
            "empty refuses file:// attachments."
        ),
    )
    max_bytes: int = Field(
        default=MIB,
        ge=1,
        description="The largest attachment read, in bytes (after base64 decoding for data: URLs); larger ones get 400.",
    )
    http_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds allowed to connect to, and then between reads from, an http(s):// attachment's server.",
    )
    http_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one http(s):// attachment may take in all: resolving, every redirect and the whole body.",
    )
    allow_http: bool = Field(
        default=False,
        description=(
            "Fetch http:// and https:// attachments. Off by default (refused with a 400): a server that fetches "
            "any URL a client names can be made to reach what it guards. When on, hosts that resolve to loopback, "
            "private, link-local or other non-public addresses are still refused unless allowed_hosts names them."
        ),
    )


def is_text_mime_type(mime_type: str) -> bool:
    """text/*, JSON, XML, YAML and a few other textual application types."""
    essence = mime_type.split(";", 1)[0].strip().lower()
    if essence.startswith("text/") or essence in _TEXT_APPLICATION_TYPES:
        return True
    return essence.startswith("application/") and essence.endswith(("+json", "+xml"))


def _charset(mime_type: str | None) -> str | None:
    for param in (mime_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


def _display_name(url: str) -> str:
    if url.startswith("data:"):
        header = url[5:].partition(",")[0]
        return f"data:{header.split(';', 1)[0] or 'text/plain'} (inline)"
    return url


# A message with its field path (``messages[2]``, ``dialog.message_history[0]``): what every error names.
Located = tuple[str, Message]


def located(messages: list[Message], where: str) -> list[Located]:
    """A plain list of messages with their paths (``<where>[i]``); a dialog's come from ``iter_messages``."""
    return [(f"{where}[{index}]", message) for index, message in enumerate(messages)]


def message_contents(messages: Iterable[Located]) -> list[tuple[Content, str]]:
    """Every content of the messages (tool responses included), with its field path, for the inliner."""
    items: list[tuple[Content, str]] = []
    for at, message in messages:
        items.append((message.content, f"{at}.content"))
        for index, response in enumerate(message.tool_responses):
            items.append((response.content, f"{at}.tool_responses[{index}].content"))
    return items


def dialog_contents(dialog: Dialog, where: str = "dialog") -> list[tuple[Content, str]]:
    """Every content of a dialog (messages and tool responses) with its field path, in order."""
    return message_contents(iter_messages(dialog, where))


def attachments_of(content: Content, where: str) -> Iterable[tuple[Attachment, str]]:
    """Each attachment of the content with its field path (``where``, and the part's index in a list)."""
    if isinstance(content, Attachment):
        yield content, where
    elif isinstance(content, list):
        for index, part in enumerate(content):
            if isinstance(part, Attachment):
                yield part, f"{where}[{index}]"


def _check_kind(attachment: Attachment, where: str, model: str | None, mime_type: str | None = None) -> None:
    mime_type = mime_type or attachment.mime_type
    essence = mime_type.split(";", 1)[0].strip().lower()
    who = f"model {model!r}" if model else "this model"
    if essence.startswith("image/"):
        raise _bad(
            where,
            f"an image attachment ({essence}) cannot be read: {who} is text-only; send images to a model that accepts them",
        )
    if not is_text_mime_type(mime_type):
        raise _bad(
            where,
            f"a {essence or 'untyped'} attachment cannot be read: {who} is text-only and only text attachments "
            "(text/*, application/json, XML, YAML) are inlined",
        )


class InlinedAttachments:
    """Content to text, with the attachments fetched by :meth:`AttachmentInliner.fetch`."""

    def __init__(self, texts: dict[str, str] | None = None):
        self._texts = dict(texts or {})

    def inline(self, content: Content, where: str) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, Attachment):
            return self._block(content, where)
        pieces: list[str] = []
        previous_was_attachment = False
        for index, part in enumerate(content):
            if isinstance(part, str):
                if previous_was_attachment and part:
                    pieces.append("\n\n")
                pieces.append(part)
                previous_was_attachment = False
            else:
                if pieces and pieces[-1]:
                    pieces.append("\n\n")
                pieces.append(self._block(part, f"{where}[{index}]"))
                previous_was_attachment = True
        return "".join(pieces)

    __call__ = inline

    def _block(self, attachment: Attachment, where: str) -> str:
        _check_kind(attachment, where, None)
        if attachment.url not in self._texts:
            raise RuntimeError(
                f"{where}: attachment {attachment.url!r} was not fetched (call AttachmentInliner.fetch first)"
            )
        return ATTACHMENT_BLOCK.format(
            name=_display_name(attachment.url), mime_type=attachment.mime_type, text=self._texts[attachment.url]
        )


class AttachmentInliner:
    """Fetches text attachments as its :class:`AttachmentConfig` allows."""

    def __init__(self, config: AttachmentConfig, *, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self._urls = URLReader(config, noun="attachment", block="attachments", transport=transport)

    async def fetch(self, contents: Iterable[tuple[Content, str]], *, model: str | None = None) -> InlinedAttachments:
        """Check every attachment in ``contents`` (content, field path) and read the text ones.

        Raises BadRequestError (400) for the first attachment, in field order, that is not text or
        cannot be read, naming its field path.
        """
        wanted: dict[str, tuple[Attachment, str]] = {}
        for content, where in contents:
            for attachment, at in attachments_of(content, where):
                _check_kind(attachment, at, model)
                wanted.setdefault(attachment.url, (attachment, at))
        if not wanted:
            return InlinedAttachments()
        client = None
        if self.config.allow_http and any(url.split(":", 1)[0].lower() in ("http", "https") for url in wanted):
            client = self._urls.client()
        try:
            results = await asyncio.gather(
                *(self._read(attachment, at, model, client) for attachment, at in wanted.values()),
                return_exceptions=True,
            )
        finally:
            if client is not None:
                await client.aclose()
        texts: dict[str, str] = {}
        for url, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            texts[url] = result
        return InlinedAttachments(texts)

    async def _read(
        self, attachment: Attachment, where: str, model: str | None, client: httpx.AsyncClient | None
    ) -> str:
        url = attachment.url
        scheme = url.split(":", 1)[0].lower()
        data, mime_type = await self._urls.read(url, where, client=client)
        if mime_type and (scheme == "data" or mime_type.strip().lower().startswith("image/")):
            # What the data says it is counts too; a server's Content-Type only when it is an image
            # (servers label text files application/octet-stream often enough).
            _check_kind(attachment, where, model, mime_type)
        charset = _charset(attachment.mime_type) or _charset(mime_type) or "utf-8"
        try:
            text = data.decode(charset)
        except LookupError:
            raise _bad(where, f"unknown charset {charset!r}") from None
        except UnicodeDecodeError as exc:
            raise _bad(
                where, f"the attachment is not valid {charset} text ({exc.reason} at byte {exc.start})"
            ) from None
        return text.removeprefix("\ufeff")
