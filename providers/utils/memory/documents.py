"""Documents to text: what a memory bank chunks and embeds, from the bytes and mime type a client sent.

| mime type | text |
|---|---|
| ``text/plain``, ``text/markdown`` (``text/x-markdown``) | the text as it is |
| ``text/html`` | what a reader sees: scripts, styles and markup dropped, blocks (paragraphs, headings, list items, table rows) on lines of their own, paragraphs apart |
| ``application/pdf`` | each page's text (pypdf), pages a blank line apart |
| ``application/json`` | the JSON, pretty-printed (two-space indents, non-ASCII kept) |

Text is UTF-8 unless the mime type names a ``charset`` (``text/plain; charset=latin-1``); a byte order mark
is dropped. An HTML document without one may declare its encoding in a ``<meta>`` tag. Text that is not
valid in its encoding is refused rather than guessed at. Every refusal is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import json
import re
from collections.abc import Callable

from llama_stack.apis.errors import BadRequestError
from llama_stack.json_input import MAX_JSON_DEPTH, nesting_depth

SUPPORTED_MIME_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf", "application/json")
# Other names in use for the same formats.
_ALIASES = {"text/x-markdown": "text/markdown"}

_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def _bad(where: str, message: str, code: str | None = None) -> BadRequestError:
    return BadRequestError(
        f"{where}: {message}", param=where, code=code, details=[{"loc": where, "in": "body", "message": message}]
    )


def decode_base64(content: str, where: str) -> bytes:
    """The bytes of standard base64 text (RFC 4648, padded); line breaks and spaces between the characters
    are ignored, as ``base64`` tools wrap their output. Anything else is a 400 naming ``where``."""
    compact = "".join(content.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
        hint = ""
        if "-" in compact or "_" in compact:
            hint = " ('-' and '_' are the URL-safe alphabet; use standard base64 with '+' and '/')"
        elif compact.startswith("data:"):
            hint = " (a data: URL; send only the base64 part after the comma)"
        raise _bad(where, f"not valid base64: {exc}{hint}") from None


def parse_mime_type(mime_type: str, where: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case, aliases resolved) and the parameters (names lower case) of a mime type."""
    essence, *raw_params = mime_type.split(";")
    essence = essence.strip().lower()
    if not _MIME.fullmatch(essence):
        raise _bad(
            where, f"{mime_type!r} is not a mime type (type/subtype); supported: {', '.join(SUPPORTED_MIME_TYPES)}"
        )
    params: dict[str, str] = {}
    for raw in raw_params:
        if not raw.strip():
            continue
        name, equals, value = raw.partition("=")
        if not equals or not name.strip():
            raise _bad(where, f"{mime_type!r}: parameter {raw.strip()!r} is not name=value")
        params[name.strip().lower()] = value.strip().strip('"')
    return _ALIASES.get(essence, essence), params


def document_text(content: bytes, mime_type: str, where: str) -> str:
    """The text of a document (see the module's docstring); a 400 naming ``where`` when it cannot be read.

    ``where`` names the document in the request (e.g. ``documents[2]``); errors point at its ``mime_type``
    or ``content`` field.
    """
    essence, params = parse_mime_type(mime_type, f"{where}.mime_type")
    reader = _READERS.get(essence)
    if reader is None:
        raise _bad(
            f"{where}.mime_type",
            f"unsupported media type {essence!r}; supported: {', '.join(SUPPORTED_MIME_TYPES)}",
            code="unsupported_media_type",
        )
    return reader(content, params.get("charset"), where)


# ----------------------------------------------------------------------------------------------------
# Text


def _decode(content: bytes, charset: str | None, where: str) -> str:
    """Strictly decoded text; a byte order mark is dropped (UTF-8's here, UTF-16's by its codec)."""
    encoding = _codec(charset or "utf-8", where)
    if encoding == "utf-8":
        encoding = "utf-8-sig"  # drops a BOM, which editors on Windows write
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as exc:
        context = content[max(0, exc.start - 8) : exc.end + 8]
        raise _bad(
            f"{where}.content",
            f"not valid {charset or 'UTF-8'} text: byte {exc.start} ({exc.reason}, near {context!r}); "
            f"name the document's encoding in its mime type, e.g. 'text/plain; charset=latin-1'",
        ) from None


def _known(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


def _codec(charset: str, where: str) -> str:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise _bad(f"{where}.mime_type", f"unknown charset {charset!r}") from None


def _plain(content: bytes, charset: str | None, where: str) -> str:
    return _decode(content, charset, where)


def _json(content: bytes, charset: str | None, where: str) -> str:
    text = _decode(content, charset, where)
    # Parsing and pretty-printing recurse once per level: measure the depth before either does.
    depth = nesting_depth(text.encode("utf-8", "surrogatepass"))
    if depth > MAX_JSON_DEPTH:
        raise _bad(
            f"{where}.content",
            f"the JSON nests arrays and objects {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted",
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"{where}.content", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return json.dumps(value, indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------
# HTML

# Elements whose content a reader never sees.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "meta", "link", "svg", "canvas", "iframe", "object"})
# Elements on lines of their own, and those also set apart from their neighbours by a blank line.
_LINE_BLOCKS = frozenset({"li", "tr", "dt", "dd", "option", "figcaption", "caption", "summary", "br"})
_PARAGRAPH_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "details", "dialog", "div", "dl", "fieldset",
        "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html",
        "main", "nav", "ol", "p", "pre", "section", "table", "title", "ul",
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
# Placeholders for breaks while the text is assembled (private-use characters no document holds here).
_LINE_MARK, _PARAGRAPH_MARK = "\ue000", "\ue001"


def _html(content: bytes, charset: str | None, where: str) -> str:
    from bs4 import BeautifulSoup
    from bs4.dammit import EncodingDetector

    if charset is None:
        # No charset in the mime type: the one the page declares in <meta>, if Python knows it; else UTF-8.
        declared = EncodingDetector.find_declared_encoding(content, is_html=True, search_entire_document=False)
        if declared and _known(declared):
            charset = declared
    soup = BeautifulSoup(_decode(content, charset, where), "html.parser")
    return _readable(soup)


def _readable(soup: object) -> str:
    """What a reader sees of a parsed page, with its line and paragraph breaks."""
    from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    parts: list[str] = []
    # An explicit stack, not recursion: pages nest deeper than Python's recursion limit allows.
    stack: list[tuple[object, bool] | str] = [(soup, False)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):  # a break to emit after an element's content
            parts.append(item)
            continue
        node, preformatted = item
        if isinstance(node, (Comment, Declaration, Doctype, ProcessingInstruction)):
            continue
        if isinstance(node, NavigableString):
            # Outside <pre>, any run of whitespace (newlines too) shows as one space.
            parts.append(str(node) if preformatted else re.sub(r"\s+", " ", str(node)))
            continue
        if not isinstance(node, Tag) or node.name in _HIDDEN:
            continue
        if node.name in _CELLS:
            parts.append(" ")  # cells of a row apart on its line
        else:
            mark = (
                _PARAGRAPH_MARK if node.name in _PARAGRAPH_BLOCKS else _LINE_MARK if node.name in _LINE_BLOCKS else ""
            )
            parts.append(mark)
            stack.append(mark)
        inner = preformatted or node.name == "pre"
        stack.extend((child, inner) for child in reversed(node.contents))
    return _layout("".join(parts))


def _layout(marked: str) -> str:
    """Lines without stray spaces; line and paragraph marks turned into one newline or one blank line."""

    def breaks(match: re.Match[str]) -> str:
        return "\n\n" if _PARAGRAPH_MARK in match.group() else "\n"

    # A break swallows the spaces around it; indentation inside <pre> (after a newline of its own) stays.
    text = re.sub(rf"[ \t]*[{_LINE_MARK}{_PARAGRAPH_MARK}][\s{_LINE_MARK}{_PARAGRAPH_MARK}]*", breaks, marked)
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ----------------------------------------------------------------------------------------------------
# PDF


def _pdf(content: bytes, charset: str | None, where: str) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted and not reader.decrypt(""):
            # Encrypted with an empty user password (owner restrictions only) opens like any viewer opens it.
            raise _bad(f"{where}.content", "the PDF is encrypted with a password; send a decrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except BadRequestError:
        raise
    except Exception as exc:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError...) on bad input
        raise _bad(f"{where}.content", f"could not be read as a PDF: {type(exc).__name__}: {exc}") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text and pages:
        raise _bad(
            f"{where}.content",
            f"the PDF's {len(pages)} page(s) hold no extractable text (scanned images need OCR, which is not done here)",
        )
    return text


_READERS: dict[str, Callable[[bytes, str | None, str], str]] = {
    "text/plain": _plain,
    "text/markdown": _plain,
    "text/html": _html,
    "application/pdf": _pdf,
    "application/json": _json,
}
