"""A briefing as a file people can paste: Markdown with `[^n]` footnotes, Word with real footnotes, or JSON."""

import io
import re
from datetime import date

from lxml import etree

from app.schemas import Briefing, BriefingFormat, Note
from app.store.split import squash

MEDIA_TYPES: dict[str, str] = {
    "md": "text/markdown; charset=utf-8",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "json": "application/json",
}
NOT_ANSWERED = "Not answered by the sources"
PREAMBLE = (
    "Every statement below is a verbatim quote from its source; each note gives the document and the "
    "character offsets at which to check it."
)

# Characters that Markdown (CommonMark, GFM and common extensions) or HTML could read as syntax; each is
# backslash-escaped, or written as an entity, so documents and questions stay text wherever this is pasted.
_MD_ESCAPE = set("\\`*_[]#|~$")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# At the start of a block these begin a list, a heading underline or a numbered list.
_MD_BLOCK_START = re.compile(r"^([-+=]|\d{1,9}(?=[.)]))")


def nice_date(value: str) -> str:
    """An ISO date as "22 March 2018"; anything else unchanged."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return value
    return f"{day.day} {day:%B %Y}"


def md_text(value: str) -> str:
    """Inline Markdown that renders as exactly this text (whitespace collapsed), never as markup."""
    out = []
    for ch in squash(value):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_ESCAPE:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def md_block(markdown_text: str) -> str:
    """Markdown (already escaped inline) that also cannot start a list or heading at the start of a block."""
    m = _MD_BLOCK_START.match(markdown_text)
    if not m:
        return markdown_text
    # A digit cannot be escaped; the "." or ")" after it can, which stops the numbered list.
    if m.group(1)[0].isdigit():
        end = len(m.group(1))
        return f"{markdown_text[:end]}\\{markdown_text[end:]}"
    return "\\" + markdown_text


def _md_url(url: str) -> str:
    """An autolink for a plain http(s) URL; anything else as text."""
    if re.fullmatch(r"https?://[^\s<>\"'`\\]+", url, re.I):
        return f"<{url}>"
    return md_text(url)


def source_line(note: Note) -> str:
    """Title, publisher, date and URL, each where the document states it."""
    known = [note.title, note.publisher, nice_date(note.published), note.url]
    return ", ".join(squash(k) for k in known if k.strip())


def locator(note: Note) -> str:
    """Where to check the quote: the document id and the character offsets."""
    return f"Document {note.doc_id}, characters {note.start}–{note.end}"


def markdown(briefing: Briefing) -> str:
    """The briefing as Markdown: a section per answered question, footnotes giving quote and source."""
    lines = [
        f"# {md_text(briefing.title)}",
        "",
        f"*{md_text(PREAMBLE)} Compiled by citeqa on {nice_date(briefing.created)} from index "
        f"{md_text(briefing.generation)}.*",
        "",
    ]
    for section in briefing.sections:
        lines += [f"## {md_text(section.question)}", ""]
        said = [f"{md_text(s.text)}{''.join(f'[^{n}]' for n in s.notes)}" for s in section.statements]
        lines += [md_block(" ".join(said)) if said else "", ""]
    if briefing.not_answered:
        lines += [f"## {NOT_ANSWERED}", ""]
        lines += [f"- {md_block(md_text(u.question))}" for u in briefing.not_answered]
        lines.append("")
    for note in briefing.notes:
        meta = [md_text(p) for p in (note.title, note.publisher, nice_date(note.published)) if p.strip()]
        if note.url.strip():
            meta.append(_md_url(note.url))
        source = f" — {', '.join(meta)}" if meta else ""
        lines.append(f"[^{note.n}]: “{md_text(note.quote)}”{source}. {md_text(locator(note))}.")
    return "\n".join(lines).rstrip("\n") + "\n"


# --- Word --------------------------------------------------------------------------------------------------

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
# Characters XML 1.0 cannot hold; documents keep none after cleaning, titles and questions are checked, but a
# stray one must not turn a briefing into a server error.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _w(tag: str) -> str:
    return f"{{{W}}}{tag}"


def _xml_text(value: str) -> str:
    return _XML_INVALID.sub("\ufffd", value)


def _run(parent: etree._Element, text: str = "", superscript: bool = False) -> etree._Element:
    """A w:r holding `text` exactly: line breaks as w:br and tabs as w:tab, so the note reads back verbatim."""
    run = etree.SubElement(parent, _w("r"))
    if superscript:
        props = etree.SubElement(run, _w("rPr"))
        etree.SubElement(props, _w("vertAlign")).set(_w("val"), "superscript")
    for piece in re.split(r"(\n|\t)", _xml_text(text)):
        if piece == "\n":
            etree.SubElement(run, _w("br"))
        elif piece == "\t":
            etree.SubElement(run, _w("tab"))
        elif piece:
            t = etree.SubElement(run, _w("t"))
            t.text = piece
            t.set(XML_SPACE, "preserve")
    return run


def _footnotes_xml(notes: list[Note]) -> bytes:
    """word/footnotes.xml: the two separators Word expects, then one footnote per note, ids = note numbers."""
    root = etree.Element(_w("footnotes"), nsmap={"w": W})
    for fid, kind in ((-1, "separator"), (0, "continuationSeparator")):
        note = etree.SubElement(root, _w("footnote"))
        note.set(_w("type"), kind)
        note.set(_w("id"), str(fid))
        run = etree.SubElement(etree.SubElement(note, _w("p")), _w("r"))
        etree.SubElement(run, _w(kind))
    for n in notes:
        note = etree.SubElement(root, _w("footnote"))
        note.set(_w("id"), str(n.n))
        para = etree.SubElement(note, _w("p"))
        ref = _run(para, superscript=True)
        etree.SubElement(ref, _w("footnoteRef"))
        _run(para, " “")
        _run(para, n.quote)
        where = source_line(n)
        _run(para, f"” — {where}. {locator(n)}." if where else f"”. {locator(n)}.")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True))


def _note_mark(para: etree._Element, n: int, again: bool) -> None:
    """Footnote n's mark: the footnote reference the first time, a NOTEREF to it (same number) after that.

    Word gives each footnote one reference; a source quoted again points back to its note, as Word's own
    cross-references do, rather than repeating the note.
    """
    bookmark = f"_RefCiteqaNote{n}"
    if not again:
        start = etree.SubElement(para, _w("bookmarkStart"))
        start.set(_w("id"), str(n))
        start.set(_w("name"), bookmark)
        etree.SubElement(_run(para, superscript=True), _w("footnoteReference")).set(_w("id"), str(n))
        etree.SubElement(para, _w("bookmarkEnd")).set(_w("id"), str(n))
        return
    etree.SubElement(_run(para), _w("fldChar")).set(_w("fldCharType"), "begin")
    instr = etree.SubElement(_run(para), _w("instrText"))
    instr.text = f" NOTEREF {bookmark} \\f \\h "
    instr.set(XML_SPACE, "preserve")
    etree.SubElement(_run(para), _w("fldChar")).set(_w("fldCharType"), "separate")
    _run(para, str(n), superscript=True)
    etree.SubElement(_run(para), _w("fldChar")).set(_w("fldCharType"), "end")


def word(briefing: Briefing) -> bytes:
    """The briefing as a .docx whose citations are real Word footnotes (python-docx has no footnote API)."""
    import docx
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    document = docx.Document()
    document.core_properties.title = _xml_text(briefing.title)
    document.core_properties.author = "citeqa"
    document.add_heading(_xml_text(briefing.title), 0)
    intro = document.add_paragraph()
    intro.add_run(
        f"{PREAMBLE} Compiled by citeqa on {nice_date(briefing.created)} from index {briefing.generation}."
    ).italic = True
    placed: set[int] = set()
    for section in briefing.sections:
        document.add_heading(_xml_text(section.question), 2)
        para = document.add_paragraph()
        for k, statement in enumerate(section.statements):
            para.add_run(("" if k == 0 else " ") + _xml_text(squash(statement.text)))
            for n in statement.notes:
                _note_mark(para._p, n, n in placed)
                placed.add(n)
    if briefing.not_answered:
        document.add_heading(NOT_ANSWERED, 2)
        for u in briefing.not_answered:
            document.add_paragraph(_xml_text(u.question), style="List Bullet")
    part = Part(
        PackURI("/word/footnotes.xml"),
        CONTENT_TYPE.WML_FOOTNOTES,
        _footnotes_xml(briefing.notes),
        document.part.package,
    )
    document.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def export(briefing: Briefing, fmt: BriefingFormat) -> bytes:
    """The briefing in `fmt`, as bytes."""
    if fmt == "docx":
        return word(briefing)
    if fmt == "json":
        return briefing.model_dump_json(indent=2).encode()
    return markdown(briefing).encode()


def filename(title: str, fmt: BriefingFormat) -> str:
    """An ASCII file name made from the title, for Content-Disposition and downloads."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:60].strip("-")
    return f"{stem or 'briefing'}.{fmt}"
