"""Sentence boundaries with character offsets, and the word tokens both BM25 and sentence scoring use."""

import re
from functools import lru_cache

import Stemmer

# A sentence ends at . ! or ? (with closing quotes or brackets) followed by space and a capital, digit
# or opening quote, or directly by a capital (text glued together by a web page: "families.Beate").
_END = re.compile(r"""[.!?]+["'”’)\]]*\s+(?=["'“‘(\[]?[A-Z0-9£$€])|(?<=[a-z]{2})[.!?](?=[A-Z])""")
_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "coun",
    "cllr",
    "st",
    "no",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "inc",
    "ltd",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "gen",
    "col",
    "lt",
    "capt",
    "maj",
    "gov",
    "sen",
    "sgt",
    "rev",
    "hon",
    "u.s",
    "u.k",
    "a.m",
    "p.m",
    "fig",
    "approx",
    "dept",
    "est",
    "jr",
    "sr",
}
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "also",
    ]
)


def is_stopword(word: str) -> bool:
    """Whether a word is a function word ("the", "which"), never a name or a content word."""
    return word.lower() in _STOPWORDS


# A line of a block (an address, a letter's addressee or sign-off, a contact list): at most this many words,
# no sentence end and no bullet or heading mark.
BLOCK_LINE_WORDS = 8
_BLOCK_LINE = re.compile(r"^(?![>*•·–—-] )(?!#)\S.*(?<![.!?:;,])$")


def _block(lines: list[str]) -> bool:
    """Whether the lines of a paragraph form one block, cited whole: two or more short unpunctuated lines."""
    return len(lines) > 1 and all(
        _BLOCK_LINE.match(line.strip()) and len(line.split()) <= BLOCK_LINE_WORDS for line in lines
    )


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Split text[start:end] into sentences; return (start, end) offsets with surrounding space trimmed.

    Line breaks end a sentence, so headings, list items, a date line and paragraphs stand alone; the lines
    of a paragraph that is a block (see _block) are one unit."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    for para in re.finditer(r"(?:[^\n]*\S[^\n]*(?:\n|$))+", text[start:end]):
        lo, hi = start + para.start(), start + para.end()
        if _block(text[lo:hi].strip().split("\n")):
            _append(text, spans, lo, hi)
        else:
            _lines(text, spans, lo, hi)
    return spans


def _lines(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> None:
    """The sentences of each line of text[lo:hi]."""
    for line in re.finditer(r"[^\n]+", text[lo:hi]):
        lo_line, hi_line = lo + line.start(), lo + line.end()
        cut = lo_line
        for m in _END.finditer(text, lo_line, hi_line):
            word = re.search(r"([\w.]+)[.!?]*$", text[cut : m.start() + 1])
            if word and m.group().startswith(".") and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                continue
            # A single capital before the full stop is an initial ("J. Smith", "H.D. Deve"), not a sentence end.
            if m.group().startswith(".") and re.search(r"(?:^|[\s.])[A-Z]$", text[cut : m.start()]):
                continue
            _append(text, spans, cut, m.end())
            cut = m.end()
        _append(text, spans, cut, hi_line)


def _append(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> None:
    while lo < hi and text[lo].isspace():
        lo += 1
    # A list item's bullet is layout, not part of the quote.
    if hi - lo > 2 and text[lo] in "-•*·–—" and text[lo + 1] == " ":
        lo += 2
    while hi > lo and text[hi - 1].isspace():
        hi -= 1
    if hi > lo and any(ch.isalnum() for ch in text[lo:hi]):
        spans.append((lo, hi))


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, apostrophes normalised."""
    return [w.replace("’", "'") for w in _WORD.findall(text.lower())]


def terms(text: str) -> list[str]:
    """Stemmed content words: the vocabulary of BM25 and lexical sentence scoring."""
    stem = _stemmer().stemWord
    return [stem(w.removesuffix("'s")) for w in words(text) if w not in _STOPWORDS]


def squash(text: str) -> str:
    """Text with every run of whitespace as one space, as a reader sees it."""
    return " ".join(text.split())
