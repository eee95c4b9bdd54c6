"""The SQuAD benchmark: each paragraph of the vendored split is a document; retrieval and answers are scored.

Run: `python -m evals.squad` (after `make install`). Prints the table and writes evals/reports/squad.json.
The questions come from the evaluation articles only (evals/split.py splits the articles by use).
`--natural` runs the natural-question benchmark instead: QED dev's search-engine questions, half of its
articles indexed, so the other half's questions are off-corpus ones that should abstain (see `natural`).
`--calibrate` instead sweeps the abstention threshold on a disjoint calibration sample; `--fit` fits the
sentence ranker's chunk-coverage weight, FRAME_PENALTY and the reader's rank weights on that same sample and
prints them (see evals/fit.py).
"""

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import BadInput
from app.qa.answer import ask, candidates, passages
from app.qa.retrieve import retrieve
from app.schemas import Answer
from app.settings import Settings
from app.store.embed import get_embedder
from app.store.index import Store
from evals import metrics
from evals.fit import TARGET_FALSE_ABSTENTION
from evals.split import CALIBRATION_ARTICLES, DEV, EVAL_ARTICLES, SQUAD, holds_answer, write_corpus
from ingest.build import ingest

# The vendored files, where training/train.py keeps them apart by use.
SPLIT = SQUAD
NATURAL = DEV
# Natural questions for fitting the reader's rank beside the calibration articles: 628 QED training articles
# none of whose questions the reader trains on, none of them an article of QED dev or the SQuAD split
# (evals/data/README.md says how they were chosen).
NATURAL_FIT = DEV.parent / "qed-fit.json"
# Which half of QED dev's articles the natural-question benchmark indexes: a fixed shuffle of their titles.
NATURAL_SEED = 7
# The best score of a question with no sentence that may answer (below any evidence score).
NO_EVIDENCE = -np.inf


def run(
    settings: Settings, answerable: list[dict[str, Any]], unanswerable: list[dict[str, Any]]
) -> dict[str, Any]:
    """Score retrieval, answers and citations on the given questions."""
    snapshot = Store(settings).open()
    embedder = get_embedder(settings.model_cache)
    ranks: list[int | None] = []
    contains, first_cite, false_abstain, abstained, errors, invalid = 0, 0, 0, 0, 0, 0
    latencies: list[float] = []

    def answer(question: str) -> Answer | None:
        nonlocal errors, invalid
        t = time.perf_counter()
        try:
            result = ask(snapshot, embedder, question, settings)
        except Exception:  # counted and gated like a question-set error, never fatal to the run
            errors += 1
            return None
        latencies.append((time.perf_counter() - t) * 1000)
        for c in result.citations:
            doc = snapshot.docs.get(c.doc_id)
            invalid += not metrics.citation_valid(doc.text if doc else None, c.start, c.end, c.quote)
        return result

    for item in answerable:
        try:
            found = passages(snapshot, embedder, item["question"], settings, 20)
        except Exception:  # a retrieval miss and an error, as in the question set
            errors += 1
            found = []
        docs = list(dict.fromkeys(p.doc_id for p in found))
        ranks.append(docs.index(item["doc_id"]) + 1 if item["doc_id"] in docs else None)
        result = answer(item["question"])
        if result is None or result.abstained:
            false_abstain += result is not None
        else:
            contains += holds_answer(result.answer, item["answers"])
            first_cite += holds_answer(result.citations[0].quote, item["answers"])
    for item in unanswerable:
        result = answer(item["question"])
        abstained += result is not None and result.abstained
    n = len(answerable)
    return {
        "answerable": n,
        "unanswerable": len(unanswerable),
        "hit_at_1": metrics.hit_at_k(ranks, 1),
        "hit_at_5": metrics.hit_at_k(ranks, 5),
        "mrr": metrics.mrr(ranks),
        "answer_contains_gold": contains / max(1, n),
        "first_citation_contains_gold": first_cite / max(1, n),
        "abstention_rate": abstained / max(1, len(unanswerable)),
        "false_abstention_rate": false_abstain / max(1, n),
        "invalid_citations": invalid,
        "errors": errors,
        "latency_p50_ms": metrics.percentile(latencies, 50),
        "latency_p95_ms": metrics.percentile(latencies, 95),
    }


def benchmark(home: Path | None = None) -> dict[str, Any]:
    """Index the split and score the evaluation articles: the figures `citeqa eval --squad` reports and gates.

    Without `home` the index lives in a temporary folder that is deleted afterwards.
    """
    with indexed(home) as (settings, answerable, unanswerable):
        return run(settings, *of_articles(EVAL_ARTICLES, answerable, unanswerable))


def natural(home: Path | None = None) -> dict[str, Any]:
    """Index a fixed half of QED dev's articles, one document per paragraph titled by its article, and ask every
    question: those of the indexed half are answerable, those of the other half are off-corpus and should
    abstain.

    The questions are real search-engine queries (Natural Questions), not written by someone reading the
    paragraph as SQuAD's were; QED dev is held out from the reader's training. `citeqa eval --natural`.
    """
    require(NATURAL)
    titles = sorted({a["title"] for a in json.loads(NATURAL.read_text(encoding="utf-8"))["data"]})
    random.Random(NATURAL_SEED).shuffle(titles)
    half = len(titles) // 2
    with tempfile.TemporaryDirectory(prefix="citeqa-natural-") as tmp:
        home = home or Path(tmp)
        answerable, _ = write_corpus(NATURAL, home / "corpus", titles[:half])
        off_corpus, _ = write_corpus(NATURAL, home / "not-indexed", titles[half:])
        settings = Settings(home=home / "index", corpus=home / "corpus")
        ingest(settings.corpus, settings, get_embedder())
        return run(settings, answerable, off_corpus)


def of_articles(
    articles: tuple[str, ...], answerable: list[dict[str, Any]], unanswerable: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The questions of the named articles only."""
    return (
        [q for q in answerable if q["article"] in articles],
        [q for q in unanswerable if q["article"] in articles],
    )


@contextmanager
def indexed(
    home: Path | None,
) -> Iterator[tuple[Settings, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The whole split indexed in `home` (or a temporary folder deleted afterwards), with its questions.

    Every paragraph is a document, so retrieval searches all of them; the questions asked come from the
    articles the reader never trained on (training/train.py): EVAL_ARTICLES measure, CALIBRATION_ARTICLES
    calibrate and fit.
    """
    with tempfile.TemporaryDirectory(prefix="citeqa-squad-") as tmp:
        yield prepare(home or Path(tmp))


def require(split: Path) -> None:
    """A clear error when a vendored benchmark file is not where the benchmark reads it."""
    if not split.is_file():
        raise BadInput(f"the benchmark data is not at {split}")


def prepare(home: Path) -> tuple[Settings, list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the corpus and index it (reusing `home` when it already holds the index)."""
    require(SPLIT)
    corpus = home / "corpus"
    answerable, unanswerable = write_corpus(SPLIT, corpus)
    settings = Settings(home=home / "index", corpus=corpus)
    ingest(corpus, settings, get_embedder())
    return settings, answerable, unanswerable


def calibrate(
    settings: Settings, answerable: list[dict[str, Any]], unanswerable: list[dict[str, Any]]
) -> None:
    """Print, per threshold, the false-abstention and abstention rates on the calibration sample."""
    snapshot = Store(settings).open()
    embedder = get_embedder()

    def best(item: dict[str, Any]) -> float:
        # The strongest sentence that may answer, since the threshold asks whether any clears it. The reader
        # only orders sentences, so it is not run: the best score is the same with it on or off.
        found = retrieve(snapshot, embedder, item["question"], settings)
        return max((ev.score for ev in candidates(snapshot, found)), default=NO_EVIDENCE)

    pos = np.array([best(q) for q in answerable])
    neg = np.array([best(q) for q in unanswerable])
    # A question with no sentence that may answer abstains whatever the threshold; the percentiles are of
    # the others' best scores, so "p2" is the threshold that itself turns away 2 % of them.
    print(f"answerable with no sentence that may answer: {np.mean(pos == NO_EVIDENCE):.3f}")
    # The highest threshold that keeps false abstention within the target: the answerable score that many
    # questions from the bottom (a threshold equal to a score lets it through).
    t = float(np.sort(pos)[int(TARGET_FALSE_ABSTENTION * len(pos))])
    print(
        f"threshold {t:.3f} (highest with false abstention <= {TARGET_FALSE_ABSTENTION}): false abstention "
        f"{np.mean(pos < t):.3f}, abstention {np.mean(neg < t):.3f}"
    )
    t = settings.abstain_threshold
    print(
        f"threshold {t:.3f} (configured): false abstention {np.mean(pos < t):.3f}, "
        f"abstention {np.mean(neg < t):.3f}"
    )
    for pct in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25):
        t = float(np.percentile(pos[pos > NO_EVIDENCE], pct))
        print(
            f"threshold {t:.3f} (p{pct} of answerable with evidence): false abstention "
            f"{np.mean(pos < t):.3f}, abstention {np.mean(neg < t):.3f}"
        )


def fit_scorer(
    settings: Settings, answerable: list[dict[str, Any]], unanswerable: list[dict[str, Any]]
) -> dict[str, Any]:
    """The sentence ranker's fitted constant (CHUNK_COVERAGE_WEIGHT) on the calibration articles' answerable
    questions and FRAME_PENALTY on all of them; the reader's rank weights (app/qa/read.py) on those and on the
    natural questions of NATURAL_FIT, indexed beside them (`settings.home`'s folder)."""
    from evals.fit import candidate_examples, examples, fit, fit_answer, fit_frame, fit_rank

    embedder = get_embedder()
    snapshot = Store(settings).open()
    x, y, question = candidate_examples(snapshot, embedder, settings, answerable + unanswerable)
    require(NATURAL_FIT)
    home = settings.home.parent / "natural-fit"
    natural_items, _ = write_corpus(NATURAL_FIT, home / "corpus")
    natural_settings = settings.model_copy(update={"home": home / "index", "corpus": home / "corpus"})
    ingest(natural_settings.corpus, natural_settings, embedder)
    xn, yn, qn = candidate_examples(Store(natural_settings).open(), embedder, natural_settings, natural_items)
    asked = len(answerable) + len(unanswerable)
    both = np.vstack([x, xn]), np.concatenate([y, yn]), np.concatenate([question, qn + asked])
    # The confidence is fitted on what the answer path reads: the candidates at or above the read floor.
    floor = settings.read_floor
    xq, yq, qq = candidate_examples(snapshot, embedder, settings, answerable + unanswerable, floor)
    xr, yr, qr = candidate_examples(
        Store(natural_settings).open(), embedder, natural_settings, natural_items, floor
    )
    read = np.vstack([xq, xr]), np.concatenate([yq, yr]), np.concatenate([qq, qr + asked])
    return {
        **fit(examples(snapshot, embedder, settings, answerable)),
        **fit_frame(x, y),
        **fit_rank(*both),
        **fit_answer(*read, (len(answerable), asked), floor),
    }


def main(argv: list[str] | None = None) -> int:
    """Build the SQuAD index, run the sample, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="reuse this folder for the corpus and index")
    parser.add_argument("--calibrate", action="store_true", help="sweep the abstention threshold instead")
    parser.add_argument("--fit", action="store_true", help="fit the sentence ranker's weight instead")
    parser.add_argument("--natural", action="store_true", help="run the natural-question benchmark instead")
    parser.add_argument("--out", type=Path, default=None, help="default: evals/reports/{squad,natural}.json")
    args = parser.parse_args(argv)
    if not (args.fit or args.calibrate):
        figures = natural(args.home) if args.natural else benchmark(args.home)
        args.out = args.out or Path("evals/reports") / ("natural.json" if args.natural else "squad.json")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
        for key, value in figures.items():
            print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
        print(f"written to {args.out}")
        return 0
    if args.fit and not Settings().read_budget:
        print("citeqa: --fit fits the reader's rank too; unset CITEQA_READ_BUDGET=0", file=sys.stderr)
        return 2
    with indexed(args.home) as (settings, answerable, unanswerable):
        calibration = of_articles(CALIBRATION_ARTICLES, answerable, unanswerable)
        if args.fit:
            print(json.dumps(fit_scorer(settings, *calibration)))
        else:
            # Disjoint from the evaluation articles: calibration never sees the questions it is judged on.
            calibrate(settings, *calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
