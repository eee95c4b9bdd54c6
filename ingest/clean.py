"""Cleaning: repair mojibake and drop page furniture while keeping every sentence of the document."""

import re
import unicodedata

import ftfy

# Whole lines that are web-page furniture rather than the document: ads, cookie and browser banners,
# comment widgets, share buttons, section labels, stock-image captions.
_FURNITURE = [
    re.compile(p, re.I)
    for p in (
        r"^(hide ad|advertisement|sponsored|comments?|have your say|more like this|share( this( article)?)?)$",
        r"^(print|email|learn more|news|opinion|analysis|features?|latest)$",
        r"^your browser (is no longer supported|appears to)",
        r"^for the best possible experience using our website",
        r"\bcookies?\b.*\b(browser|consent|enable|accept|website|site)\b",
        r"^you must (sign|log) in to (make a )?comment",
        r"^please remember that the submission of any material",
        r"^links may be included in your comments",
        r"\bstock (image|photo|picture)\b",
        r"^(picture|photo|image)( credit)?s?\s*:",
    )
]
# A teaser for another article; on some pages its headline is glued to the next sentence ("riskA letter").
_TEASER = re.compile(r"^(read|read more|related|see also|watch)\s*:", re.I)
# A block of links to other articles: its headlines follow until the next real sentence.
_LINK_BLOCK = re.compile(r"^(click (the )?links? below for related|related (articles|content|stories))", re.I)
_SENTENCE_END = re.compile(r"""[.!?:;"”’')\]]$""")
# Mojibake that ftfy leaves: a left single quote some publishing systems render as an apostrophe and tilde.
_LEFTOVER_MOJIBAKE = {"'˜": "‘", "â€˜": "‘", "â€™": "’"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")


def fix_encoding(text: str) -> str:
    """Repair mojibake and normalise to NFC, keeping typographic quotes."""
    text = ftfy.fix_text(text, uncurl_quotes=False, fix_line_breaks=True)
    for bad, good in _LEFTOVER_MOJIBAKE.items():
        text = text.replace(bad, good)
    text = _CONTROL.sub("", text)
    # Lone surrogates cannot be stored or sent as UTF-8.
    text = text.encode("utf-8", "replace").decode("utf-8")
    return unicodedata.normalize("NFC", text)


def _furniture(line: str) -> bool:
    bare = line.strip().strip("•·*-–— \t").strip()
    return bool(bare) and len(bare) < 300 and any(p.search(bare) for p in _FURNITURE)


def clean(text: str) -> tuple[str, list[str]]:
    """Return the cleaned text and the fragments removed from it."""
    removed: list[str] = []
    kept: list[str] = []
    in_link_block = False
    for raw in fix_encoding(text).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = re.sub(r"[ \t\u00a0]+", " ", raw).strip()
        if not line:
            kept.append("")
            continue
        if in_link_block:
            if not _SENTENCE_END.search(line):
                removed.append(line)
                continue
            in_link_block = False
        if _LINK_BLOCK.search(line):
            removed.append(line)
            in_link_block = True
            continue
        if _furniture(line):
            removed.append(line)
            continue
        if _TEASER.search(line):
            glued = re.search(r"(?<=[a-z])(?=[A-Z])", line)
            removed.append(line[: glued.start()] if glued else line)
            if not glued:
                continue
            line = line[glued.start() :]
        kept.append(line)
    return _join_paragraphs(kept), removed


def _join_paragraphs(lines: list[str]) -> str:
    """Paragraphs separated by one blank line; a paragraph broken mid-sentence is joined back."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    joined: list[str] = []
    for para in paragraphs:
        if joined and re.search(r"[a-z,]$", joined[-1]) and re.match(r"[a-z(]", para):
            joined[-1] = f"{joined[-1]} {para}"
        else:
            joined.append(para)
    return "\n\n".join(joined)
