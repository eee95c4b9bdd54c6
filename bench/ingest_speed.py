"""Ingest wall time against two floors, same texts, same process: a bare `SentenceTransformer.encode` (the
model's reference runtime) and a bare encode by citeqa's own ONNX encoder (what ingest adds beyond encoding)."""

import shutil
import statistics
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.store.embed import Embedder, model_path
from app.store.index import Store
from ingest.build import ingest


@lru_cache
def _sentence_transformer() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path()), device="cpu")


def _bare(texts: list[str]) -> float:
    """Seconds for one bare SentenceTransformer encode with torch's default threads, normalised."""
    model = _sentence_transformer()
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - t0


def _bare_own(embedder: Embedder, texts: list[str]) -> float:
    """Seconds for one bare encode by the encoder ingest uses."""
    t0 = time.perf_counter()
    embedder.encode(texts)
    return time.perf_counter() - t0


def _texts(home: Path, corpus: Path) -> tuple[list[str], list[str], int]:
    """Chunk texts and distinct sentence texts of a built index, and its document count."""
    docs = list(Store(Settings(home=home, corpus=corpus)).open().docs.values())
    chunks = [d.text[s:e] for d in docs for _, s, e, _, _ in d.chunks]
    # Ingest embeds each distinct sentence once and averages them into chunk vectors (ingest/build.py).
    sentences = sorted({d.text[s:e] for d in docs for s, e in d.sentences})
    return chunks, sentences, len(docs)


def measure(corpus: Path, embedder: Embedder, runs: int, work: Path) -> dict[str, Any]:
    """Median of `runs` rounds of (fresh ingest, bare encodes of its chunks and sentences); keeps the last index.

    The measurements alternate round by round, so load from other processes hits them alike; "home" is the
    kept index.
    """
    timings: dict[str, list[float]] = {"ingest": [], "chunks": [], "sentences": [], "own": []}
    # Always fresh folders: Chroma caches its client per path, so a path must never be reused in-process.
    homes = [Path(tempfile.mkdtemp(prefix="home-", dir=work)) for _ in range(runs)]
    for home in homes:
        t0 = time.perf_counter()
        summary = ingest(corpus, Settings(home=home, corpus=corpus), embedder, rebuild=True)
        timings["ingest"].append(time.perf_counter() - t0)
        chunks, sentences, documents = _texts(home, corpus)
        timings["chunks"].append(_bare(chunks))
        timings["sentences"].append(_bare(sentences))
        timings["own"].append(_bare_own(embedder, sentences))
    for home in homes[:-1]:
        shutil.rmtree(home, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "home": homes[-1],
        "documents": documents,
        "chunks": len(chunks),
        "sentences": len(sentences),
        "chunks_embedded": summary.chunks_embedded,
        "runs": runs,
        "ingest_s": round(median["ingest"], 3),
        "ingest_runs_s": [round(x, 3) for x in timings["ingest"]],
        "chunks_per_s": round(len(chunks) / median["ingest"], 1),
        "bare_encode_chunks_s": round(median["chunks"], 3),
        "bare_encode_chunks_runs_s": [round(x, 3) for x in timings["chunks"]],
        "bare_encode_sentences_s": round(median["sentences"], 3),
        "ratio_to_bare": round(median["ingest"] / median["chunks"], 2),
        "ratio_to_bare_sentences": round(median["ingest"] / median["sentences"], 2),
        "own_encode_sentences_s": round(median["own"], 3),
        "ratio_to_own_encode": round(median["ingest"] / median["own"], 2),
    }
