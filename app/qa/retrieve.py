"""Hybrid retrieval: dense and BM25 candidates fused, then every sentence inside them scored."""

import re
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from app.qa.expect import NUMBER, counted_nouns, counts, expected, form_words, offers
from app.settings import Settings, fitted
from app.store.embed import Embedder
from app.store.index import Snapshot
from app.store.split import terms

# Sentence score = dense similarity and lexical coverage, blended (fitted: models/reader/params.json).
DENSE_WEIGHT = fitted()["dense_weight"]
LEXICAL_WEIGHT = fitted()["lexical_weight"]
# How much a sentence borrows from its chunk's fused rank: context for sentences like "It said ...".
CONTEXT_WEIGHT = 0.15
# Sentences rank by their score plus this share of their chunk's IDF-weighted coverage of the query terms: a
# paragraph holding every word of the question often states the answer in a sentence sharing few (fitted).
CHUNK_COVERAGE_WEIGHT = fitted()["chunk_coverage_weight"]
# A chunk ranks by its best sentence plus its own dense and (max-normalised) BM25 scores.
CHUNK_DENSE_WEIGHT = 0.2
CHUNK_LEXICAL_WEIGHT = 0.1
# A sentence without a value of the asked-for kind (a "when" question answered without a date) never
# answers, and its score drops by this much, so that its passage ranks lower in /retrieve too.
TYPE_PENALTY = 0.15
# A sentence that some name or figure of the question does not frame (a rating of another council) seldom
# answers, but a paraphrase misses the frame too ("Swiss" for "Switzerland"): demoted, not set aside (fitted).
FRAME_PENALTY = fitted()["frame_penalty"]
# Only the best sentences are checked for the expected kind: the regexes cost more than the dot products.
TYPED_SENTENCES = 40
# Words a follow-up borrows from the conversation count for less than its own words, as expansion terms
# do in relevance-model query expansion (RM3 interpolates the original query at 0.5).
EXPANSION_WEIGHT = 0.5
# A name the document mentions in this many sentences is one of its subjects, so it frames every sentence
# of the document; rarer names frame only their own chunk (entity salience grows with mention count,
# Dunietz and Gillick, 2014).
SALIENT_MENTIONS = 2
# Fused candidates whose sentences are scored.
SCORED_CHUNKS = 20
_ENTITY = re.compile(r"(?<![\w'’])(?:[A-Z][\w'’-]*[A-Za-z]|\d[\d,.]*\d|\d)")


@dataclass
class Evidence:
    """One scored sentence."""

    row: int
    doc: int
    start: int
    end: int
    score: float
    chunk: int
    offers: bool = True
    # Whether every name and figure of the question frames it (an unframed one loses FRAME_PENALTY).
    framed: bool = True
    # Its chunk's IDF-weighted coverage of the query terms (0 to 1).
    coverage: float = 0.0
    # Orders the sentences: the score plus the chunk's share of the query terms (CHUNK_COVERAGE_WEIGHT).
    rank: float = 0.0
    # The probability that it answers the question, from the reader (app/qa/read.py); None when not read.
    confidence: float | None = None


@dataclass
class Retrieval:
    """Everything retrieval found for one query."""

    query: str
    query_terms: list[str]
    chunks: list[tuple[int, float]]
    sentences: list[Evidence]
    focus: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


def entities(question: str, skip_first: bool = True) -> list[str]:
    """Names and numbers the question asks about: capitalised words (after the first) and figures."""
    words = question.strip().split(maxsplit=1)
    rest = (words[1] if len(words) > 1 else "") if skip_first else question
    return [m.group() for m in _ENTITY.finditer(rest)]


def retrieve(
    snapshot: Snapshot,
    embedder: Embedder,
    query: str,
    settings: Settings,
    avoid: frozenset[str] = frozenset(),
    focus: str | None = None,
) -> Retrieval:
    """Score chunks and sentences for a query; `focus` is the part whose names and answer kind count."""
    focus = focus or query
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    vector = embedder.encode_query(query)
    t1 = time.perf_counter()
    timings["embed"] = (t1 - t0) * 1000
    query_terms = terms(query)
    dense, lexical, candidates = search(snapshot, vector, query_terms, settings)
    t2 = time.perf_counter()
    timings["search"] = (t2 - t1) * 1000
    sentences = _score_sentences(
        snapshot, vector, content_terms(query_terms, focus), candidates, set(terms(focus))
    )
    said = _judge(snapshot, focus, query, sentences, avoid)
    best_in_chunk: dict[int, float] = {}
    for ev in sentences:
        best_in_chunk[ev.chunk] = max(best_in_chunk.get(ev.chunk, -1.0), ev.score)
    dense_of = dict(dense)
    top_lexical = lexical[0][1] if lexical else 1.0
    lexical_of = {pos: score / top_lexical for pos, score in lexical}
    chunks = sorted(
        (
            (
                pos,
                best
                + CHUNK_DENSE_WEIGHT * dense_of.get(pos, 0.0)
                + CHUNK_LEXICAL_WEIGHT * lexical_of.get(pos, 0.0),
            )
            for pos, best in best_in_chunk.items()
        ),
        key=lambda kv: -kv[1],
    )
    _frame(snapshot, focus, sentences)
    for ev in sentences:
        ev.rank = ev.score + CHUNK_COVERAGE_WEIGHT * ev.coverage
    # What the last answer said is neither a follow-up's answer nor its closest material.
    sentences = sorted((ev for ev in sentences if ev.row not in said), key=lambda ev: -ev.rank)
    timings["score"] = (time.perf_counter() - t2) * 1000
    return Retrieval(query, query_terms, chunks, sentences, focus, timings)


def content_terms(query_terms: list[str], focus: str) -> list[str]:
    """The query terms a sentence is scored on: without the words that only name the kind of answer
    ("which day of the week", "what body"), which the answering sentence has no reason to repeat."""
    form = set(terms(" ".join(form_words(focus))))
    return [t for t in query_terms if t not in form] or query_terms


def search(
    snapshot: Snapshot, vector: np.ndarray, query_terms: list[str], settings: Settings
) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[tuple[int, float]]]:
    """The dense and BM25 rankings of chunks, and the best chunks of both fused: those whose sentences count."""
    dense = snapshot.dense(vector, settings.candidates)
    lexical = snapshot.lexical(query_terms, settings.candidates)
    # Reciprocal rank fusion (Cormack et al., 2009): robust to the two scores' different scales.
    fused: dict[int, float] = {}
    for ranking in (dense, lexical):
        for rank, (pos, _) in enumerate(ranking):
            fused[pos] = fused.get(pos, 0.0) + 1.0 / (settings.rrf_k + rank + 1)
    return dense, lexical, sorted(fused.items(), key=lambda kv: -kv[1])[:SCORED_CHUNKS]


def _score_sentences(
    snapshot: Snapshot,
    vector: np.ndarray,
    query_terms: list[str],
    candidates: list[tuple[int, float]],
    focus_terms: set[str],
) -> list[Evidence]:
    """Every candidate sentence with its score and the IDF-weighted query-term coverage of its chunk."""
    if not candidates:
        return []
    unique = set(query_terms)
    # A query word the corpus never uses is as informative as the rarest word it does use.
    ceiling = max(snapshot.idf.values(), default=1.0)
    weights = {
        t: snapshot.idf.get(t, ceiling) * (1.0 if t in focus_terms or not focus_terms else EXPANSION_WEIGHT)
        for t in unique
    }
    total = sum(weights.values()) or 1.0
    top_fused = candidates[0][1]
    rows: list[int] = []
    owners: list[int] = []
    context: list[float] = []
    for pos, fused in candidates:
        first, count = int(snapshot.chunk_first[pos]), int(snapshot.chunk_count[pos])
        rows.extend(range(first, first + count))
        owners.extend([pos] * count)
        context.extend([fused / top_fused] * count)
    dense = np.asarray(snapshot.vectors[rows]) @ vector
    out: list[Evidence] = []
    seen: dict[int, set[str]] = {}
    for i, row in enumerate(rows):
        present = unique.intersection(snapshot.sentence_terms[row])
        seen.setdefault(owners[i], set()).update(present)
        lexical = sum(weights[t] for t in present) / total
        score = DENSE_WEIGHT * float(dense[i]) + LEXICAL_WEIGHT * lexical + CONTEXT_WEIGHT * (context[i] - 1)
        out.append(
            Evidence(
                row=row,
                doc=int(snapshot.sent_doc[row]),
                start=int(snapshot.sent_start[row]),
                end=int(snapshot.sent_end[row]),
                score=score,
                chunk=owners[i],
            )
        )
    coverage = {pos: sum(weights[t] for t in words) / total for pos, words in seen.items()}
    for ev in out:
        ev.coverage = coverage[ev.chunk]
    return out


def _judge(
    snapshot: Snapshot,
    focus: str,
    query: str,
    sentences: list[Evidence],
    avoid: frozenset[str],
) -> set[int]:
    """Set aside the best sentences that cannot answer: those without a value of the asked-for kind (also
    demoted); return the rows of those the previous answer already gave, which retrieval drops.

    The kind comes from the focus; what counts as already said is the whole query, so a follow-up's
    antecedent ("who replaced him?") is never its own answer.
    """
    kind = expected(focus)
    nouns = counted_nouns(focus) if kind == NUMBER else []
    counting: dict[int, bool] = {}
    said: set[int] = set()
    for ev in sorted(sentences, key=lambda e: -e.score)[:TYPED_SENTENCES]:
        text = snapshot.doc_list[ev.doc].text[ev.start : ev.end]
        if not offers(kind, text, query, _proper(snapshot, ev.doc)):
            ev.offers = False
            ev.score -= TYPE_PENALTY
        elif nouns:
            counting[ev.row] = counts(text, nouns)
        if text in avoid:
            said.add(ev.row)
    # "How many focused visits": where a passage counts the asked thing, its figures of other things do not
    # answer ("a one-week inspection every three years" beside "at least one focused visit").
    passages_counting = {ev.chunk for ev in sentences if counting.get(ev.row)}
    for ev in sentences:
        if ev.row in counting and not counting[ev.row] and ev.chunk in passages_counting:
            ev.offers = False
    return said


def _frame(snapshot: Snapshot, focus: str, sentences: list[Evidence]) -> None:
    """Mark each sentence framed or not by the question's names, and demote the unframed by FRAME_PENALTY.

    Framing depends on the sentence's chunk alone, so it is checked once per chunk.
    """
    by_chunk: dict[int, bool] = {}
    for ev in sentences:
        if ev.chunk not in by_chunk:
            by_chunk[ev.chunk] = not unframed(snapshot, focus, ev)
        ev.framed = by_chunk[ev.chunk]
        if not ev.framed:
            ev.score -= FRAME_PENALTY


def _proper(snapshot: Snapshot, doc: int) -> Callable[[str], bool]:
    """Whether the document capitalises a word after a lower-case word too: then it is a proper noun."""
    text = snapshot.doc_list[doc].text
    memo = _memo(snapshot)

    def proper(word: str) -> bool:
        key = ("proper", word, doc)
        if key not in memo:
            memo[key] = bool(re.search(rf"[a-z,;]\s+{re.escape(word)}\b", text))
        return memo[key]

    return proper


_COORDINATOR = re.compile(r"^(?:['’]s|['’])?\s*(?:,\s*)?(?:and|or|,)\s+(?:both\s+|either\s+)?$", re.I)


@lru_cache(maxsize=1024)
def name_groups(question: str) -> tuple[tuple[tuple[str, ...], bool], ...]:
    """The question's names and figures, coordinated ones grouped, each group with whether it is an "and".

    Every answering sentence must be framed by each group through at least one member: a sentence answers
    one conjunct of "in both Kirklees and Wakefield", and one alternative of "Wakefield's or Kirklees'";
    the answer as a whole must cover every conjunct of an "and".
    """
    words = question.strip().split(maxsplit=1)
    rest = words[1] if len(words) > 1 else ""
    groups: list[tuple[tuple[str, ...], bool]] = []
    last_end = -1
    for m in _ENTITY.finditer(rest):
        joint = _COORDINATOR.match(rest[last_end : m.start()]) if groups else None
        if joint:
            members, both = groups[-1]
            groups[-1] = (members + (m.group(),), both and not re.search(r"\bor\b", joint.group(), re.I))
        else:
            groups.append(((m.group(),), True))
        last_end = m.end()
    return tuple(groups)


def framed(snapshot: Snapshot, name: str, ev: Evidence) -> bool:
    """Whether a name or figure of the question frames this sentence.

    A figure must occur in the sentence's chunk (or the title); a name may also be one of the document's
    subjects, mentioned throughout it, and is matched through its derived forms (Italy, Italian) and, for
    an acronym, through the words it abbreviates (EU, European Union).
    """
    # The answer depends on the chunk only, and compose asks it for every candidate sentence.
    memo = _memo(snapshot)
    key = ("framed", name, ev.chunk)
    if key not in memo:
        memo[key] = _framed(snapshot, name, ev.chunk, ev.doc)
    return memo[key]


def _framed(snapshot: Snapshot, name: str, pos: int, doc_index: int) -> bool:
    wanted = terms(name)
    if not wanted:
        return True
    context: set[str] = set(snapshot.title_terms(doc_index))
    first, count = int(snapshot.chunk_first[pos]), int(snapshot.chunk_count[pos])
    for row in range(first, first + count):
        context.update(snapshot.sentence_terms[row])
    if set(wanted) <= context:
        return True
    if name[0].isdigit():
        return False
    mentions = _mentions(snapshot, doc_index)
    if all(t in context or mentions[t] >= SALIENT_MENTIONS or _derived(t, context) for t in wanted):
        return True
    doc = snapshot.doc_list[doc_index]
    chunk_text = doc.text[int(snapshot.chunk_start[pos]) : int(snapshot.chunk_end[pos])]
    return _acronym(name, f"{doc.title}\n{chunk_text}")


def _derived(term: str, context: set[str]) -> bool:
    """A context word sharing the name's root: all but its last three letters, and at least four."""
    root = term[: max(4, len(term) - 3)]
    return any(len(c) >= 4 and (c.startswith(root) or root.startswith(c)) for c in context)


def _acronym(name: str, text: str) -> bool:
    """Whether an all-capitals name abbreviates capitalised words of the text (Schwartz and Hearst, 2003)."""
    letters = name.strip(".'’")
    if not (2 <= len(letters) <= 6 and letters.isalpha() and letters.isupper()):
        return False
    joiner = r"\s+(?:(?:of|the|and|for|de)\s+)*"
    pattern = joiner.join(rf"{c}[\w'’-]*" for c in letters)
    return bool(re.search(rf"\b{pattern}", text))


def unframed(snapshot: Snapshot, question: str, ev: Evidence) -> list[str]:
    """The question's names and figures this sentence is not framed by (a group needs only one member)."""
    return [
        " or ".join(group)
        for group, _ in name_groups(question)
        if not any(framed(snapshot, name, ev) for name in group)
    ]


_MENTIONS: "weakref.WeakKeyDictionary[Snapshot, dict[int, Counter[str]]]" = weakref.WeakKeyDictionary()
_MEMOS: "weakref.WeakKeyDictionary[Snapshot, dict[tuple[str, str, int], bool]]" = weakref.WeakKeyDictionary()
# Entries kept per snapshot before the memo starts afresh: bounded memory for a long-running server.
MEMO_LIMIT = 200_000


def _memo(snapshot: Snapshot) -> dict[tuple[str, str, int], bool]:
    """Per-snapshot answers of pure checks on (word, chunk or document); it dies with the snapshot."""
    memo = _MEMOS.setdefault(snapshot, {})
    if len(memo) > MEMO_LIMIT:
        memo.clear()
    return memo


def _mentions(snapshot: Snapshot, doc: int) -> Counter[str]:
    """How many sentences of the document mention each term, computed once per snapshot and document."""
    per_doc = _MENTIONS.setdefault(snapshot, {})
    if doc not in per_doc:
        where = np.nonzero(snapshot.chunk_doc == doc)[0]
        first = int(snapshot.chunk_first[where[0]]) if len(where) else 0
        last = int(snapshot.chunk_first[where[-1]] + snapshot.chunk_count[where[-1]]) if len(where) else 0
        counts: Counter[str] = Counter()
        for row in range(first, last):
            counts.update(set(snapshot.sentence_terms[row]))
        per_doc[doc] = counts
    return per_doc[doc]
