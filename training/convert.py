"""A float, trainable copy of the packaged int8 reranker: its ONNX graph's weights in a transformers BERT.

The graph is BERT quantised dynamically: each Linear is a MatMulInteger of its input, rounded to uint8 per
call, with an int8 weight laid out (in, out); the three embedding tables are uint8, gathered then
dequantised. Every weight is recovered as (integer - zero_point) * scale, with one scale per tensor. LayerNorms and biases are float initializers already named as
in transformers.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.weights import check, pretrained_dir

if TYPE_CHECKING:
    import onnx
    from transformers import BertForSequenceClassification


def dequantised(inits: dict[str, np.ndarray], quantized: str) -> np.ndarray:
    """The float tensor behind a quantised initializer: (integer - zero_point) * scale."""
    base = quantized.removesuffix("_quantized")
    scale, zero = inits[base + "_scale"], inits[base + "_zero_point"]
    return ((inits[quantized].astype(np.int32) - zero.astype(np.int32)) * scale).astype(np.float32)


def _linears(graph: "onnx.GraphProto", inits: dict[str, np.ndarray]) -> dict[str, str]:
    """Each Linear's transformers name by its quantised weight initializer, found through the bias it adds."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    out = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        # The product is cast to float, scaled, then added to the bias: the Add whose other input is a
        # `<linear>.bias` initializer names the Linear (most weights are named only onnx::MatMul_<n>).
        value, bias = node.output[0], None
        for _ in range(4):
            (nxt,) = users[value]
            named = [n for n in nxt.input if n.endswith(".bias") and n in inits]
            if nxt.op_type == "Add" and named:
                bias = named[0]
                break
            value = nxt.output[0]
        if bias is None:
            raise ValueError(f"no bias follows {node.name}: the graph is not the expected quantised BERT")
        out[node.input[1]] = bias.removesuffix(".bias")
    return out


def _heads(graph: "onnx.GraphProto", constants: dict[str, np.ndarray]) -> int:
    """Attention heads: the query's reshape to (batch, length, heads, head size) in the first layer."""
    made = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        source = made.get(node.input[0]) if node.op_type == "Reshape" else None
        if source and "bert.encoder.layer.0.attention.self.query.bias" in source.input:
            # The shape is a Concat of (batch, -1, heads, head size), the last two constants.
            shape = made[node.input[1]]
            return int(constants[shape.input[2]].reshape(-1)[0])
    raise ValueError("no query reshape in the graph")


def float_model(path: Path | None = None) -> "BertForSequenceClassification":
    """The model of the graph at path (default: the packaged one, checked) as a float BERT, in eval mode."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertForSequenceClassification

    graph = onnx.load(str(path if path is not None else check(pretrained_dir() / "model.onnx"))).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }

    state: dict[str, np.ndarray] = {}
    # LayerNorm weights and every bias: float initializers under their transformers names.
    for name, value in inits.items():
        if value.dtype == np.float32 and value.ndim and not name.startswith("onnx::"):
            state[name] = value
    # Embedding tables keep their names with a _quantized suffix and are laid out as torch's (rows, hidden).
    for name in inits:
        if name.startswith("bert.embeddings.") and name.endswith("_quantized"):
            state[name.removesuffix("_quantized")] = dequantised(inits, name)
    # A MatMul weight is (in, out); torch's Linear holds (out, in).
    for weight, linear in _linears(graph, inits).items():
        state[linear + ".weight"] = dequantised(inits, weight).T

    words = state["bert.embeddings.word_embeddings.weight"]
    layers = {name.split(".")[3] for name in state if name.startswith("bert.encoder.layer.")}
    config = BertConfig(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_hidden_layers=len(layers),
        num_attention_heads=_heads(graph, constants),
        intermediate_size=state["bert.encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["bert.embeddings.token_type_embeddings.weight"].shape[0],
        # The graph's activation is erf GELU and its LayerNorm epsilon 1e-12: BertConfig's defaults.
    )
    # Set after construction: BertConfig's typed signature leaves the generic num_labels out.
    config.num_labels = state["classifier.bias"].shape[0]
    model = BertForSequenceClassification(config)
    # strict: every parameter must come from the graph, and every tensor taken must have a place.
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return model.eval()
