"""The reader: citeqa's own cross-encoder, which scores how well each sentence answers a question.

Trained by `make reader` (app/train.py) and committed under models/reader/ as an int8 ONNX graph; run by
ONNX Runtime on one thread per call, so concurrent requests use the cores side by side.
"""

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelUnavailable
from app.index import Snapshot
from app.retrieve import Evidence, Retrieval

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "reader"
# Question plus sentence, in word pieces, in training (app/train.py) and here; a sentence longer than that
# is cut, its start kept.
MAX_TOKENS = 96
# The evidence score is the probability that a sentence holds the answer, from the reader's logit, the
# hybrid score (the sentence alone cannot tell what "it" is; the hybrid score knows its chunk) and whether
# the question's names leave the sentence unframed (the hybrid score's FRAME_PENALTY is sized for the
# default evidence; this weighs the flag again beside the reader): a logistic regression fitted on every
# reader candidate of the SQuAD calibration articles' questions, unanswerable ones included
# (`python -m evals.squad --fit`).
READER_WEIGHT = 0.66
HYBRID_WEIGHT = 2.44
FRAME_WEIGHT = -1.086
BIAS = -2.809
# Sentences scored per question when the reader is on (CITEQA_READ_BUDGET): on the SQuAD calibration
# articles the evidence score picks an answer sentence first as often from the best 4 or 8 by the hybrid
# rank as from 16, at half or a quarter of the cost; 8 keeps more of the question set's answers in reach.
BUDGET = 8
# The abstention threshold for that evidence score (CITEQA_ABSTAIN_THRESHOLD with the reader on), set as the
# default one is (app/settings.py): `CITEQA_READ_BUDGET=8 python -m evals.squad --calibrate`.
ABSTAIN_THRESHOLD = 0.040
# Pairs run together in one call of the model (see Reader.score).
GROUP = 4


class Reader:
    """Scores (question, sentence) pairs: the probability that the sentence answers the question."""

    def __init__(self, model_file: Path, tokenizer_file: Path, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        if not model_file.is_file() or not tokenizer_file.is_file():
            raise ModelUnavailable(f"the reader model is missing from {model_file.parent}; run `make reader`")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(MAX_TOKENS, strategy="longest_first")
        self._tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged file
            raise ModelUnavailable(f"the reader model {model_file} cannot be loaded: {exc}") from exc

    def score(self, question: str, sentences: list[str]) -> np.ndarray:
        """One probability per sentence, in the order given."""
        out = np.zeros(len(sentences), dtype=np.float32)
        if not sentences:
            return out
        encodings = self._tokenizer.encode_batch([(question, s) for s in sentences])
        # Shortest first, in small groups: each group pads only to its own longest pair, and padding is
        # most of the cost of one big batch of mixed lengths.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for lo in range(0, len(order), GROUP):
            rows = order[lo : lo + GROUP]
            width = len(encodings[rows[-1]].ids)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for j, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[j, :n] = encodings[i].ids
                types[j, :n] = encodings[i].type_ids
                mask[j, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[rows] = np.asarray(self._session.run(None, feed)[0], dtype=np.float32).reshape(-1)
        return out


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


def to_read(found: Retrieval, budget: int) -> list[Evidence]:
    """The best `budget` sentences by the hybrid rank among those that offer the asked-for kind."""
    return [ev for ev in found.sentences if ev.offers][:budget]


def read(reader: Reader, snapshot: Snapshot, found: Retrieval, budget: int) -> None:
    """Score the sentences `to_read` picks with the reader and turn each into its evidence score (see
    READER_WEIGHT); the rest drop out, since only what the reader judged may be cited."""
    started = time.perf_counter()
    pool = to_read(found, budget)
    texts = [snapshot.doc_list[ev.doc].text[ev.start : ev.end] for ev in pool]
    for ev, logit in zip(pool, logits(reader.score(found.query, texts)), strict=True):
        evidence = READER_WEIGHT * logit + HYBRID_WEIGHT * ev.score + FRAME_WEIGHT * (not ev.framed) + BIAS
        ev.score = ev.rank = float(1 / (1 + np.exp(-evidence)))
    found.sentences = sorted(pool, key=lambda ev: -ev.score)
    found.timings_ms["read"] = (time.perf_counter() - started) * 1000
