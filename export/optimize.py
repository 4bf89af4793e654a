"""Engines for servers: ONNX Runtime's transformer optimizer, int8 dynamic quantization, fp16 conversion.

All three take a graph written by `export_onnx` (dynamo exporter) and write a new file; the graph keeps its
inputs (int64 `[batch, sequence]`), its output (float32 `logits [batch, num_labels]`) and both dynamic axes.

What makes the fusions fire on our model (measured with ONNX Runtime 1.32, see docs in the functions):

* `Attention`: the optimizer matches BERT's attention subgraph from the residual Add back through
  Softmax <- Add(mask bias) <- Div(1/sqrt(D)) <- MatMul(Q, K^T), with Q, K, V each MatMul -> Add -> Reshape
  -> Transpose, and the mask bias as Mul(negative constant) <- Sub(1, .) <- Cast <- Unsqueeze <- Unsqueeze
  <- 2-D mask. model.py writes the mask bias in that order (unsqueeze first, then cast and 1 - m); the dynamo
  exporter merges the two Unsqueezes into one with axes [1, 2], which `_split_unsqueezes` undoes here.
  The head count is read per layer from the constant in the Q reshape's shape, so every layer gets its own
  `num_heads` and layers with 0 heads (no attention block in the graph) are simply not touched.
* `SkipLayerNormalization` (GPU engines only, `for_gpu=True`): needs ONNX Runtime's symbolic shape
  inference to succeed on the whole graph; it has no ReduceMax, which is why model.py forms the group mask
  with sum > 0. On the CPU it is a loss: ONNX Runtime 1.32's CPU SkipLayerNormalization kernel took 10 ms
  on a [4096, 768] tensor where Add + LayerNormalization took 3.5-4 ms (2-core AMD EPYC), and the N=10,
  s=0.95 engine ran 1.3x faster without it. So CPU engines keep the residual Add and LayerNormalization,
  on 2-D [tokens, H] tensors with each output projection's bias inside a Gemm (`_residual_blocks_2d`): the
  session's own SkipLayerNormFusion looks for a 3-D Add -> LayerNormalization and would otherwise fuse it
  back at load time, in every consumer (Triton, C++) that uses the default optimization level.
* `BiasGelu`: fires on any exact (erf) GELU after a Linear: FFN and demultiplexer.
* `EmbedLayerNormalization`: the optimizer's own fusion cannot fire (it wants the embedding LayerNorm to
  feed attention; ours feeds the multiplexer), so `_fuse_embedding_mux` writes it before the optimizer
  runs, one per instance, with the multiplexer folded in (see there). This matters most at large N and
  high sparsity, where the embedding stack on N x batch x sequence tokens was the largest cost.

The attention mask is kept as a raw 2-D mask (AttentionMaskFormat.AttentionMask), not the optimizer's BERT
default of a 1-D "mask index" that assumes right padding: the engine accepts any 0/1 mask.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel

from prumux_deploy.errors import ExportError

from .onnx import quiet

# op types the optimizer or the quantizer creates; what optimize_onnx / quantize_int8 count
FUSED_OP_TYPES = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
                  "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")
QUANT_OP_TYPES = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger",
                  "DynamicQuantizeMatMul", "QAttention", "ConvInteger", "MatMulIntegerToFloat")
# normalisations, whatever their fused form, in float32 (half-precision variance sums lose digits and
# overflow on large activations); after the optimizer Softmax only survives in an attention it could not fuse
NORMALIZATION_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                     "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization")
FP16_OP_BLOCK_LIST = NORMALIZATION_OPS + ("Softmax",)


def expected_fused_ops(cfg, for_gpu: bool = False) -> dict[str, int]:
    """What `optimize_onnx` gives for a compact model (a PruMuxConfig with per-layer structure): one
    EmbedLayerNormalization per instance (embeddings, LayerNorm and multiplexer weight, summed by one Sum);
    one Attention per layer that has heads; one BiasGelu per FFN block plus two in the demultiplexer; and
    per remaining sub-layer plus the demultiplexer's residual one LayerNormalization (CPU) or
    SkipLayerNormalization (GPU)."""
    attention = sum(1 for h in cfg.heads_per_layer if h > 0)
    ffn = sum(1 for w in cfg.ffn_per_layer if w > 0)
    norm = "SkipLayerNormalization" if for_gpu else "LayerNormalization"
    counts = {"Attention": attention, "BiasGelu": ffn + 2, "EmbedLayerNormalization": cfg.num_instances,
              norm: attention + ffn + 1}
    return {k: v for k, v in sorted(counts.items()) if v}


def check_fusions(fused: dict[str, int], cfg, for_gpu: bool = False) -> None:
    """Refuse a graph in which a fusion that fires on this model did not (ExportError, one line): every
    layer with heads must hold a fused Attention (per-layer head counts), every remaining sub-layer its
    normalisation in the form of the target (SkipLayerNormalization on GPUs), every FFN block its BiasGelu.
    A transformers or ONNX Runtime upgrade that changes the exported pattern breaks fusions silently: the
    engine stays correct but loses its speed. Models imported with upstream's forward variants (second
    embedding pass, attention over padding, other demuxes) are checked on Attention alone."""
    want = expected_fused_ops(cfg, for_gpu)
    native = not (cfg.second_embedding_pass or cfg.attend_to_padding) and cfg.demux_kind in ("key_cls", "key_pool")
    checked = want if native else {k: v for k, v in want.items() if k == "Attention"}
    missing = {k: (fused.get(k, 0), v) for k, v in checked.items() if fused.get(k, 0) < v}
    if missing:
        said = ", ".join(f"{k} {got} of {v}" for k, (got, v) in missing.items())
        raise ExportError(f"the transformer optimizer's fusions did not fire where they should ({said}): the exported "
                          "graph's pattern changed (a transformers or ONNX Runtime version the fusions were not "
                          "written for?); export --no-optimize writes the plain graph, or pin the versions in the "
                          "README")


def op_counts(model: onnx.ModelProto | str | os.PathLike, types=None) -> dict[str, int]:
    """Number of nodes per op type (only `types` when given; subgraphs included), sorted by op type."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    counts = collections.Counter(n.op_type for n in OnnxModel(model).nodes())
    return {k: counts[k] for k in sorted(counts) if types is None or k in types}


def _quiet():
    """The optimizer and quantizer print and log warnings that do not concern our graphs (producer name,
    per-layer hidden size 'mismatches' that are the point of a pruned model, shape-inference guesses)."""
    return quiet("onnxruntime", "onnxruntime.transformers", "onnx_model", "fusion_base", "fusion_attention",
                 "fusion_utils", "shape_infer_helper", "symbolic_shape_infer", "onnx_model_bert", "float16",
                 "onnxruntime.quantization", "")


def _io_signature(model: onnx.ModelProto):
    def sig(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
            out.append((v.name, t.elem_type, dims))
        return out

    return sig(model.graph.input), sig(model.graph.output)


def _check_io(before: onnx.ModelProto, after: onnx.ModelProto, what: str) -> None:
    if _io_signature(before) != _io_signature(after):
        raise ExportError(f"{what} changed the engine's inputs/outputs: {_io_signature(before)} -> "
                          f"{_io_signature(after)}")


def _replace_nodes(model: OnnxModel, dropped: list, added: list) -> None:
    """Swap nodes of the main graph, in place: remove `dropped`, add `added`, restore a topological order and
    drop every node and initializer the graph outputs no longer depend on (the graph inputs stay)."""
    dropped_ids = {id(n) for n in dropped}
    kept = [n for n in model.graph().node if id(n) not in dropped_ids]
    del model.graph().node[:]
    model.graph().node.extend(kept + added)
    try:
        model.topological_sort()
    except RuntimeError as e:  # ONNX Runtime's "Graph is not a DAG": a rewrite read a name nothing writes
        raise ExportError(f"a graph rewrite left a cycle or a missing input ({e})") from None
    model.prune_graph(allow_remove_graph_inputs=False)


def _split_unsqueezes(model: OnnxModel) -> int:
    """Rewrite Unsqueeze(x, axes=[a0, a1, ...]) (constant, ascending, non-negative axes) as a chain of
    single-axis Unsqueezes, in place. Same result (inserting ascending axes one at a time gives the same
    shape); it is the form the legacy exporter writes and the attention fusion's mask pattern expects.
    Returns how many nodes were split."""
    nodes, split = [], 0
    for n in model.graph().node:
        axes = model.get_constant_value(n.input[1]) if n.op_type == "Unsqueeze" and len(n.input) == 2 else None
        if axes is None or axes.size < 2 or (axes < 0).any() or (np.diff(axes.ravel()) <= 0).any():
            nodes.append(n)
            continue
        split += 1
        prev, base = n.input[0], n.name or n.output[0]
        for j, a in enumerate(axes.ravel().tolist()):
            const = f"{base}_split_axes_{j}"
            model.add_initializer(numpy_helper.from_array(np.array([a], dtype=np.int64), const))
            out = n.output[0] if j == axes.size - 1 else f"{base}_split_{j}"
            nodes.append(helper.make_node("Unsqueeze", [prev, const], [out], name=f"{base}_split_{j}"))
            prev = out
    del model.graph().node[:]
    model.graph().node.extend(nodes)
    return split


def _producers_and_readers(model: OnnxModel) -> tuple[dict, collections.defaultdict]:
    """Main-graph maps: tensor name -> the node writing it, and tensor name -> the nodes reading it."""
    readers = collections.defaultdict(list, model.input_name_to_nodes(exclude_subgraphs=True))
    return model.output_name_to_node(exclude_subgraphs=True), readers


def _match_embedding_mux(model: OnnxModel):
    """Find export_onnx's embedding stack and multiplexer:

        LayerNormalization(Add(Add(Gather(word, ids), Unsqueeze(Gather(position, Range(0, S, 1)))),
                               Gather(token_type, types)))
        -> Reshape [G, N, S, H] -> Mul(vectors [1, N, 1, H]) -> ReduceMean(axis 1) -> [G, S, H]

    Returns the pieces needed to rewrite it, or None when the graph has another shape (then nothing is
    rewritten: the engine is as correct, only slower)."""
    producer, uses = _producers_and_readers(model)
    value = model.get_constant_value
    for mean in model.graph().node:
        if mean.op_type != "ReduceMean" or len(mean.input) < 2:
            continue
        keepdims = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
        mul = producer.get(mean.input[0])
        axes = value(mean.input[1])
        if keepdims != 0 or axes is None or axes.tolist() != [1] or mul is None or mul.op_type != "Mul":
            continue
        view_name, vectors_name = mul.input if value(mul.input[1]) is not None else mul.input[::-1]
        view, vectors = producer.get(view_name), value(vectors_name)
        if view is None or view.op_type != "Reshape" or vectors is None or vectors.ndim != 4:
            continue
        norm = producer.get(view.input[0])
        if norm is None or norm.op_type != "LayerNormalization" or len(norm.input) < 3 \
                or value(norm.input[1]) is None or value(norm.input[2]) is None:
            continue
        tree, gathers, stack = [], {}, [norm.input[0]]
        while stack:  # the Add / Unsqueeze tree under the LayerNorm, down to the table Gathers
            node = producer.get(stack.pop())
            if node is None:
                break
            tree.append(node)
            if node.op_type == "Add":
                stack.extend(node.input)
            elif node.op_type == "Unsqueeze":
                stack.append(node.input[0])
            elif node.op_type == "Gather" and model.get_initializer(node.input[0]) is not None:
                for key in ("word", "position", "token_type"):
                    if node.input[0].endswith(f"embeddings.{key}.weight"):
                        gathers[key] = node
            else:
                break
        else:
            if set(gathers) != {"word", "position", "token_type"}:
                continue
            arange = producer.get(gathers["position"].input[1])
            start, step = (value(arange.input[i]) if arange is not None and arange.op_type == "Range" else None
                           for i in (0, 2))
            if start is None or step is None or start.item() != 0 or step.item() != 1:
                continue
            private = tree + [norm, view, mul]  # nothing outside the stack may read these
            if any(u not in private + [mean] for n in private for o in n.output for u in uses[o]):
                continue
            return {"nodes": private + [mean], "norm": norm, "gathers": gathers, "out": mean.output[0],
                    "vectors": vectors.reshape(vectors.shape[1], vectors.shape[3])}
    return None


def _fuse_embedding_mux(model: OnnxModel) -> bool:
    """Rewrite the embedding stack and the multiplexer as one EmbedLayerNormalization per instance, in place.

    The multiplexer takes the mean over instances of v_i * LayerNorm(e_i) = gamma * norm(e_i) + beta, so
    mux = sum_i (gamma * v_i / N) * norm(e_i) + (beta * v_i / N): instance i's embeddings are one
    EmbedLayerNormalization (gathers, sum and LayerNorm in one pass, ids of instance i = rows i::N of the
    padded batch) with its own gamma and beta, and one Sum adds the N results. Before, the Gathers, Adds,
    LayerNorm, Mul and ReduceMean each read or wrote the whole [N*G, S, H] embedding tensor; now only the
    fused kernels write N tensors of [G, S, H] once and Sum reads them once. Same values up to float
    rounding (the export's parity check holds it to the usual tolerance). Returns whether it rewrote."""
    match = _match_embedding_mux(model)
    if match is None:
        return False
    norm, gathers = match["norm"], match["gathers"]
    vectors = match["vectors"].astype(np.float32)  # [N, H]
    n_inst = vectors.shape[0]
    gamma, beta = model.get_constant_value(norm.input[1]), model.get_constant_value(norm.input[2])
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    new_nodes, new_inits = [], []

    def const(name, array):
        new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    ids32, types32 = "mux_embed_ids_int32", "mux_embed_types_int32"
    new_nodes += [helper.make_node("Cast", [gathers["word"].input[1]], [ids32], to=onnx.TensorProto.INT32,
                                   name="mux_embed_cast_ids"),
                  helper.make_node("Cast", [gathers["token_type"].input[1]], [types32],
                                   to=onnx.TensorProto.INT32, name="mux_embed_cast_types")]
    # rows i, i+N, ... of the padded batch: Slice(start=i, end=max, axis=0, step=N)
    end_axis_step = (const("mux_embed_end", np.array([np.iinfo(np.int64).max], np.int64)),
                     const("mux_embed_axis", np.array([0], np.int64)),
                     const("mux_embed_step", np.array([n_inst], np.int64)))
    parts = []
    for i in range(n_inst):
        start = const(f"mux_embed_start_{i}", np.array([i], np.int64))
        ids_i, types_i = f"mux_embed_ids_{i}", f"mux_embed_types_{i}"
        for src, dst in ((ids32, ids_i), (types32, types_i)):
            new_nodes.append(helper.make_node("Slice", [src, start, *end_axis_step], [dst], name=f"{dst}_slice"))
        out_i = match["out"] if n_inst == 1 else f"mux_embed_{i}"
        new_nodes.append(helper.make_node(
            "EmbedLayerNormalization",
            [ids_i, types_i, gathers["word"].input[0], gathers["position"].input[0],
             gathers["token_type"].input[0], const(f"mux_embed_gamma_{i}", gamma * vectors[i] / n_inst),
             const(f"mux_embed_beta_{i}", beta * vectors[i] / n_inst)],
            [out_i, f"mux_embed_mask_index_{i}"],  # ONNX Runtime's type inference wants the 2nd output named
            domain="com.microsoft", epsilon=float(eps), name=f"mux_embed_layernorm_{i}"))
        parts.append(out_i)
    if n_inst > 1:
        new_nodes.append(helper.make_node("Sum", parts, [match["out"]], name="mux_embed_sum"))

    model.graph().initializer.extend(new_inits)
    _replace_nodes(model, match["nodes"], new_nodes)
    _ensure_ms_domain(model.model)
    return True


def _residual_blocks_2d(model: OnnxModel) -> tuple[int, int]:
    """Run every sub-layer's output projection, residual add and LayerNorm on 2-D [tokens, H] tensors, in place
    (CPU engines).

        MatMul(x, W) -> Add(., b) -> Add(., r) -> LayerNorm   (x, r: [G, S, K], [G, S, H])
    becomes
        MatMul(Reshape(x, [-1, K]), W) -> Add(., b) -> Add(., Reshape(r, [-1, H])) -> LayerNorm -> Reshape to r's
    shape, whose MatMul + bias Add the session fuses into one Gemm when it loads the graph (2-D only).

    Two things make the 2-D form faster (measured with ONNX Runtime 1.32 on the N=10, s=0.95 engine, 2-core
    AMD EPYC: 424 -> 370 ms per batch of 320, logits within 1e-6): the bias goes into the GEMM instead of a
    separate pass over [tokens, H] (the session's own MatMul+Add fusion does not fire on our 3-D graphs with a
    dynamic batch), and the residual stays a plain Add: ONNX Runtime's load-time SkipLayerNormFusion only
    matches 3-D Adds, and its CPU SkipLayerNormalization kernel took 7.8 ms on a [4096, 768] tensor where Add +
    LayerNormalization take 1.4 ms. A LayerNorm whose input is not that pattern keeps a 3-D residual Add,
    written as a two-input Sum so that the load-time fusion leaves it alone too. The Reshapes are free (they
    alias their input). Returns (blocks rewritten to 2-D, residual Adds written as Sum)."""
    producer, uses = _producers_and_readers(model)
    inits = {i.name: i for i in model.graph().initializer}
    new_nodes, dropped, blocks, sums = [], [], 0, 0

    def shape_const(name, dims):
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.array(dims, dtype=np.int64), name)
            model.add_initializer(inits[name])
        return name

    def only_reader(name):
        return len(uses[name]) == 1

    for ln in list(model.graph().node):
        res = producer.get(ln.input[0]) if ln.op_type == "LayerNormalization" else None
        if res is None or res.op_type != "Add" or len(res.input) != 2 or not only_reader(res.output[0]):
            continue
        match = None
        for k in (0, 1):  # which input of the residual Add is the sub-layer: Add(MatMul(x, W), b), each read once
            bias_add = producer.get(res.input[k])
            if bias_add is None or bias_add.op_type != "Add" or not only_reader(bias_add.output[0]):
                continue
            mm = next((producer[i] for i in bias_add.input if i in producer and producer[i].op_type == "MatMul"), None)
            bias = next((i for i in bias_add.input if i in inits and len(inits[i].dims) == 1), None)
            if mm is not None and bias is not None and mm.input[1] in inits and only_reader(mm.output[0]):
                match = (mm, bias_add, bias, res.input[1 - k])
        if match is None:
            res.op_type = "Sum"
            sums += 1
            continue
        mm, bias_add, bias, residual = match
        K, H = list(inits[mm.input[1]].dims)
        base = ln.name or ln.output[0]
        x2, r2, gemm, added, normed, shape = (f"{base}_2d_{t}" for t in ("x", "r", "gemm", "add", "ln", "shape"))
        attrs = {a.name: helper.get_attribute_value(a) for a in ln.attribute}
        new_nodes += [
            helper.make_node("Reshape", [mm.input[0], shape_const(f"rows_by_{K}", [-1, K])], [x2], name=f"{base}_2d_x"),
            # MatMul + Add, which the session fuses into one Gemm at load (2-D only); int8 quantization still
            # finds the MatMul (ONNX Runtime's dynamic quantization has no Gemm)
            helper.make_node("MatMul", [x2, mm.input[1]], [gemm + "_mm"], name=f"{base}_2d_matmul"),
            helper.make_node("Add", [gemm + "_mm", bias], [gemm], name=f"{base}_2d_bias"),
            helper.make_node("Reshape", [residual, shape_const(f"rows_by_{H}", [-1, H])], [r2], name=f"{base}_2d_r"),
            helper.make_node("Add", [gemm, r2], [added], name=f"{base}_2d_residual"),
            helper.make_node("LayerNormalization", [added, *ln.input[1:]], [normed], name=f"{base}_2d_ln", **attrs),
            helper.make_node("Shape", [residual], [shape], name=f"{base}_2d_shape"),
            helper.make_node("Reshape", [normed, shape], [ln.output[0]], name=f"{base}_2d_back"),
        ]
        dropped += [mm, bias_add, res, ln]
        blocks += 1
    _replace_nodes(model, dropped, new_nodes)
    return blocks, sums


def _ensure_ms_domain(model: onnx.ModelProto) -> None:
    """The optimizer adds com.microsoft ops without importing the domain; ONNX Runtime does not mind,
    onnx.checker does."""
    uses = any(n.domain == "com.microsoft" for n in model.graph.node)
    if uses and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def optimize_onnx(src, dst, num_heads_hint: int | None = None, for_gpu: bool = False) -> dict[str, int]:
    """Fuse the embedding stack with the multiplexer, then run ONNX Runtime's transformer optimizer (BERT
    fusions, Python only: opt_level 0; the session applies its own optimisations on load).

    src: a graph from `export_onnx`. dst: where the optimized graph goes. num_heads_hint: only used for a
    layer whose Q reshape has no constant head count (ours always has one, so leave it None). for_gpu:
    fuse residual + LayerNorm into SkipLayerNormalization (fast on CUDA, slow on CPU; see the module doc).
    Returns the counts of fused op types in the result, e.g. {"Attention": 6, "BiasGelu": 8, ...}.
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    original = onnx.load(str(src))
    model = OnnxModel(onnx.load(str(src)))
    _split_unsqueezes(model)
    _fuse_embedding_mux(model)
    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask  # raw 0/1 mask: any padding works
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = for_gpu
    with _quiet():
        optimized = optimize_model(model.model, model_type="bert", num_heads=num_heads_hint or 0, hidden_size=0,
                                   optimization_options=options, opt_level=0)
    if not for_gpu:
        _residual_blocks_2d(optimized)
    proto = optimized.model
    proto.producer_name, proto.producer_version = original.producer_name, original.producer_version
    _ensure_ms_domain(proto)
    _check_io(original, proto, "the transformer optimizer")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(dst))
    return op_counts(proto, FUSED_OP_TYPES)


def _guard_empty_batch(model: onnx.ModelProto) -> None:
    """Run the graph only for a non-empty batch; an empty batch gets empty logits [0, C] directly.

    ONNX Runtime 1.32's CPU QAttention kernel dies with SIGFPE (the whole process, not an exception) on a
    batch of 0 groups, and the engine promises any batch size, 0 included. The guard is an If node around
    the unchanged graph (ONNX Runtime optimises the branch as usual; measured cost: none within noise)."""
    g = model.graph
    out = g.output[0]
    num_labels = out.type.tensor_type.shape.dim[1].dim_value
    inner = out.name + "_nonempty"
    nodes = list(g.node)
    for n in nodes:
        for i, o in enumerate(n.output):
            if o == out.name:
                n.output[i] = inner
    then_branch = helper.make_graph(nodes, "nonempty_batch", [], [helper.make_tensor_value_info(
        inner, onnx.TensorProto.FLOAT, None)], initializer=list(g.initializer), value_info=list(g.value_info))
    empty = numpy_helper.from_array(np.zeros((0, num_labels), np.float32), "empty_logits_value")
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["empty_logits"], value=empty, name="empty_logits")], "empty_batch",
        [], [helper.make_tensor_value_info("empty_logits", onnx.TensorProto.FLOAT, None)])
    axis0 = numpy_helper.from_array(np.array([0], np.int64))
    guard = [
        helper.make_node("Shape", [g.input[0].name], ["guard_batch"], start=0, end=1, name="guard_batch"),
        helper.make_node("Constant", [], ["guard_zero"], value=axis0, name="guard_zero"),
        helper.make_node("Greater", ["guard_batch", "guard_zero"], ["guard_nonempty_1d"], name="guard_greater"),
        helper.make_node("Squeeze", ["guard_nonempty_1d", "guard_zero"], ["guard_nonempty"], name="guard_squeeze"),
        helper.make_node("If", ["guard_nonempty"], [out.name], name="guard_if", then_branch=then_branch,
                         else_branch=else_branch),
    ]
    del g.node[:]
    g.node.extend(guard)
    del g.initializer[:]
    del g.value_info[:]


def quantize_int8(src, dst, weight_type: str = "QInt8", per_channel: bool = True) -> dict[str, int]:
    """Dynamic int8 quantization (weights int8 ahead of time, activations quantized per batch at run
    time) of a graph, normally the output of `optimize_onnx`: MatMul -> MatMulInteger (fused by the
    session into DynamicQuantizeMatMul), Attention -> QAttention. Embedding Gathers stay float32
    (quantizing them saves memory, not time, and costs accuracy).

    Defaults measured on the 2-core AMD EPYC (avx512_vnni), MiniLM shape, N=2, batch 64 x 128: signed
    int8 weights (QInt8) run 1.4x faster than QUInt8 (ORT's VNNI kernels take u8 activations x s8 weights);
    per-channel weight scales cost no time and cut the logit error 2-4x against per-tensor; QAttention
    (quantized Q/K/V projections) is worth 1.1-1.2x over quantizing the MatMuls only. Because QAttention
    crashes on an empty batch, the result is wrapped in an empty-batch guard (`_guard_empty_batch`).
    Returns the counts of quantization op types in the result (inside the guard)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    original = onnx.load(str(src))
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul", "Attention"],
                         per_channel=per_channel, weight_type=getattr(QuantType, weight_type),
                         extra_options={"MatMulConstBOnly": True})
        proto = onnx.load(str(out))
    if any(n.op_type == "QAttention" for n in proto.graph.node):
        _guard_empty_batch(proto)
    proto.producer_name, proto.producer_version = original.producer_name, original.producer_version
    _check_io(original, proto, "int8 quantization")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(dst))
    return op_counts(proto, QUANT_OP_TYPES)


def quantize_static_int8(src, dst, calibration: list[dict]) -> dict[str, int]:
    """Static int8 quantization in QDQ form: int8 per-channel weights and int8 activations whose scales are
    fixed ahead of time from `calibration` (feeds dicts: task train rows as the engine takes them). ONNX
    Runtime turns the Q/DQ pairs around each MatMul into int8 kernels when it loads the graph. The fused
    com.microsoft ops (Attention, EmbedLayerNormalization, BiasGelu) stay float. Activations are unsigned
    (QUInt8): the VNNI kernels multiply u8 activations by s8 weights. Returns the counts of quantization ops."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    original = onnx.load(str(src))
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "static.onnx"
        quantize_static(str(src), str(out), Rows(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False})
        proto = onnx.load(str(out))
    proto.producer_name, proto.producer_version = original.producer_name, original.producer_version
    _check_io(original, proto, "static int8 quantization")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(dst))
    return op_counts(proto, QUANT_OP_TYPES)


def convert_fp16(src, dst, norms_in_fp32: bool = True) -> dict[str, int]:
    """Half-precision weights and activations (for GPUs), with float32 kept where it matters:
    every normalisation (LayerNormalization and the fused Skip/Embed/Simplified forms, gamma and beta
    included) and any unfused Softmax run in float32 (op_block_list; Casts around them), the int64 inputs
    are untouched and `logits` stays float32 (keep_io_types). norms_in_fp32=False (the GPU target,
    export/gpu.py): the normalisations take and give fp16 too, with no Casts around them; ONNX Runtime's CUDA
    kernels accumulate their statistics in float. Returns op counts of the Cast nodes added and the fused ops
    kept."""
    original = onnx.load(str(src))
    model = OnnxModel(onnx.load(str(src)))
    with _quiet():
        model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True,
                                       op_block_list=list(FP16_OP_BLOCK_LIST if norms_in_fp32 else ("Softmax",)))
    for node in model.graph().node:  # the fp32 mask value (float32 min) is -inf in half precision;
        for attr in node.attribute:  # ORT's default -10000 masks just as well and stays finite
            if node.op_type in ("Attention", "MultiHeadAttention") and attr.name == "mask_filter_value":
                attr.f = max(attr.f, -10000.0)
    _drop_float_to_float_casts(model.graph())
    model.prune_graph(allow_remove_graph_inputs=False)
    proto = model.model
    proto.producer_name, proto.producer_version = original.producer_name, original.producer_version
    _check_io(original, proto, "fp16 conversion")
    onnx.save_model(proto, str(dst))
    return op_counts(proto, FUSED_OP_TYPES + ("Cast",))


def _drop_float_to_float_casts(graph: onnx.GraphProto) -> int:
    """The fp16 converter puts a Cast to float32 in front of every float32-kept node input, also where the input
    is a float32 initializer it left unconverted (read only by such nodes): those Casts do nothing. Read the
    initializer directly instead, in place; returns how many were dropped."""
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    renamed = {}
    for n in graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None
        if to == onnx.TensorProto.FLOAT and n.input[0] in floats:
            renamed[n.output[0]] = n.input[0]
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    return len(renamed)
