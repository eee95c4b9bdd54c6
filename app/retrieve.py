"""Hybrid retrieval: dense and BM25 candidates fused, then every sentence inside them scored."""

import re
import time
from dataclasses import dataclass, field

import numpy as np

from app.embed import Embedder
from app.expect import expected, offers
from app.index import Snapshot
from app.settings import Settings
from app.split import terms

# Sentence score = dense similarity and lexical coverage, blended; weights tuned on the SQuAD split
# (evals/squad.py), never on the seed corpus's own questions.
DENSE_WEIGHT = 0.55
LEXICAL_WEIGHT = 0.45
# How much a sentence borrows from its chunk's fused rank: context for sentences like "It said ...".
CONTEXT_WEIGHT = 0.15
# A chunk ranks by its best sentence plus its own dense and (max-normalised) BM25 scores.
CHUNK_DENSE_WEIGHT = 0.2
CHUNK_LEXICAL_WEIGHT = 0.1
# Penalties for sentences that cannot be the answer: no value of the asked-for kind (a "when" question
# answered without a date), nothing beyond the question's own words (a heading), or already said.
TYPE_PENALTY = 0.15
ECHO_PENALTY = 0.15
REPEAT_PENALTY = 0.3
# Only the best sentences are checked for the expected kind: the regexes cost more than the dot products.
TYPED_SENTENCES = 40
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
    dense = snapshot.dense(vector, settings.candidates)
    lexical = snapshot.lexical(query_terms, settings.candidates)
    t2 = time.perf_counter()
    timings["search"] = (t2 - t1) * 1000
    # Reciprocal rank fusion (Cormack et al., 2009): robust to the two scores' different scales.
    fused: dict[int, float] = {}
    for ranking in (dense, lexical):
        for rank, (pos, _) in enumerate(ranking):
            fused[pos] = fused.get(pos, 0.0) + 1.0 / (settings.rrf_k + rank + 1)
    candidates = sorted(fused.items(), key=lambda kv: -kv[1])[:SCORED_CHUNKS]
    sentences = _score_sentences(snapshot, vector, query_terms, candidates, settings)
    _judge(snapshot, focus, query_terms, sentences, avoid)
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
    sentences.sort(key=lambda ev: -ev.score)
    timings["score"] = (time.perf_counter() - t2) * 1000
    return Retrieval(query, query_terms, chunks, sentences, focus, timings)


def _score_sentences(
    snapshot: Snapshot,
    vector: np.ndarray,
    query_terms: list[str],
    candidates: list[tuple[int, float]],
    settings: Settings,
) -> list[Evidence]:
    if not candidates:
        return []
    unique = set(query_terms)
    # A query word the corpus never uses is as informative as the rarest word it does use.
    ceiling = max(snapshot.idf.values(), default=1.0)
    weights = {t: snapshot.idf.get(t, ceiling) for t in unique}
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
    for i, row in enumerate(rows):
        present = unique.intersection(snapshot.sentence_terms[row])
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
    return out


def _judge(
    snapshot: Snapshot, query: str, query_terms: list[str], sentences: list[Evidence], avoid: frozenset[str]
) -> None:
    """Demote the best sentences that cannot answer: wrong kind, an echo of the question, or a repeat."""
    kind = expected(query)
    asked = set(query_terms)
    for ev in sorted(sentences, key=lambda e: -e.score)[:TYPED_SENTENCES]:
        text = snapshot.doc_list[ev.doc].text[ev.start : ev.end]
        if not offers(kind, text, query):
            ev.offers = False
            ev.score -= TYPE_PENALTY
        if len(set(snapshot.sentence_terms[ev.row]) - asked) < 2:
            ev.score -= ECHO_PENALTY
        if text in avoid:
            ev.score -= REPEAT_PENALTY


def missing_entities(snapshot: Snapshot, question: str, evidence: list[Evidence]) -> list[str]:
    """Names and figures of the question that none of the evidence's chunks (or their titles) mention."""
    haystack: set[str] = set()
    for pos in dict.fromkeys(ev.chunk for ev in evidence):
        first, count = int(snapshot.chunk_first[pos]), int(snapshot.chunk_count[pos])
        for row in range(first, first + count):
            haystack.update(snapshot.sentence_terms[row])
        haystack.update(snapshot.title_terms(int(snapshot.chunk_doc[pos])))
    return [e for e in entities(question) if not set(terms(e)) <= haystack]
