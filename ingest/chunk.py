"""Sentence-aware chunking: chunks are runs of whole sentences with offsets into the cleaned text."""

from app.store.split import sentence_spans

# About 150 words: long enough to carry context, short enough that a chunk stays on one topic.
MAX_CHUNK_CHARS = 900
# all-MiniLM-L6-v2 reads 256 word pieces; a longer "sentence" (a table row, a run-on line) is cut.
MAX_SENTENCE_CHARS = 1000


def bounded_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans, with any overlong sentence cut at whitespace into pieces the model can read."""
    spans: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        while end - start > MAX_SENTENCE_CHARS:
            cut = text.rfind(" ", start + MAX_SENTENCE_CHARS // 2, start + MAX_SENTENCE_CHARS)
            cut = cut if cut > start else start + MAX_SENTENCE_CHARS
            spans.append((start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if end > start:
            spans.append((start, end))
    return spans


def chunk(sentences: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Group consecutive sentences: (start, end, first sentence index, sentence count) per chunk."""
    chunks: list[tuple[int, int, int, int]] = []
    first = 0
    for i, (_, end) in enumerate(sentences):
        start = sentences[first][0]
        if i > first and end - start > MAX_CHUNK_CHARS:
            chunks.append((start, sentences[i - 1][1], first, i - first))
            first = i
    if sentences:
        chunks.append((sentences[first][0], sentences[-1][1], first, len(sentences) - first))
    return chunks
