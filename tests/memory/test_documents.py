"""Documents to text: each supported mime type, charsets, and the 400s for what cannot be read."""

from __future__ import annotations

import base64
import io
import json

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.memory.documents import SUPPORTED_MIME_TYPES, decode_base64, document_text

WHERE = "documents[3]"


def make_pdf(pages: list[str], *, user_password: str | None = None, owner_password: str | None = None) -> bytes:
    """A PDF whose pages show the given lines (Helvetica, one text line per line of each string)."""
    writer = PdfWriter()
    helvetica = {"/Type": "/Font", "/Subtype": "/Type1", "/BaseFont": "/Helvetica"}
    font = writer._add_object(DictionaryObject({NameObject(k): NameObject(v) for k, v in helvetica.items()}))
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        shown = " ".join(f"({line}) Tj T*" for line in text.split("\n")) if text else ""
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    if user_password is not None:
        writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def refused(content: bytes, mime_type: str) -> BadRequestError:
    with pytest.raises(BadRequestError) as error:
        document_text(content, mime_type, WHERE)
    return error.value


# -- text ------------------------------------------------------------------------------------------


def test_plain_text_and_markdown_are_kept_as_they_are():
    markdown = "# Title\n\nSome *emphasis*, a [link](http://x.y).\n\n    code block\n"
    assert document_text(markdown.encode(), "text/markdown", WHERE) == markdown
    assert document_text(markdown.encode(), "text/x-markdown", WHERE) == markdown
    assert document_text("naïve café ☕\n".encode(), "text/plain", WHERE) == "naïve café ☕\n"


def test_mime_types_are_case_insensitive_and_take_parameters():
    assert document_text(b"hello", "Text/Plain; format=flowed", WHERE) == "hello"


def test_a_charset_parameter_is_honoured():
    latin = "café crème".encode("latin-1")
    assert document_text(latin, "text/plain; charset=latin-1", WHERE) == "café crème"
    assert document_text(latin, 'text/plain; charset="ISO-8859-1"', WHERE) == "café crème"
    utf16 = "żółw".encode("utf-16")  # with its byte order mark
    assert document_text(utf16, "text/plain; charset=utf-16", WHERE) == "żółw"


def test_a_utf8_byte_order_mark_is_dropped():
    assert document_text(b"\xef\xbb\xbfhello", "text/plain", WHERE) == "hello"


def test_invalid_utf8_is_a_400_naming_the_content_and_the_way_out():
    error = refused("café".encode("latin-1"), "text/plain")
    assert error.param == f"{WHERE}.content"
    assert "not valid UTF-8" in error.message and "byte 3" in error.message and "charset=" in error.message


def test_an_unknown_charset_is_a_400_naming_it():
    error = refused(b"hello", "text/plain; charset=klingon")
    assert error.param == f"{WHERE}.mime_type" and "'klingon'" in error.message


# -- HTML ------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>Llama care</title><style>p { color: red }</style>
<script>var tracking = "do not index me";</script></head>
<body>
<h1>Feeding   llamas</h1>
<p>Llamas eat grass
and hay, about <b>two percent</b> of their weight a day.</p>
<!-- an editor's comment -->
<p>They need water<br>every day.</p>
<ul><li>grass</li><li>hay</li></ul>
<table><tr><th>age</th><th>food</th></tr><tr><td>young</td><td>milk</td></tr></table>
<pre>schedule:
    morning  hay</pre>
<noscript>Enable JavaScript</noscript>
</body></html>"""


def test_html_becomes_the_text_a_reader_sees_with_paragraph_breaks():
    text = document_text(PAGE.encode(), "text/html", WHERE)
    assert text == (
        "Llama care\n\n"
        "Feeding llamas\n\n"
        "Llamas eat grass and hay, about two percent of their weight a day.\n\n"
        "They need water\nevery day.\n\n"
        "grass\nhay\n\n"
        "age food\nyoung milk\n\n"
        "schedule:\n    morning  hay"
    )
    for hidden in ("tracking", "color", "comment", "JavaScript", "<"):
        assert hidden not in text


def test_html_charset_from_the_mime_type_or_from_its_meta_tag():
    page = "<p>Crème brûlée</p>"
    assert document_text(page.encode("latin-1"), "text/html; charset=latin-1", WHERE) == "Crème brûlée"
    declared = f'<html><head><meta charset="iso-8859-1"></head><body>{page}</body></html>'
    assert document_text(declared.encode("latin-1"), "text/html", WHERE) == "Crème brûlée"


def test_html_that_is_not_valid_utf8_and_declares_nothing_is_a_400():
    assert refused("<p>Crème</p>".encode("latin-1"), "text/html").param == f"{WHERE}.content"


def test_deeply_nested_html_is_read():
    assert document_text(("<div>" * 3000 + "deep" + "</div>" * 3000).encode(), "text/html", WHERE) == "deep"


# -- PDF -------------------------------------------------------------------------------------------


def test_pdf_text_is_extracted_page_by_page():
    pdf = make_pdf(["Llamas are camelids.\nThey live in the Andes.", "Page two: alpacas."])
    assert document_text(pdf, "application/pdf", WHERE) == (
        "Llamas are camelids.\nThey live in the Andes.\n\nPage two: alpacas."
    )


def test_a_pdf_encrypted_without_a_user_password_is_read():
    pdf = make_pdf(["Only printing is restricted."], user_password="", owner_password="owner-secret")
    assert document_text(pdf, "application/pdf", WHERE) == "Only printing is restricted."


def test_a_password_protected_pdf_is_a_400():
    error = refused(make_pdf(["secret"], user_password="hunter2"), "application/pdf")
    assert error.param == f"{WHERE}.content" and "encrypted with a password" in error.message


def test_bytes_that_are_not_a_pdf_are_a_400():
    error = refused(b"%PDF-1.7 but then nothing useful", "application/pdf")
    assert error.param == f"{WHERE}.content" and "could not be read as a PDF" in error.message
    truncated = make_pdf(["cut short"])[:200]
    assert "could not be read as a PDF" in refused(truncated, "application/pdf").message


def test_a_pdf_without_text_is_a_400_rather_than_an_empty_document():
    error = refused(make_pdf(["", ""]), "application/pdf")
    assert "2 page(s) hold no extractable text" in error.message


# -- JSON ------------------------------------------------------------------------------------------


def test_json_becomes_its_pretty_printed_text():
    raw = json.dumps({"name": "Llama", "tags": ["camelid", "Andes"], "note": "Año"}, ensure_ascii=True).encode()
    text = document_text(raw, "application/json", WHERE)
    assert text == '{\n  "name": "Llama",\n  "tags": [\n    "camelid",\n    "Andes"\n  ],\n  "note": "Año"\n}'


def test_invalid_json_is_a_400_saying_where():
    error = refused(b'{"a": 1,\n "b": }', "application/json")
    assert error.param == f"{WHERE}.content"
    assert "not valid JSON" in error.message and "line 2 column 7" in error.message


# -- unsupported types ----------------------------------------------------------------------------


@pytest.mark.parametrize("mime_type", ["image/png", "application/msword", "text/csv"])
def test_an_unsupported_type_is_a_400_listing_the_supported_ones(mime_type):
    error = refused(b"whatever", mime_type)
    assert error.status == 400 and error.code == "unsupported_media_type"
    assert error.param == f"{WHERE}.mime_type"
    assert mime_type in error.message and all(t in error.message for t in SUPPORTED_MIME_TYPES)


@pytest.mark.parametrize("mime_type", ["", "plain", "text/", "text/plain; charset"])
def test_a_malformed_mime_type_is_a_400(mime_type):
    assert refused(b"x", mime_type).param == f"{WHERE}.mime_type"


# -- base64 ----------------------------------------------------------------------------------------


def test_base64_decodes_also_when_wrapped_over_lines():
    data = bytes(range(256)) * 4
    wrapped = base64.encodebytes(data).decode()  # 76 characters a line, as the base64 tool writes it
    assert "\n" in wrapped.strip()
    assert decode_base64(wrapped, "documents[0].content") == data
    assert decode_base64("", "documents[0].content") == b""


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        ("aGVsbG8", "padding"),
        ("aGVs!G8=", "base64"),
        ("aGV-bG8_", "URL-safe"),
        ("data:text/plain;base64,aGVsbG8=", "data: URL"),
        ("héllo===", "ASCII"),
    ],
)
def test_bad_base64_is_a_400_naming_the_field(content, hint):
    with pytest.raises(BadRequestError) as error:
        decode_base64(content, "documents[0].content")
    assert error.value.param == "documents[0].content"
    assert "not valid base64" in error.value.message and hint in error.value.message
