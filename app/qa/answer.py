"""Answers composed from verified evidence sentences, each followed by its citation marker."""

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

from app.errors import BadInput, CitationInvalid
from app.qa.expect import sub_questions
from app.qa.followup import standalone
from app.qa.read import get_reader, read
from app.qa.retrieve import Evidence, Retrieval, framed, name_groups, retrieve
from app.schemas import Answer, Citation, Message, Passage
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot
from app.store.split import sentence_spans

ABSTAIN_TEXT = "The documents do not answer this question."
CLOSEST_TEXT = "Closest material, which is not an answer:"
# Two sentences sharing this share of their terms say the same thing (a news story quoting the letter).
DUPLICATE_OVERLAP = 0.6
# Further sentences join the answer only when nearly as strong as the best one; the official document's
# own wording joins more readily, since a briefing should cite the primary source over press coverage.
SUPPORT_RATIO = 0.9
OFFICIAL_SUPPORT_RATIO = 0.65
_MARKER = re.compile(r"\[(\d+)\]")
# A coordinated question's parts are searched side by side: the first on the asking thread, the others on
# this helper (the query encoder and the search release the interpreter while they run). A part's search
# never asks a question itself, so it never waits for this pool.
_PARTS = ThreadPoolExecutor(1, thread_name_prefix="citeqa-part")
# A quotation that opens in a sentence and closes a few sentences on is cited whole, up to this many more.
QUOTE_SENTENCES = 3


class Answerer(Protocol):
    """Turns retrieved evidence into an answer; the seam for an optional generative answerer.

    With the reader on, `found.sentences` arrive with the read ones first, in the reader's rank; only those
    scoring at least the read floor are read (app/qa/read.py, read), and the others follow in the
    hybrid rank."""

    def compose(
        self, snapshot: Snapshot, found: Retrieval, settings: Settings
    ) -> tuple[str, bool, list[Evidence]]:
        """Return the answer text (with `[n]` markers), whether it abstains, and the cited evidence."""
        ...


class ExtractiveAnswerer:
    """The default answerer: the best evidence sentences themselves, verbatim, each document's best first."""

    def compose(
        self, snapshot: Snapshot, found: Retrieval, settings: Settings
    ) -> tuple[str, bool, list[Evidence]]:
        """Pick, de-duplicate and order evidence; abstain when none that may answer is strong enough."""
        usable = [ev for ev in candidates(snapshot, found) if answers(ev, settings)]
        # With the reader on, the best must be a sentence it read; one beyond its budget may only support.
        if not usable or (settings.read_budget and usable[0].confidence is None):
            return self._abstain(snapshot, found)
        best = usable[0]
        strong = [
            ev
            for ev in usable
            if ev.score >= (OFFICIAL_SUPPORT_RATIO if _official(snapshot, ev) else SUPPORT_RATIO) * best.score
        ]
        chosen = _distinct(snapshot, strong, settings.max_answer_sentences)
        # "In both Kirklees and Wakefield": every conjunct gets a sentence of its own when one is strong enough.
        for members, both in name_groups(found.focus):
            for name in members if both and len(members) > 1 else []:
                if not any(framed(snapshot, name, ev) for ev in chosen):
                    extra = [ev for ev in usable if framed(snapshot, name, ev)]
                    chosen = _distinct(snapshot, chosen + extra[:1], len(chosen) + 1)
        chosen = _unquoted([_whole_quote(snapshot, ev) for ev in chosen])
        return render(snapshot, chosen), False, chosen

    def _abstain(self, snapshot: Snapshot, found: Retrieval) -> tuple[str, bool, list[Evidence]]:
        """Say the documents do not answer, and show the closest material as such."""
        # The closest material is the strongest evidence, by the sentences' own score (ties in document
        # order, so that the order the reader left the sentences in never matters here).
        closest = _distinct(snapshot, sorted(found.sentences, key=lambda ev: (-ev.score, ev.row)), 3)
        markers = " ".join(f"[{i}]" for i in range(1, len(closest) + 1))
        text = f"{ABSTAIN_TEXT} {CLOSEST_TEXT} {markers}" if closest else ABSTAIN_TEXT
        return text, True, closest


def answers(ev: Evidence, settings: Settings) -> bool:
    """Whether a sentence is strong enough to be quoted: one the reader read when its confidence reaches the
    answer threshold (it was read because it scored at least the read floor), any other when its score
    reaches the abstention threshold."""
    if ev.confidence is None:
        return ev.score >= settings.abstain_threshold
    return ev.score >= settings.read_floor and ev.confidence >= settings.answer_threshold


def candidates(snapshot: Snapshot, found: Retrieval) -> list[Evidence]:
    """The sentences that may answer, in rank order.

    A sentence without a value of the asked-for kind (a date for "when") cannot be the answer, nor can the
    document's title line; any other line (a date line, an address block, a heading) can. The rank picks
    the answer; whether to answer at all rests on the score and, with the reader on, its confidence (see
    `answers`).
    """
    return [ev for ev in found.sentences if ev.offers and not _title(snapshot, ev)]


def render(snapshot: Snapshot, chosen: list[Evidence]) -> str:
    """The sentences with their markers, `chosen` given best first: official documents first, then by best
    sentence; each document's best sentence leads it, and its others follow in their own order."""
    doc_rank: dict[int, tuple[bool, int]] = {}
    lead: dict[int, int] = {}
    for ev in chosen:
        doc_rank.setdefault(ev.doc, (not _official(snapshot, ev), len(doc_rank)))
        lead.setdefault(ev.doc, ev.row)
    chosen.sort(key=lambda ev: (doc_rank[ev.doc], ev.row != lead[ev.doc], ev.start))
    doc_text = [snapshot.doc_list[ev.doc].text for ev in chosen]
    return " ".join(
        f"{text[ev.start : ev.end]} [{i}]"
        for i, (ev, text) in enumerate(zip(chosen, doc_text, strict=True), 1)
    )


def _whole_quote(snapshot: Snapshot, ev: Evidence) -> Evidence:
    """The sentence extended to the end of a quotation it opens: 'said: "X.' alone leaves out what was said.

    Only curly or straight double quotes count (a single quote is also an apostrophe), only within the
    paragraph, and only up to QUOTE_SENTENCES more sentences; a quotation that never closes is left as it is.
    """
    text = snapshot.doc_list[ev.doc].text
    end = ev.end
    for row in range(ev.row + 1, min(ev.row + 1 + QUOTE_SENTENCES, len(snapshot.sent_doc))):
        if not _open_quote(text[ev.start : end]):
            break
        # Paragraphs are separated by a blank line; a single line break is a hard wrap inside one.
        if int(snapshot.sent_doc[row]) != ev.doc or "\n\n" in text[end : int(snapshot.sent_start[row])]:
            return ev
        end = int(snapshot.sent_end[row])
    if end == ev.end or _open_quote(text[ev.start : end]):
        return ev
    return replace(ev, end=end)


def _unquoted(evidence: list[Evidence]) -> list[Evidence]:
    """The evidence without sentences another citation already quotes (a quotation cited whole covers them)."""

    def covers(a: Evidence, b: Evidence) -> bool:
        return a.doc == b.doc and a.start <= b.start and b.end <= a.end

    return [
        ev
        for i, ev in enumerate(evidence)
        if not any(
            j != i and covers(other, ev) and (j < i or not covers(ev, other))
            for j, other in enumerate(evidence)
        )
    ]


def _open_quote(text: str) -> bool:
    return text.count("“") > text.count("”") or text.count('"') % 2 == 1


def _title(snapshot: Snapshot, ev: Evidence) -> bool:
    """The document's own title line: it labels, not answers, unless it is all the document holds (a
    one-sentence document's title is taken from that sentence, which labels nothing)."""
    doc = snapshot.doc_list[ev.doc]
    sentence = doc.text[ev.start : ev.end].strip()
    return sentence == doc.title.strip() and sentence != doc.text.strip()


def _official(snapshot: Snapshot, ev: Evidence) -> bool:
    doc = snapshot.doc_list[ev.doc]
    return "official" in doc.kind.lower()


def _distinct(snapshot: Snapshot, ranked: list[Evidence], limit: int) -> list[Evidence]:
    """The best sentences with repeats merged, keeping the official document's wording of a shared fact."""
    chosen: list[Evidence] = []
    for ev in ranked:
        words = set(snapshot.sentence_terms[ev.row])
        twin = next(
            (i for i, c in enumerate(chosen) if _overlap(words, set(snapshot.sentence_terms[c.row]))), None
        )
        if twin is None:
            if len(chosen) < limit:
                chosen.append(ev)
        elif _official(snapshot, ev) and not _official(snapshot, chosen[twin]):
            chosen[twin] = ev
    return chosen


def _overlap(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / min(len(a), len(b)) >= DUPLICATE_OVERLAP


def citations(snapshot: Snapshot, evidence: list[Evidence]) -> list[Citation]:
    """A citation per evidence sentence, numbered from 1."""
    out = []
    for n, ev in enumerate(evidence, 1):
        doc = snapshot.doc_list[ev.doc]
        out.append(
            Citation(
                n=n,
                doc_id=doc.doc_id,
                title=doc.title,
                source=doc.source,
                published=doc.published,
                url=doc.url,
                quote=doc.text[ev.start : ev.end],
                start=ev.start,
                end=ev.end,
                score=round(ev.score, 4),
            )
        )
    return out


def check_citations(snapshot: Snapshot, answer: str, cited: list[Citation]) -> None:
    """Refuse to send an answer whose markers and quotes do not line up with the documents exactly."""
    used = {int(m) for m in _MARKER.findall(answer)}
    numbers = {c.n for c in cited}
    if used != numbers:
        raise CitationInvalid(f"markers {sorted(used)} do not match citations {sorted(numbers)}")
    for c in cited:
        doc = snapshot.docs.get(c.doc_id)
        if doc is None or doc.text[c.start : c.end] != c.quote or not c.quote.strip():
            raise CitationInvalid(f"citation [{c.n}] does not quote {c.doc_id} at {c.start}:{c.end}")


def validate_question(question: str, settings: Settings) -> str:
    """The question stripped, or a clear error for an empty or oversized one."""
    # The length counts before stripping, as the OpenAPI schema's maxLength does.
    if len(question) > settings.max_question_chars:
        raise BadInput(f"question is longer than {settings.max_question_chars} characters")
    question = question.strip()
    if not question:
        raise BadInput("question is empty")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON can spell lone surrogates (\ud800) and argv can carry undecodable bytes as them; the
        # tokenizer cannot take them.
        raise BadInput("question is not valid UTF-8 text (it contains lone surrogates)") from exc
    return question


def ask(
    snapshot: Snapshot,
    embedder: Embedder,
    question: str,
    settings: Settings,
    history: list[Message] | None = None,
    top_k: int | None = None,
    answerer: Answerer | None = None,
) -> Answer:
    """Answer a question from the snapshot, with checked citations."""
    started = time.perf_counter()
    question = validate_question(question, settings)
    _top_k(top_k, settings)
    history = (history or [])[-settings.max_history_turns :]
    query, focus = standalone(question, history)
    avoid = _said_before(snapshot, history)
    answerer = answerer or ExtractiveAnswerer()
    # A coordinated question ("Who ..., and who ...?") is answered part by part, each part searched alone:
    # (what is searched, the part whose names and answer kind count).
    parts = sub_questions(query) if focus == query else [query]
    searches = [(part, part) for part in parts] if len(parts) > 1 else [(query, focus)]
    rest = [_PARTS.submit(retrieve, snapshot, embedder, q, settings, avoid, f) for q, f in searches[1:]]
    first, first_focus = searches[0]
    founds = [retrieve(snapshot, embedder, first, settings, avoid, first_focus)]
    founds += [done.result() for done in rest]
    if settings.read_budget:
        read(
            get_reader(settings.reader_dir),
            snapshot,
            founds,
            settings.read_budget,
            settings.read_floor,
        )
    t = time.perf_counter()
    results = [answerer.compose(snapshot, found, settings) for found in founds]
    answered = [r for r in results if not r[1]]
    if len(results) == 1 or not answered:
        text, abstained, evidence = results[0]
    else:
        # The parts' sentences together, each once, in the usual reading order.
        evidence = _unquoted(list({ev.row: ev for _, _, found_ev in answered for ev in found_ev}.values()))
        text, abstained = render(snapshot, evidence), False
    cited = citations(snapshot, evidence)
    check_citations(snapshot, text, cited)
    # Each stage's time summed over the parts; parts searched side by side can add up to more than "total".
    timings: dict[str, float] = {}
    for found in founds:
        for stage, ms in found.timings_ms.items():
            timings[stage] = timings.get(stage, 0.0) + ms
    timings["compose"] = (time.perf_counter() - t) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    return Answer(answer=text, abstained=abstained, citations=cited, query=query, timings_ms=timings)


def _said_before(snapshot: Snapshot, history: list[Message]) -> frozenset[str]:
    """Sentences the last answer already gave: a follow-up wants something new."""
    last = next((m.content for m in reversed(history) if m.role == "assistant"), "")
    if not last:
        return frozenset()
    # Split at the markers and at sentence ends, so an answer pasted without its markers counts too.
    said = set()
    for part in _MARKER.split(last):
        said.add(part.strip())
        said.update(part[s:e] for s, e in sentence_spans(part))
    return frozenset(p for p in said if len(p) > 20)


def passages(
    snapshot: Snapshot, embedder: Embedder, question: str, settings: Settings, top_k: int | None
) -> list[Passage]:
    """The best chunks for a question, best first."""
    question = validate_question(question, settings)
    k = _top_k(top_k, settings)
    found = retrieve(snapshot, embedder, question, settings)
    out = []
    for pos, score in found.chunks[:k]:
        doc = snapshot.doc_list[int(snapshot.chunk_doc[pos])]
        start, end = int(snapshot.chunk_start[pos]), int(snapshot.chunk_end[pos])
        out.append(
            Passage(
                doc_id=doc.doc_id,
                title=doc.title,
                source=doc.source,
                text=doc.text[start:end],
                start=start,
                end=end,
                score=round(score, 4),
            )
        )
    return out


def _top_k(top_k: int | None, settings: Settings) -> int:
    k = settings.default_top_k if top_k is None else top_k
    if not 1 <= k <= settings.max_top_k:
        raise BadInput(f"top_k must be between 1 and {settings.max_top_k}")
    return k
