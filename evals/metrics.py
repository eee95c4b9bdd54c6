"""Metric functions shared by the question-set eval and the SQuAD benchmark, plus the baseline gate."""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Pattern = str | re.Pattern[str]

# Rates where a rise is a regression; every other gated metric regresses when it falls.
LOWER_IS_BETTER = frozenset(
    {"false_abstention_rate", "invalid_citations", "errors", "latency_p50_ms", "latency_p95_ms"}
)
# Gated at zero whatever the baseline says: an invalid citation or a crash is a bug, not a trade-off.
MUST_BE_ZERO = ("invalid_citations", "errors")
# Baselines store six decimals; a value equal to its baseline must not fail on the rounding.
ROUNDING = 1e-6
# Headline metrics in the order tables and charts show them.
HEADLINE = (
    "pass_rate",
    "answer_match",
    "evidence_match",
    "hit_at_1",
    "hit_at_5",
    "mrr",
    "abstention_rate",
    "false_abstention_rate",
    "citation_validity",
    "invalid_citations",
    "errors",
    "latency_p50_ms",
    "latency_p95_ms",
)
# The in-process benchmarks `citeqa eval` can add (evals/squad.py): the key of each one's section in the
# report and the baseline, its title, and what it asks.
BENCHMARKS = {
    "squad": (
        "SQuAD benchmark",
        "questions of the vendored SQuAD 2.0 split's evaluation articles, each paragraph a document "
        "(`python -m evals.squad`)",
    ),
    "natural": (
        "Natural-question benchmark",
        "search-engine questions of QED dev (Natural Questions), half of its articles indexed, each paragraph "
        "a document titled by its article; the unanswerable ones are the other half's, off-corpus "
        "(`python -m evals.squad --natural`)",
    ),
}
# Their figures, in table order; shared names mean the same as above.
SQUAD_HEADLINE = (
    "hit_at_1",
    "hit_at_5",
    "mrr",
    "answer_contains_gold",
    "first_citation_contains_gold",
    "abstention_rate",
    "false_abstention_rate",
    "invalid_citations",
    "errors",
    "latency_p50_ms",
    "latency_p95_ms",
)
# Absolute tolerances: two points on rates (about two questions of the 92); latency is not gated (None)
# because CI machines differ several-fold in speed, so it is charted but never fails a build.
DEFAULT_TOLERANCE: dict[str, float | None] = {
    "pass_rate": 0.02,
    "answer_match": 0.02,
    "evidence_match": 0.02,
    "hit_at_1": 0.02,
    "hit_at_5": 0.02,
    "mrr": 0.02,
    "abstention_rate": 0.02,
    "false_abstention_rate": 0.02,
    "citation_validity": 0.0,
    "invalid_citations": 0.0,
    "errors": 0.0,
    "latency_p50_ms": None,
    "latency_p95_ms": None,
}


# Two points on a sample of 400 or more is eight questions: a real change, not one question flipping.
SQUAD_TOLERANCE: dict[str, float | None] = {
    k: None if k.endswith("_ms") else 0.0 if k in MUST_BE_ZERO else 0.02 for k in SQUAD_HEADLINE
}


def _search(pattern: Pattern, text: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.search(text) is not None
    return re.search(pattern, text, re.I) is not None


def matches_all(patterns: Iterable[Pattern], text: str) -> bool:
    """True when every pattern is found in the text (case-insensitive); vacuously true for no patterns."""
    return all(_search(p, text) for p in patterns)


def matches_any_quote(pattern: Pattern, quotes: Iterable[str]) -> bool:
    """True when some quote contains the pattern (case-insensitive); false for no quotes."""
    return any(_search(pattern, q) for q in quotes)


def first_relevant_rank(pattern: Pattern, texts: Sequence[str]) -> int | None:
    """The 1-based rank of the first text the pattern is found in, or None when none is relevant."""
    return next((i for i, text in enumerate(texts, 1) if _search(pattern, text)), None)


def hit_at_k(relevant_ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose first relevant result is in the top k; 0.0 for no queries."""
    if not relevant_ranks:
        return 0.0
    return sum(1 for r in relevant_ranks if r is not None and r <= k) / len(relevant_ranks)


def mrr(relevant_ranks: Sequence[int | None]) -> float:
    """Mean reciprocal rank of the first relevant result (0 when there is none); 0.0 for no queries."""
    if not relevant_ranks:
        return 0.0
    return sum(1.0 / r for r in relevant_ranks if r) / len(relevant_ranks)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation, as numpy's default; 0.0 for no values."""
    if not values:
        return 0.0
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0-100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def citation_valid(text: str | None, start: int, end: int, quote: str) -> bool:
    """The offset invariant: the document exists, the offsets lie inside it and `text[start:end] == quote`."""
    if text is None or not 0 <= start <= end <= len(text):
        return False
    return text[start:end] == quote


def rate(flags: Iterable[bool]) -> float | None:
    """Share of true flags, or None when there are none to count."""
    items = list(flags)
    return sum(items) / len(items) if items else None


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every metric over a set of per-question results (see evals.run.score for their fields)."""
    answerable = [r for r in results if not r["unanswerable"]]
    unanswerable = [r for r in results if r["unanswerable"]]
    ranks = [r["relevant_rank"] for r in answerable]
    cited = sum(r["citations"] for r in results)
    invalid = sum(r["invalid_citations"] for r in results)
    latencies = [r["latency_ms"] for r in results if r["latency_ms"] is not None]
    return {
        "questions": len(results),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "passed": sum(r["passed"] for r in results),
        "pass_rate": rate(r["passed"] for r in results),
        "answer_match": rate(r["answer_match"] for r in answerable),
        "evidence_match": rate(r["evidence_match"] for r in answerable),
        "hit_at_1": hit_at_k(ranks, 1) if ranks else None,
        "hit_at_5": hit_at_k(ranks, 5) if ranks else None,
        "mrr": mrr(ranks) if ranks else None,
        "abstention_rate": rate(r["abstained"] for r in unanswerable),
        "false_abstention_rate": rate(r["abstained"] for r in answerable),
        "citations": cited,
        "citation_validity": (cited - invalid) / cited if cited else None,
        "invalid_citations": invalid,
        "errors": sum(r["error"] is not None for r in results),
        "latency_p50_ms": percentile(latencies, 50) if latencies else None,
        "latency_p95_ms": percentile(latencies, 95) if latencies else None,
    }


def by_tag(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same metrics for the questions carrying each tag, tags in alphabetical order."""
    tags = sorted({t for r in results for t in r["tags"]})
    return {t: summarize([r for r in results if t in r["tags"]]) for t in tags}


@dataclass
class Check:
    """One gated metric compared with its baseline."""

    metric: str
    value: float | None
    baseline: float | None
    tolerance: float | None
    ok: bool
    # Which run the metric belongs to: "" for the question set, else a key of BENCHMARKS.
    corpus: str = ""

    def describe(self) -> str:
        """A line saying what was compared and how it came out."""
        name = f"{self.corpus}.{self.metric}" if self.corpus else self.metric
        if self.metric in MUST_BE_ZERO and self.baseline is None:
            return f"{name} = {self.value:g} (must be 0)"
        sign = "+" if self.metric in LOWER_IS_BETTER else "-"
        value, base = fmt(self.value, self.metric), fmt(self.baseline, self.metric)
        return f"{name} = {value} vs baseline {base} {sign} {self.tolerance:g}"


def gate(
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any],
    tolerance: Mapping[str, float | None],
    corpus: str = "",
) -> list[Check]:
    """Compare metrics with the baseline; metrics with no tolerance (latency) or no baseline are not gated."""
    checks: list[Check] = []
    for name in MUST_BE_ZERO:
        value = metrics.get(name) or 0
        checks.append(Check(name, value, None, 0.0, value == 0, corpus))
    for name, tol in tolerance.items():
        value, base = metrics.get(name), baseline.get(name)
        if tol is None or base is None or name in MUST_BE_ZERO:
            continue
        if value is None:
            ok = False
        elif name in LOWER_IS_BETTER:
            ok = value <= base + tol + ROUNDING
        else:
            ok = value >= base - tol - ROUNDING
        checks.append(Check(name, value, base, tol, ok, corpus))
    return checks


def fmt(value: Any, name: str = "") -> str:
    """A metric value for a table: latency in whole ms, counts as integers, rates to three places."""
    if value is None:
        return "—"
    if name.endswith("_ms"):
        return f"{value:.0f} ms"
    if isinstance(value, bool | int):
        return str(int(value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)
