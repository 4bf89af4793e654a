"""Server engines: ONNX Runtime's transformer optimizer, int8 dynamic quantization and fp16 on our graphs.

The model: the tiny 4-layer config with per-layer head counts [0, 3, 4, 2] (layer 0 has no attention
block), FFN widths [64, 64, 5, 0] (layer 3 has no FFN block) and half the hidden dims pruned.
"""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prumux_deploy.compact import compact
from prumux_deploy.export.onnx import export_onnx
from prumux_deploy.export.optimize import (NORMALIZATION_OPS, convert_fp16, expected_fused_ops, op_counts, optimize_onnx,
                                           quantize_int8)

from conftest import VOCAB, masked_model

HEADS, FFN = [0, 3, 4, 2], [64, 64, 5, 0]


def expected(N, for_gpu=False):
    """What the optimizer fuses on this structure (see expected_fused_ops): an EmbedLayerNormalization per
    instance; an Attention per layer with heads (3); a BiasGelu per FFN block (3) and two in the demux; a
    residual LayerNormalization (CPU) or SkipLayerNormalization (GPU) per sub-layer (3 + 3) and the demux's."""
    norm = "SkipLayerNormalization" if for_gpu else "LayerNormalization"
    return dict(sorted({"Attention": 3, "BiasGelu": 5, "EmbedLayerNormalization": N, norm: 7}.items()))


def compact_model(N, task=None):
    model = masked_model(N, task=task)
    masks = dict(model.masks)
    masks["head_z"] = masks["head_z"].clone()
    masks["head_z"][3, :2] = 0  # layer 3 keeps 2 heads
    model.set_masks(masks)
    small = compact(model)
    assert small.config.layer_num_heads == HEADS and small.config.layer_intermediate_size == FFN
    return small


@pytest.fixture(scope="module", params=[2, 5], ids=["N2", "N5"])
def engines(request, tmp_path_factory):
    N = request.param
    model = compact_model(N)
    d = tmp_path_factory.mktemp(f"opt{N}")
    export_onnx(model, d / "plain.onnx")
    fused = optimize_onnx(d / "plain.onnx", d / "opt.onnx")
    return model, d, fused


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(B, S, rng, holes=False, token_types=False):
    ids = rng.integers(0, VOCAB, size=(B, S), dtype=np.int64)
    if holes:  # any 0/1 pattern, not only right padding: the fused Attention gets the raw 2-D mask
        mask = (rng.random((B, S)) > 0.4).astype(np.int64)
        mask[:, 0] = 1
    else:
        mask = (np.arange(S)[None] < rng.integers(1, S + 1, size=B)[:, None]).astype(np.int64)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = (np.arange(S)[None] >= S // 2).repeat(B, 0).astype(np.int64)
    return out


def reference(model, f):
    with torch.no_grad():
        return model(*(torch.from_numpy(v) for v in f.values())).numpy()


def test_fused_op_counts(engines):
    model, d, fused = engines
    N = model.config.num_instances
    assert fused == expected(N) == expected_fused_ops(model.config)
    graph = onnx.load(str(d / "opt.onnx"))
    # every attention keeps its own head count, read from the Q reshape of its layer
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in graph.graph.node
             if n.op_type == "Attention"]
    assert heads == [3, 4, 2]
    counts = op_counts(graph)
    assert "Softmax" not in counts and "Erf" not in counts


def test_embedding_stack_and_mux_become_one_fused_kernel_per_instance(engines):
    model, d, _ = engines
    N = model.config.num_instances
    graph = onnx.load(str(d / "opt.onnx")).graph
    embeds = [n for n in graph.node if n.op_type == "EmbedLayerNormalization"]
    embedded = {e.output[0] for e in embeds}
    readers = [n for n in graph.node if set(n.input) & embedded]
    assert len(embeds) == N and len(readers) == 1  # one Sum of the N instances is the multiplexer
    assert readers[0].op_type == "Sum" and sorted(readers[0].input) == sorted(embedded)
    # the stack it replaced is gone: no table Gather, no mean over instances
    assert not [n for n in graph.node if n.op_type == "Gather" and "embeddings" in n.input[0]]
    assert not [n for n in graph.node if n.op_type == "ReduceMean"]
    # each instance's LayerNorm carries its multiplexer vector: gamma_i = gamma * v_i / N
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    gamma = model.embeddings.ln.weight.detach().numpy()
    vectors = model.mux.vectors.numpy()
    for i, e in enumerate(sorted(embeds, key=lambda n: n.name)):
        np.testing.assert_allclose(values[e.input[5]], gamma * vectors[i] / N, rtol=1e-6)


def test_cpu_graph_is_not_refused_into_skip_layer_norm_at_load(engines, tmp_path):
    """ONNX Runtime's session would fuse a 3-D Add -> LayerNormalization into its slow CPU
    SkipLayerNormalization; CPU engines run every residual block in 2-D (bias in a Gemm, a plain Add), so what
    runs is what we measured."""
    model, d, _ = engines
    blocks = sum(1 for h in model.config.heads_per_layer if h) + sum(1 for w in model.config.ffn_per_layer if w)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "as_loaded.onnx")
    ort.InferenceSession(str(d / "opt.onnx"), options, providers=["CPUExecutionProvider"])
    loaded = op_counts(tmp_path / "as_loaded.onnx")
    assert "SkipLayerNormalization" not in loaded and loaded["LayerNormalization"] == 7
    assert loaded["Gemm"] == blocks


def test_gpu_flavour_keeps_skip_layer_norm(engines, tmp_path):
    model, d, _ = engines
    N = model.config.num_instances
    fused = optimize_onnx(d / "plain.onnx", tmp_path / "gpu.onnx", for_gpu=True)
    assert fused == expected(N, for_gpu=True) == expected_fused_ops(model.config, for_gpu=True)
    f = feeds(5, 11, np.random.default_rng(3))
    assert np.abs(session(tmp_path / "gpu.onnx").run(["logits"], f)[0] - reference(model, f)).max() < 1e-3


def test_embedding_fusion_leaves_other_graphs_alone():
    from onnxruntime.transformers.onnx_model import OnnxModel

    from prumux_deploy.export.optimize import _fuse_embedding_mux

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph)
    before = model.SerializeToString()
    assert _fuse_embedding_mux(OnnxModel(model)) is False and model.SerializeToString() == before


def test_optimized_graph_keeps_inputs_outputs_and_dynamic_axes(engines):
    _, d, _ = engines
    graph = onnx.load(str(d / "opt.onnx"))
    assert [(i.name, i.type.tensor_type.elem_type, [x.dim_param for x in i.type.tensor_type.shape.dim])
            for i in graph.graph.input] == [("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
                                            ("attention_mask", onnx.TensorProto.INT64, ["batch", "sequence"])]
    out = graph.graph.output[0]
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [x.dim_param or x.dim_value for x in out.type.tensor_type.shape.dim] == ["batch", 3]
    onnx.checker.check_model(graph)


def test_optimized_logits_match_pytorch(engines):
    model, d, _ = engines
    s = session(d / "opt.onnx")
    rng = np.random.default_rng(0)
    worst = 0.0
    for B in (0, 1, 3, 7):
        for S in range(1, 17):
            for holes in (False, True):
                f = feeds(B, S, rng, holes)
                got, want = s.run(["logits"], f)[0], reference(model, f)
                assert got.shape == want.shape == (B, 3)
                if B:
                    worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-3  # measured: 6e-7 to 7e-7


def test_optimize_is_deterministic(engines, tmp_path):
    _, d, _ = engines
    optimize_onnx(d / "plain.onnx", tmp_path / "again.onnx")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "again.onnx") == digest(d / "opt.onnx")


def test_sentence_pair_graph_optimizes_too(tmp_path):
    model = compact_model(2, task="mnli")
    assert model.config.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    export_onnx(model, tmp_path / "plain.onnx")
    assert optimize_onnx(tmp_path / "plain.onnx", tmp_path / "opt.onnx") == expected(2)
    s = session(tmp_path / "opt.onnx")
    rng = np.random.default_rng(1)
    for B, S in ((1, 1), (3, 9), (7, 16)):
        f = feeds(B, S, rng, token_types=True)
        assert np.abs(s.run(["logits"], f)[0] - reference(model, f)).max() < 1e-3


def test_int8_engine(engines, tmp_path):
    model, d, _ = engines
    quant = quantize_int8(d / "opt.onnx", tmp_path / "int8.onnx")
    # each fused Attention becomes a QAttention, each remaining MatMul a MatMulInteger (FFN up and down: 2 x 3,
    # attention output projections: 3, demux dense1, dense2 and classifier: 3), and every one of those 15
    # gets its activations quantized at run time by a DynamicQuantizeLinear
    assert quant == {"DynamicQuantizeLinear": 15, "MatMulInteger": 12, "QAttention": 3}
    fp32, int8 = session(d / "opt.onnx"), session(tmp_path / "int8.onnx")
    f = feeds(64, 16, np.random.default_rng(2))
    want, got = fp32.run(["logits"], f)[0], int8.run(["logits"], f)[0]
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 0.5  # measured: 0.02-0.03 (logits around 0.4-0.6 in size)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9  # measured: 0.97 (N=2), 1.0 (N=5); near-ties flip
    for B in (0, 1, 3):  # odd batch sizes and the empty batch still work
        assert int8.run(["logits"], feeds(B, 5, np.random.default_rng(B)))[0].shape == (B, 3)


def test_fp16_graph(engines, tmp_path):
    model, d, _ = engines
    optimize_onnx(d / "plain.onnx", tmp_path / "gpu.onnx", for_gpu=True)  # fp16 engines are GPU engines
    counts = convert_fp16(tmp_path / "gpu.onnx", tmp_path / "fp16.onnx")
    want = expected(model.config.num_instances, for_gpu=True)
    assert {k: counts[k] for k in want} == want  # the fused ops survive the conversion
    graph = onnx.load(str(tmp_path / "fp16.onnx"))
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("attention_mask", onnx.TensorProto.INT64)]
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # every float weight is half precision, except the parameters the float32 normalisations read
    norm_inputs = {i for n in graph.graph.node if n.op_type in NORMALIZATION_OPS for i in n.input}
    full = [t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
            and t.name not in norm_inputs and len(t.dims) > 0]
    half = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert full == [] and len(half) >= 20, full
    # every normalisation runs in float32, fused or not: its data input is cast to float32 and its gamma and
    # beta are float32 initializers (SkipLayerNormalization included: fp16 engines keep that fused form)
    inits = {t.name: t.data_type for t in graph.graph.initializer}
    norms = [n for n in graph.graph.node if n.op_type in NORMALIZATION_OPS]
    assert {n.op_type for n in norms} >= {"SkipLayerNormalization", "EmbedLayerNormalization"}
    for node in norms:
        params = [i for i in node.input if i in inits]
        assert params and all(inits[i] == onnx.TensorProto.FLOAT for i in params), (node.op_type, node.name)
        if node.op_type != "EmbedLayerNormalization":  # that one reads int32 ids and float32 tables
            producer = next(n for n in graph.graph.node if node.input[0] in n.output)
            to = next(a.i for a in producer.attribute if a.name == "to") if producer.op_type == "Cast" else None
            assert to == onnx.TensorProto.FLOAT, (node.op_type, node.name, producer.op_type)
    # ONNX Runtime's CPU provider runs this graph too (for real use it is a GPU engine)
    s = session(tmp_path / "fp16.onnx")
    f = feeds(7, 12, np.random.default_rng(3))
    got = s.run(["logits"], f)[0]
    assert got.dtype == np.float32 and np.abs(got - reference(model, f)).max() < 2e-2  # measured: ~2e-3
