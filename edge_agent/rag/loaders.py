"""Turn uploaded bytes (plain text, Markdown, HTML, PDF) into a titled document's text."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from edge_agent.errors import BadRequestError, UnsupportedMediaError

__all__ = ["MEDIA_TYPES", "LoadedDocument", "load_document", "media_type_for"]

MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


@dataclass(frozen=True)
class LoadedDocument:
    title: str
    text: str  # not yet normalized
    media_type: str


def media_type_for(name: str, declared: str | None = None) -> str:
    """The media type from a declared Content-Type, else from the file name's extension."""
    if declared:
        base = declared.split(";")[0].strip().lower()
        if base in MEDIA_TYPES.values():
            return base
        if base not in ("application/octet-stream", ""):
            raise UnsupportedMediaError(
                f"cannot ingest {base!r}: send text/plain, text/markdown, text/html or "
                "application/pdf"
            )
    ext = PurePath(name).suffix.lower()
    if ext in MEDIA_TYPES:
        return MEDIA_TYPES[ext]
    return "text/plain"


def _decode(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:8192]:
        raise UnsupportedMediaError(f"{name} looks binary (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnsupportedMediaError(
            f"{name} is not valid UTF-8 text (bad byte at offset {e.start}); convert it to "
            "UTF-8 or upload it as PDF"
        ) from e


# [ \t], not \s: a fence or heading must not swallow the blank line before it (the
# structured chunker splits at blank lines).
_MD_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_MD_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(?=\S)(.+?)(?<=\S)\1")
_MD_LIST = re.compile(r"^([ \t]*)(?:[-*+]|\d+\.)[ \t]+", re.MULTILINE)


def _markdown_text(source: str) -> tuple[str, str | None]:
    heading = re.search(r"^\s{0,3}#\s+(.+)$", source, re.MULTILINE)
    text = _MD_FENCE.sub("", source)
    text = _MD_HEADING.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    previous = None
    while previous != text:  # nested markup such as **`code`**
        previous, text = text, _MD_EMPHASIS.sub(r"\2", text)
    text = _MD_LIST.sub(r"\1- ", text)
    return text, heading.group(1).strip() if heading else None


class _HTMLText(HTMLParser):
    _BLOCK = frozenset(
        ("p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
         "section", "article", "header", "footer", "pre", "blockquote", "dt", "dd")
    )  # fmt: skip
    _SKIP = frozenset(("script", "style", "noscript", "template", "svg", "head"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr") else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def _pdf_text(data: bytes, name: str) -> tuple[str, str | None]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise UnsupportedMediaError("PDF support needs the 'rag' extra (pypdf)") from e
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise BadRequestError(f"{name} is not a readable PDF: {e}") from e
    return "\n\n".join(pages), title


def load_document(data: bytes, *, name: str, media_type: str | None = None) -> LoadedDocument:
    """Parse a document; raise a 4xx error saying why when it is empty, binary or unreadable."""
    kind = media_type_for(name, media_type)
    if not data.strip():
        raise BadRequestError(f"{name} is empty: there is nothing to ingest")
    title: str | None = None
    if kind == "application/pdf":
        if not data.startswith(b"%PDF-"):
            raise UnsupportedMediaError(f"{name} is not a PDF (no %PDF- header)")
        text, title = _pdf_text(data, name)
    elif data.startswith(b"%PDF-"):
        raise UnsupportedMediaError(f"{name} is a PDF; name it .pdf or send application/pdf")
    else:
        source = _decode(data, name)
        if kind == "text/markdown":
            text, title = _markdown_text(source)
        elif kind == "text/html":
            parser = _HTMLText()
            parser.feed(source)
            parser.close()
            text = "".join(parser.parts)
            title = " ".join("".join(parser.title).split()) or None
        else:
            text = source
    if not text.strip():
        hint = " (a scanned PDF has no text layer; OCR it first)" if kind.endswith("pdf") else ""
        raise BadRequestError(f"{name} contains no text{hint}")
    return LoadedDocument(title=title or PurePath(name).stem or name, text=text, media_type=kind)
