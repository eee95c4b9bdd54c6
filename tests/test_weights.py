"""The pretrained reader to fine-tune: the packaged graph is the pinned file, and its float copy scores as it does."""

import copy
import shutil

import numpy as np
import pytest

from app.errors import ModelUnavailable
from training.convert import float_model
from training.weights import SHA256, check, encode, model_file, pretrained_dir, tokenizer

# A question with its answer, then the same question with a sentence on its subject that does not answer
# it: logits from about -11 to +10, so that rank order and correlation mean something.
PAIRS = [
    ("How many people live in Berlin?", "Berlin has a population of about 3.7 million people."),
    ("How many people live in Berlin?", "Berlin is known for its museums and nightlife."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("What is the capital of France?", "France is famous for its wine and cheese."),
    ("When did the inspection take place?", "The inspectors visited the council on 22 March 2018."),
    ("When did the inspection take place?", "The inspection report was critical of the council."),
    ("Which river flows through the old town?", "The River Calder flows through the old town."),
    ("Which river flows through the old town?", "The town hall was rebuilt in 1890 after a fire."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice is a novel by Jane Austen, published in 1813."),
    ("Who wrote Pride and Prejudice?", "The novel has been adapted for film and television many times."),
    ("How tall is Mount Everest?", "Mount Everest rises 8,849 metres above sea level."),
    ("How tall is Mount Everest?", "Climbers usually attempt Everest in May."),
    ("What does the reader model score?", "The reader scores each question and sentence pair for relevance."),
    ("What does the reader model score?", "Bananas are rich in potassium."),
    (
        "Why was the children's service rated inadequate?",
        "Children at risk were left without help for weeks.",
    ),
    ("Why was the children's service rated inadequate?", "The council's offices are in the town centre."),
]
# Measured on these pairs: the float copy's logits differ from the int8 graph's by at most 0.48 (mean 0.16),
# all of it the graph's rounding of activations to 8 bits (test_the_first_layer_is_exact). A wrong mapping
# moves logits by whole units (an untransposed query weight: by up to 14).
TOLERANCE = 0.75
MEAN_TOLERANCE = 0.3


@pytest.fixture(scope="module")
def model():
    return float_model()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The int8 graph's logits, one thread, each pair run alone: it quantises activations over the batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file()), options, providers=["CPUExecutionProvider"])
    tok = tokenizer()
    return np.array([session.run(["logits"], encode(tok, [pair]))[0][0, 0] for pair in PAIRS])


def logits(model) -> np.ndarray:
    """The float copy's logits for PAIRS, in one padded batch."""
    import torch

    feed = {k: torch.from_numpy(v) for k, v in encode(tokenizer(), PAIRS).items()}
    with torch.no_grad():
        return model(**feed).logits[:, 0].numpy()


def test_the_packaged_graph_is_the_pinned_file():
    path = pretrained_dir() / "model.onnx"
    assert check(path) == path == model_file()
    assert {"tokenizer.json", "vocab.txt"} <= {p.name for p in pretrained_dir().iterdir()}


def test_a_changed_copy_fails_the_check(tmp_path):
    copied = shutil.copy(model_file(), tmp_path / "model.onnx")
    with copied.open("r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelUnavailable, match=f"not the pinned file.*expected {SHA256}"):
        check(copied)
    with pytest.raises(ModelUnavailable, match="missing"):
        check(tmp_path / "absent.onnx")


def test_the_tokenizer_does_not_pad_to_512_and_truncates():
    assert len(tokenizer().encode(*PAIRS[0]).ids) < 32
    assert len(tokenizer(16).encode(*PAIRS[8]).ids) == 16
    batch = encode(tokenizer(), PAIRS[:2])
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(axis=1).max()


def test_the_float_copy_is_a_12_layer_minilm(model):
    config = model.config
    shape = (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    )
    assert shape == (12, 384, 12, 1536)
    assert (config.vocab_size, config.max_position_embeddings, config.type_vocab_size, config.num_labels) == (
        30522,
        512,
        2,
        1,
    )
    assert all(p.requires_grad and p.dtype.is_floating_point for p in model.parameters())


def test_the_float_copy_scores_as_the_int8_graph_does(model, reference):
    ours = logits(model)
    assert np.abs(ours - reference).max() < TOLERANCE
    assert np.abs(ours - reference).mean() < MEAN_TOLERANCE
    assert np.corrcoef(ours, reference)[0, 1] > 0.99
    # Rank correlation: a near tie may swap, the order may not otherwise change.
    assert np.corrcoef(np.argsort(np.argsort(ours)), np.argsort(np.argsort(reference)))[0, 1] > 0.99
    # Each answer scores above its question's distractor.
    assert (ours[0::2] > ours[1::2]).all()


def test_the_first_layer_is_exact(model):
    """With the graph's dynamic int8 rounding of each Linear's input reproduced, the embeddings and the first
    layer (all six Linears, both LayerNorms) give the graph's values to float rounding; later layers drift as
    one value rounds the other way and the change spreads."""
    import onnx
    import onnxruntime as ort
    import torch

    def rounded(module, args):
        # DynamicQuantizeLinear: uint8 over the tensor's range (0 included), ties to even.
        x = args[0]
        scale = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
        zero = torch.round(-x.min().clamp(max=0) / scale).clamp(0, 255)
        return ((torch.round(x / scale) + zero).clamp(0, 255) - zero) * scale

    graph = onnx.load(str(model_file()))
    names = [
        "/bert/embeddings/LayerNorm/Add_1_output_0",
        "/bert/encoder/layer.0/output/LayerNorm/Add_1_output_0",
    ]
    graph.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = encode(tokenizer(), [PAIRS[12]])
    hooks = [m.register_forward_pre_hook(rounded) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            ours = model(
                **{k: torch.from_numpy(v) for k, v in feed.items()}, output_hidden_states=True
            ).hidden_states
    finally:
        for hook in hooks:
            hook.remove()
    for theirs, mine in zip(session.run(names, feed), ours[:2], strict=True):
        assert np.abs(theirs - mine.numpy()).max() < 1e-4


def test_an_untransposed_weight_fails_the_comparison(model, reference):
    import torch

    wrong = copy.deepcopy(model)
    with torch.no_grad():
        for layer in wrong.bert.encoder.layer:
            query = layer.attention.self.query.weight
            query.copy_(query.T.clone())
    assert np.abs(logits(wrong) - reference).max() > 3 * TOLERANCE
