"""Reading files of each supported format into plain text."""

import io
import re
import zipfile
from pathlib import Path

from app.errors import BadInput

SUPPORTED = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx"}
# A .docx is a zip; one whose parts would expand past this is refused before python-docx inflates them.
DOCX_EXPANDED_LIMIT = 100 * 1024 * 1024
# Markup that is never document text, whatever the format.
_SCRIPT = re.compile(r"<(script|style|noscript|iframe|template)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(r"</?[a-zA-Z!][^<>]*>")


def decode(data: bytes) -> str:
    """Decode bytes as UTF-8 (or UTF-16 with a BOM), falling back to Windows-1252; reject binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    sample = data[:65536]
    if b"\x00" in sample:
        raise BadInput("binary content (NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    controls = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.01 * max(1, len(text[:65536])):
        raise BadInput("binary content (control characters)")
    return text


def strip_markup(text: str) -> str:
    """Remove scripts, styles and tags that turn up inside text and markdown files."""
    return _TAG.sub("", _SCRIPT.sub("", text))


def markdown_to_text(text: str) -> str:
    """Drop markdown syntax, keeping the words: headings, emphasis, links, images, code marks."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^[ \t]{0,3}#{1,6}[ \t]*", "", text, flags=re.M)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?![\w*])", r"\1", text)
    text = text.replace("`", "")
    return re.sub(r"^[ \t]{0,3}>[ \t]?", "", text, flags=re.M)


def html_to_text(data: bytes) -> str:
    """Text of an HTML page, one block element per paragraph, without scripts, navigation or forms."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "iframe", "template", "nav", "form", "svg", "head"]):
        tag.decompose()
    blocks = "p h1 h2 h3 h4 h5 h6 li blockquote div section article tr br title"
    for tag in soup.find_all(blocks.split()):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return soup.get_text()


def pdf_to_text(data: bytes) -> str:
    """Text of every page of a PDF."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadInput("encrypted PDF: remove its password and try again")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except BadInput:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        raise BadInput(f"unreadable PDF ({type(exc).__name__})") from exc


def docx_to_text(data: bytes) -> str:
    """Text of every paragraph of a Word document."""
    import docx

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise BadInput("unreadable DOCX (not a zip archive)") from exc
    if expanded > DOCX_EXPANDED_LIMIT:
        raise BadInput(f"DOCX expands to {expanded:,} bytes, over the {DOCX_EXPANDED_LIMIT:,}-byte limit")
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zip, xml and value errors for damaged files
        raise BadInput(f"unreadable DOCX ({type(exc).__name__})") from exc
    return "\n\n".join(p.text for p in document.paragraphs)


def load(path: Path, data: bytes) -> str:
    """Turn a file's bytes into text by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return pdf_to_text(data)
    if suffix == ".docx":
        return docx_to_text(data)
    if suffix in {".html", ".htm"}:
        return html_to_text(data)
    text = strip_markup(decode(data))
    return markdown_to_text(text) if suffix in {".md", ".markdown"} else text
