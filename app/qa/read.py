"""The reader: a cross-encoder (ms-marco-MiniLM-L-12-v2 fine-tuned by citeqa) that scores how well each
sentence answers a question, for the rank and for each read sentence's confidence.

Trained by `make reader` (training/train.py) and committed under models/reader/ as an int8 ONNX graph; run by
ONNX Runtime one pair at a time, over two one-thread sessions for a call that finds the reader idle and on
one for a call that overlaps another (Lanes).
"""

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelUnavailable
from app.qa.retrieve import Evidence, Retrieval
from app.settings import READER_DIR, fitted
from app.store.embed import ort_session
from app.store.index import Snapshot

MODEL_DIR = READER_DIR
# Question plus title and sentence (see reads), in word pieces, in training (training/train.py) and here; a
# sentence longer than that is cut, its start kept.
MAX_TOKENS = 96
# The rank of a read sentence: a linear blend of the reader's logit, the hybrid score, whether the question's
# names leave it unframed, and its chunk's coverage of the question (fitted: models/reader/params.json).
RANK_WEIGHTS = fitted()["rank_weights"]
# A read sentence's confidence, the probability that it answers: a logistic blend of the same four features
# and an intercept (fitted: models/reader/params.json).
ANSWER_WEIGHTS = fitted()["answer_weights"]
# Words of a document's title the reader reads before each of its sentences (see reads).
TITLE_WORDS = 6
# Sessions a call that finds the reader idle spreads its pairs over, one thread each (Lanes): two cut 8 pairs
# from about 62 ms to 38.7 ms here, and an overlapping call takes one, so concurrent clients keep throughput.
IDLE_LANES = 2


class Lanes:
    """Sessions of one model, one thread each: a call that finds the model idle takes all of them, a call
    that overlaps another the first alone. Each pair runs alone on one session, and ONNX Runtime gives the
    same numbers on any, so no result depends on the load."""

    def __init__(self, model_file: Path) -> None:
        self.sessions: list[Any] = [ort_session(model_file, 1) for _ in range(IDLE_LANES)]
        self.helpers = ThreadPoolExecutor(max(1, IDLE_LANES - 1), thread_name_prefix="citeqa-reader")
        self._lock = threading.Lock()
        self._running = 0

    @contextmanager
    def session(self) -> Iterator[list[Any]]:
        """The sessions for one call."""
        with self._lock:
            alone = not self._running
            self._running += 1
        try:
            yield self.sessions if alone else self.sessions[:1]
        finally:
            with self._lock:
                self._running -= 1


class Reader:
    """Scores (question, sentence) pairs: the probability that the sentence answers the question."""

    def __init__(self, model_file: Path, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        if not model_file.is_file() or not tokenizer_file.is_file():
            raise ModelUnavailable(f"the reader model is missing from {model_file.parent}; run `make reader`")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(MAX_TOKENS, strategy="longest_first")
        self._tokenizer.no_padding()
        try:
            self.lanes = Lanes(model_file)
        except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged file
            raise ModelUnavailable(f"the reader model {model_file} cannot be loaded: {exc}") from exc

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One probability per (question, sentence) pair, in the order given.

        Each pair runs alone: the int8 graph quantises its activations over the whole batch, so batched
        with others (and their padding) a pair's logit moved by up to 0.4, and a sentence's rank depended on
        which others were read with it. For the one or two pairs a question has above a high floor
        (see read) it costs what groups did; 8, spread over two sessions, cost about a quarter less."""
        # A pair given twice (one sentence in two documents whose titles start alike) is run once.
        slot: dict[tuple[str, str], int] = {}
        where = [slot.setdefault(pair, len(slot)) for pair in pairs]
        distinct = list(slot)
        out = np.zeros(len(distinct), dtype=np.float32)
        if not distinct:
            return out
        encodings = self._tokenizer.encode_batch(distinct)
        # Longest first, each session taking the next pair as it comes free, so the sessions finish close
        # together.
        order = iter(sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids)))
        taking = threading.Lock()

        def run(session: Any) -> None:
            while True:
                with taking:
                    i = next(order, None)
                if i is None:
                    return
                feed = {
                    "input_ids": np.array([encodings[i].ids], dtype=np.int64),
                    "attention_mask": np.ones((1, len(encodings[i].ids)), dtype=np.int64),
                    "token_type_ids": np.array([encodings[i].type_ids], dtype=np.int64),
                }
                out[i] = float(np.asarray(session.run(None, feed)[0]).reshape(-1)[0])

        with self.lanes.session() as sessions:
            # This thread runs the first session while helpers run the rest.
            used = sessions[: min(len(sessions), len(encodings))]
            rest = [self.lanes.helpers.submit(run, session) for session in used[1:]]
            try:
                run(used[0])
            finally:
                # The helpers finish before the sessions are given back, and their errors are raised here.
                wait(rest)
            for done in rest:
                done.result()
        return out[where]


def reads(title: str, sentence: str) -> str:
    """What the reader reads of a sentence, in training and in use: its document's title, then the sentence.
    A sentence alone cannot tell what "it" or "the council" is; the title says what the document is about."""
    words = title.split()[:TITLE_WORDS]
    return f"{' '.join(words)} [SEP] {sentence}" if words else sentence


def get_reader(model_dir: Path | None = None) -> Reader:
    """The process-wide reader for a model folder (default: the committed one), loaded once."""
    return _reader((model_dir or MODEL_DIR).resolve())


@lru_cache
def _reader(model_dir: Path) -> Reader:
    return Reader(model_dir / "reader.onnx", model_dir / "tokenizer.json")


def logits(probabilities: np.ndarray) -> np.ndarray:
    """The reader's probabilities back on its logit scale, kept finite."""
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def to_read(found: Retrieval, budget: int, floor: float = -math.inf) -> list[Evidence]:
    """The best `budget` sentences by the hybrid rank among those that offer the asked-for kind and score at
    least `floor`."""
    return [ev for ev in found.sentences if ev.offers and ev.score >= floor][:budget]


def texts_of(snapshot: Snapshot, pool: list[Evidence]) -> list[tuple[str, str]]:
    """Each sentence's text, and what the reader reads of it (see reads)."""
    out = []
    for ev in pool:
        doc = snapshot.doc_list[ev.doc]
        text = doc.text[ev.start : ev.end]
        out.append((text, reads(doc.title, text)))
    return out


def scored(
    reader: Reader, snapshot: Snapshot, founds: list[Retrieval], budget: int, floor: float = -math.inf
) -> list[list[tuple[Evidence, str, float]]]:
    """For each retrieval, the sentences `to_read` picks, each with its text and the reader's logit for the
    retrieval's query; the sentences of all of them are read in one call, spread over the sessions."""
    pools = [to_read(found, budget, floor) for found in founds]
    texts = [texts_of(snapshot, pool) for pool in pools]
    pairs = [(found.query, read_as) for found, ts in zip(founds, texts, strict=True) for _, read_as in ts]
    flat = iter(logits(reader.score(pairs)).tolist())
    return [
        [(ev, text, next(flat)) for ev, (text, _) in zip(pool, ts, strict=True)]
        for pool, ts in zip(pools, texts, strict=True)
    ]


def features(ev: Evidence, logit: float) -> dict[str, float]:
    """What the rank and the confidence weigh: the reader's logit, the hybrid score, whether the question's
    names leave the sentence unframed, and its chunk's coverage of the question."""
    return {"reader": logit, "hybrid": ev.score, "frame": float(not ev.framed), "coverage": ev.coverage}


def confidence(values: dict[str, float]) -> float:
    """The probability that a read sentence answers (ANSWER_WEIGHTS over its features)."""
    z = ANSWER_WEIGHTS["intercept"] + sum(ANSWER_WEIGHTS[name] * v for name, v in values.items())
    return float(1 / (1 + math.exp(-min(max(z, -50.0), 50.0))))


def read(reader: Reader, snapshot: Snapshot, founds: list[Retrieval], budget: int, floor: float) -> None:
    """Score the sentences `to_read` picks from each retrieval (a coordinated question's parts are read
    together) and put them first, ranked by the reader (see RANK_WEIGHTS), each with its confidence (see
    ANSWER_WEIGHTS); the others follow in the hybrid rank. Every score stays as retrieval gave it, so a
    sentence the reader did not see may still join an answer as support or be shown as closest material.

    `floor` is the read floor (Settings.read_floor): a sentence scoring below it may not be quoted, so
    it is not read and does not take a place in the budget; the budget goes to those that may be quoted."""
    started = time.perf_counter()
    pools = scored(reader, snapshot, founds, budget, floor)
    for found, pool in zip(founds, pools, strict=True):
        for ev, _, logit in pool:
            values = features(ev, logit)
            ev.rank = float(sum(RANK_WEIGHTS[name] * v for name, v in values.items()))
            ev.confidence = confidence(values)
        read_rows = {ev.row for ev, _, _ in pool}
        found.sentences = sorted((ev for ev, _, _ in pool), key=lambda ev: -ev.rank) + [
            ev for ev in found.sentences if ev.row not in read_rows
        ]
    # One call read them all; its time counts once, on the first.
    elapsed = (time.perf_counter() - started) * 1000
    for k, found in enumerate(founds):
        found.timings_ms["read"] = 0.0 if k else elapsed
