"""Briefings: answers collected by a client, re-checked against the index, with one numbered note per quote."""

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from app.errors import BadInput
from app.qa.answer import ask, validate_question
from app.schemas import Answer, Briefing, BriefingItem, BriefingSection, Note, Statement, Unanswered
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot
from app.store.split import squash

_MARKER = re.compile(r"\[(\d+)\]")
# Long enough to recognise the question in an error message, short enough to keep the message one line.
_QUESTION_IN_ERRORS = 60

Progress = Callable[[str, int, int], None]


def _name(index: int, question: str) -> str:
    """How an error names an item: its position in the request and the start of its question."""
    short = squash(question)
    if len(short) > _QUESTION_IN_ERRORS:
        short = short[: _QUESTION_IN_ERRORS - 1] + "…"
    return f"items[{index}] (“{short}”)"


def check_title(title: str, settings: Settings) -> str:
    """The title on one line, or a clear error for an empty, oversized or unencodable one."""
    title = squash(title)
    if not title:
        raise BadInput("title is empty")
    if len(title) > settings.max_briefing_title_chars:
        raise BadInput(f"title is longer than {settings.max_briefing_title_chars} characters")
    try:
        title.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput("title is not valid UTF-8 text (it contains lone surrogates)") from exc
    return title


def check_items(items: Sequence[BriefingItem], settings: Settings) -> list[str]:
    """Each item's question, checked before any is answered, so bad input never waits on a model."""
    if not items:
        raise BadInput("items is empty: a briefing needs at least one question")
    if len(items) > settings.max_briefing_items:
        raise BadInput(f"items has {len(items)} questions; at most {settings.max_briefing_items} are allowed")
    questions = []
    for i, item in enumerate(items):
        try:
            questions.append(validate_question(item.question, settings))
        except BadInput as exc:
            raise BadInput(f"items[{i}]: {exc}") from None
    return questions


def statements(answer: Answer) -> list[tuple[str, list[int]]]:
    """The answer's statements, each the text before a run of markers and the marker numbers.

    Text after the last marker is a statement with no markers, which a briefing refuses.
    """
    out: list[tuple[str, list[int]]] = []
    pos = 0
    for m in _MARKER.finditer(answer.answer):
        before = answer.answer[pos : m.start()].strip()
        if before or not out:
            out.append((before, [int(m.group(1))]))
        else:
            out[-1][1].append(int(m.group(1)))
        pos = m.end()
    tail = answer.answer[pos:].strip()
    if tail:
        out.append((tail, []))
    return out


def verify(snapshot: Snapshot, index: int, question: str, answer: Answer) -> list[tuple[str, list[int]]]:
    """Refuse an answer whose quotes are not the index's text at their offsets, or whose statements are not its quotes."""
    name = _name(index, question)
    numbers = [c.n for c in answer.citations]
    if len(set(numbers)) != len(numbers):
        raise BadInput(f"{name}: citation numbers {numbers} repeat")
    for c in answer.citations:
        doc = snapshot.docs.get(c.doc_id)
        where = f"citation [{c.n}]"
        if doc is None:
            raise BadInput(f"{name}: {where} names document {c.doc_id[:200]!r}, which is not in the index")
        if not 0 <= c.start < c.end <= len(doc.text):
            raise BadInput(
                f"{name}: {where} offsets {c.start}:{c.end} are outside document {c.doc_id[:200]!r} "
                f"(0:{len(doc.text)})"
            )
        if doc.text[c.start : c.end] != c.quote:
            raise BadInput(
                f"{name}: {where} does not match document {c.doc_id[:200]!r} at {c.start}:{c.end} "
                "(the index changed since the answer, or the quote was edited); ask the question again"
            )
    said = statements(answer)
    used = {n for _, ns in said for n in ns}
    if used != set(numbers):
        raise BadInput(
            f"{name}: the answer's markers {sorted(used)} do not match its citations {sorted(numbers)}"
        )
    if answer.abstained:
        return []
    if not said:
        raise BadInput(f"{name}: the answer is empty")
    quotes = {c.n: c.quote for c in answer.citations}
    for k, (text, ns) in enumerate(said, 1):
        if not ns:
            raise BadInput(f"{name}: statement {k} has no citation marker, so nothing backs it")
        # Whitespace may be re-wrapped by a client; the words must be the quotes', in order.
        if squash(text) != squash(" ".join(quotes[n] for n in ns)):
            raise BadInput(f"{name}: statement {k} is not the verbatim quote of its citations {ns}")
    return said


def assemble(
    snapshot: Snapshot,
    embedder: Embedder,
    settings: Settings,
    title: str,
    items: Sequence[BriefingItem],
    progress: Progress | None = None,
) -> Briefing:
    """Answer the items that need it, check every quote against the snapshot, and number the notes."""
    title = check_title(title, settings)
    questions = check_items(items, settings)
    sections: list[BriefingSection] = []
    not_answered: list[Unanswered] = []
    notes: dict[tuple[str, int, int], Note] = {}
    for i, (item, question) in enumerate(zip(items, questions, strict=True)):
        # Answered now exactly as POST /ask would: same function, default top_k, no history.
        answer = item.answer or ask(snapshot, embedder, question, settings)
        said = verify(snapshot, i, question, answer)
        if progress:
            progress("brief", i + 1, len(items))
        if answer.abstained:
            not_answered.append(Unanswered(item=i, question=question))
            continue
        cited = {c.n: c for c in answer.citations}
        out = []
        for _, ns in said:
            numbers = []
            for n in ns:
                c = cited[n]
                key = (c.doc_id, c.start, c.end)
                if key not in notes:
                    doc = snapshot.docs[c.doc_id]
                    # What the index says of the document, never what the client sent.
                    notes[key] = Note(
                        n=len(notes) + 1,
                        doc_id=doc.doc_id,
                        title=doc.title,
                        publisher=doc.publisher,
                        published=doc.published,
                        url=doc.url,
                        quote=c.quote,
                        start=c.start,
                        end=c.end,
                    )
                numbers.append(notes[key].n)
            out.append(Statement(text=" ".join(cited[n].quote for n in ns), notes=numbers))
        sections.append(BriefingSection(item=i, question=question, statements=out))
    return Briefing(
        title=title,
        created=datetime.now(UTC).date().isoformat(),
        generation=snapshot.generation.name,
        sections=sections,
        not_answered=not_answered,
        notes=list(notes.values()),
    )
