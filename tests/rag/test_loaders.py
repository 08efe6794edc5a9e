"""Document loaders: every supported format, and a clear error for every bad file."""

from __future__ import annotations

import pytest

from edge_agent.errors import BadRequestError, UnsupportedMediaError
from edge_agent.rag.loaders import load_document, media_type_for


def pdf_with_text(text: str) -> bytes:
    """A one-page PDF with a Helvetica text line, with a correct cross-reference table."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_plain_text_keeps_its_text_and_takes_the_file_name_as_title() -> None:
    doc = load_document("Zürich depot\n".encode(), name="depots.txt")
    assert (doc.title, doc.text.strip(), doc.media_type) == ("depots", "Zürich depot", "text/plain")


def test_utf16_text_with_a_bom_is_decoded() -> None:
    assert load_document("Grüße".encode("utf-16"), name="a.txt").text == "Grüße"


def test_markdown_markup_is_removed_and_the_heading_is_the_title() -> None:
    source = b"# Rotating tokens\n\nRun **`outpost-agent token rotate`** as [root](http://x).\n"
    doc = load_document(source, name="tokens.md")
    assert doc.title == "Rotating tokens"
    assert "Run outpost-agent token rotate as root." in doc.text
    assert "#" not in doc.text and "**" not in doc.text and "http" not in doc.text


def test_html_keeps_visible_text_only() -> None:
    source = (
        b"<html><head><title>Returns</title><style>p{}</style></head><body><h1>Returns</h1>"
        b"<p>Warranty: <b>3 years</b>.</p><script>alert(1)</script><p>Second &amp; last.</p>"
        b"</body></html>"
    )
    doc = load_document(source, name="r.html")
    assert doc.title == "Returns"
    assert "Warranty: 3 years." in doc.text and "Second & last." in doc.text
    assert "alert" not in doc.text and "p{}" not in doc.text


def test_pdf_text_is_extracted() -> None:
    doc = load_document(pdf_with_text("Warranty lasts three years"), name="w.pdf")
    assert "Warranty lasts three years" in doc.text
    assert doc.media_type == "application/pdf"


@pytest.mark.parametrize("data", [b"", b"   \n\t  "])
def test_an_empty_file_is_a_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequestError, match="empty"):
        load_document(data, name="empty.txt")


def test_a_binary_file_is_refused_as_unsupported_media() -> None:
    with pytest.raises(UnsupportedMediaError, match="binary"):
        load_document(b"\x7fELF\x02\x01\x01\x00\x00\x00" * 10, name="tool.txt")


def test_text_that_is_not_utf8_says_where_it_breaks() -> None:
    with pytest.raises(UnsupportedMediaError, match="offset 3"):
        load_document(b"abc\xff\xfe def", name="latin.txt")


def test_a_file_named_pdf_without_a_pdf_header_is_refused() -> None:
    with pytest.raises(UnsupportedMediaError, match="not a PDF"):
        load_document(b"hello", name="fake.pdf")


def test_a_broken_pdf_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError):
        load_document(b"%PDF-1.4\n" + b"\x00garbage" * 50, name="broken.pdf")


def test_a_pdf_without_a_text_layer_says_so() -> None:
    with pytest.raises(BadRequestError, match="no text"):
        load_document(pdf_with_text(""), name="scan.pdf")


def test_an_unsupported_declared_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaError, match="image/png"):
        media_type_for("photo.png", "image/png")
    assert media_type_for("notes", "application/octet-stream") == "text/plain"
