"""Fitting the ranking and evidence constants: `python -m evals.squad --fit` prints them under the names
models/reader/params.json gives them, where they are read from. FRAME_PENALTY and
CHUNK_COVERAGE_WEIGHT on the SQuAD calibration articles' questions; the reader's rank weights on those and
the natural questions of evals/data/qed-fit.json.

CHUNK_COVERAGE_WEIGHT orders sentences only, so it comes from a listwise logistic regression (a softmax
over each answerable question's candidate sentences, with the target spread evenly over the sentences
that contain a gold answer) of two features: the sentence's score and its chunk's IDF-weighted coverage
of the question's terms; the constant is the coverage weight relative to the score's. The reader's rank
weights are fitted listwise too, over the candidates the reader scores. FRAME_PENALTY changes the score,
which also decides abstention, so it comes from a pointwise logistic regression over every candidate of
every question, unanswerable ones included. Newton's method in numpy: deterministic for a given sample.
"""

from typing import Any

import numpy as np

from app.qa.retrieve import FRAME_PENALTY, retrieve
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot
from evals.split import holds_answer

# Ridge penalty on the standardised weights: enough to keep Newton's steps finite, too little to matter.
L2 = 1e-2
# The bound on false abstention citeqa aims for on the calibration articles: the abstention threshold
# (--calibrate, the reader off) and the answer threshold, the read floor's share included, are set to it.
TARGET_FALSE_ABSTENTION = 0.05
# The false-abstention shares at which --fit also reports the abstention it would buy.
CURVE = (0.05, 0.10, 0.20)


def examples(
    snapshot: Snapshot, embedder: Embedder, settings: Settings, items: list[dict[str, Any]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per question with a gold sentence among its candidates: (score, chunk coverage) rows of every sentence
    retrieval scores, and labels."""
    out = []
    for item in items:
        sentences = retrieve(snapshot, embedder, item["question"], settings).sentences
        labels = np.array(
            [
                snapshot.doc_list[ev.doc].doc_id == item["doc_id"]
                and holds_answer(snapshot.doc_list[ev.doc].text[ev.start : ev.end], item["answers"])
                for ev in sentences
            ],
            dtype=float,
        )
        if labels.any():
            out.append((np.array([(ev.score, ev.coverage) for ev in sentences]), labels))
    return out


def rank_weights(groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Listwise logistic regression: the feature weights under which each question's gold sentences rank first."""
    stacked = np.vstack([x for x, _ in groups])
    mean, scale = stacked.mean(0), stacked.std(0) + 1e-9
    standard = [((x - mean) / scale, y / y.sum()) for x, y in groups]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        value, grad, hess = 0.5 * L2 * float(w @ w), L2 * w, L2 * np.eye(len(w))
        for z, target in standard:
            s = z @ w
            log_total = s.max() + np.log(np.exp(s - s.max()).sum())
            p = np.exp(s - log_total)
            value += log_total - float(target @ s)
            mean_z = p @ z
            grad = grad + mean_z - target @ z
            hess = hess + (z * p[:, None]).T @ z - np.outer(mean_z, mean_z)
        return value, grad, hess

    # Newton's method with backtracking: the loss is convex, so this converges to its one minimum.
    w = np.zeros(stacked.shape[1])
    value, grad, hess = loss(w)
    for _ in range(100):
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            new = loss(w - t * step)
            if new[0] <= value - 1e-4 * t * float(grad @ step) or t < 1e-8:
                break
            t /= 2
        w = w - t * step
        converged = value - new[0] < 1e-10
        value, grad, hess = new
        if converged:
            break
    return w / scale


def fit(groups: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The fitted weights and the constant they give."""
    w = rank_weights(groups)
    return {
        "questions": len(groups),
        "score_weight": round(float(w[0]), 4),
        "coverage_weight": round(float(w[1]), 4),
        "chunk_coverage_weight": round(float(w[1] / w[0]), 2),
    }


def candidate_examples(
    snapshot: Snapshot,
    embedder: Embedder,
    settings: Settings,
    items: list[dict[str, Any]],
    floor: float = -np.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every evidence candidate of every question (the first `read_budget` that offer the asked-for kind and
    score at least `floor`: none for the rank, fitted on all of them as the candidate figures count them;
    the read floor for the confidence, as the answer path reads them):
    (hybrid score, unframed, reader logit, chunk coverage) rows, whether it holds a gold answer (never, for
    an unanswerable question), and the number of its question."""
    from app.qa.read import get_reader, scored

    reader = get_reader(settings.reader_dir)
    rows, labels, question = [], [], []
    for number, item in enumerate(items):
        found = retrieve(snapshot, embedder, item["question"], settings)
        for ev, text, logit in scored(reader, snapshot, [found], settings.read_budget, floor)[0]:
            rows.append((ev.score, float(not ev.framed), logit, ev.coverage))
            labels.append(
                snapshot.doc_list[ev.doc].doc_id == item["doc_id"] and holds_answer(text, item["answers"])
            )
            question.append(number)
    return np.array(rows), np.array(labels, dtype=float), np.array(question)


def logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pointwise logistic regression of y on the columns of x and an intercept (last); Newton's method."""
    z = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(z.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + L2 * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + L2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def fit_frame(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """FRAME_PENALTY: the unframed weight relative to the score's, fitted pointwise on the score before the
    penalty over every candidate (x as candidate_examples gives it). It moves the score, and with it
    abstention, so it is fitted on the calibration articles alone."""
    raw = x[:, 0] + FRAME_PENALTY * x[:, 1]
    frame = logistic(np.column_stack([raw, x[:, 1]]), y)
    return {"candidates": len(y), "frame_penalty": round(float(-frame[1] / frame[0]), 2)}


def fit_answer(
    x: np.ndarray, y: np.ndarray, question: np.ndarray, calibration: tuple[int, int], floor: float
) -> dict[str, Any]:
    """The confidence (app/qa/read.py ANSWER_WEIGHTS): a pointwise logistic regression of whether a candidate
    holds a gold answer on its reader logit, score, unframed flag and chunk coverage, over every candidate (x
    as candidate_examples gives it). Its threshold comes from the calibration questions, numbered first in
    `question`: `calibration` is (answerable, all), the answerable ones first. A question answers when a
    candidate scoring at least `floor` reaches the threshold."""
    z = x[:, [2, 0, 1, 3]]
    w = logistic(z, y)
    conf = 1 / (1 + np.exp(-(z @ w[:4] + w[4])))
    answerable, total = calibration
    best = np.zeros(total)
    for n in range(total):
        mine = (question == n) & (x[:, 0] >= floor)
        best[n] = conf[mine].max() if mine.any() else 0.0
    pos, neg = np.sort(best[:answerable]), best[answerable:]

    def at(share: float) -> float:
        # The highest threshold letting through all but `share` of the answerable questions.
        return float(max(pos[min(len(pos) - 1, int(share * len(pos)))], 1e-6))

    threshold = at(TARGET_FALSE_ABSTENTION)
    names = ("reader", "hybrid", "frame", "coverage", "intercept")
    return {
        "answer_candidates": len(y),
        "answer_weights": {name: round(float(v), 4) for name, v in zip(names, w, strict=True)},
        "answer_threshold": round(threshold, 4),
        "answer_curve": {
            f"{share:.2f}": {
                "threshold": round(at(share), 4),
                "false_abstention": round(float(np.mean(pos < at(share))), 3),
                "abstention": round(float(np.mean(neg < at(share))), 3),
            }
            for share in CURVE
        },
    }


def fit_rank(x: np.ndarray, y: np.ndarray, question: np.ndarray) -> dict[str, Any]:
    """The reader's rank (app/qa/read.py RANK_WEIGHTS) on its logit, the score, the unframed
    flag and the chunk coverage, listwise over each question whose candidates hold a gold answer."""
    ranked = [(x[question == n][:, [2, 0, 1, 3]], y[question == n]) for n in np.unique(question)]
    rank = rank_weights([(z, t) for z, t in ranked if t.any()])
    return {
        "rank_questions": sum(bool(t.any()) for _, t in ranked),
        "rank_weights": {
            name: round(float(w), 3)
            for name, w in zip(("reader", "hybrid", "frame", "coverage"), rank, strict=True)
        },
    }
