"""ONNX export of a compact model (torch.onnx's dynamo exporter), and the parity check (its inputs:
prumux_deploy/reference.py).

The graph holds everything between token ids and logits: batch padding to a multiple of N, embeddings,
multiplexer, the per-layer encoder, demultiplexer and classifier. Inputs are int64 [batch, sequence]
with both axes dynamic; the output is float32 logits [batch, num_labels].
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import torch

from prumux_deploy.compare import Comparison, compare_logits, merge
from prumux_deploy.errors import ParityError
from prumux_deploy.model import PruMuxModel
from prumux_deploy.reference import reference_logits

DEFAULT_OPSET = 18


class _OnnxEntry(torch.nn.Module):
    """Positional-argument wrapper so the exporter sees exactly the engine's inputs."""

    def __init__(self, model: PruMuxModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids)


@contextlib.contextmanager
def quiet(*logger_names: str):
    """Silence the named loggers (to ERROR), warnings and stdout for a block: the exporter, optimizer and
    quantizer report a lot about things that do not concern our graphs."""
    loggers = [logging.getLogger(n) for n in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _quiet_exporter():
    return quiet("torch.onnx", "torch.export", "torch._export", "onnxscript")


def export_onnx(model: PruMuxModel, path, opset: int = DEFAULT_OPSET, max_seq_length: int | None = None) -> None:
    """Write `model` (compact) to `path` as a self-contained ONNX file: inputs config.input_names, each
    [batch, sequence] int64 with both dimensions dynamic; output logits [batch, num_labels] float32."""
    cfg = model.config
    max_len = max_seq_length or cfg.max_seq_length
    names = cfg.input_names
    # example inputs: a batch that is not a multiple of N and a mid-length sequence, so nothing specialises
    example_batch, example_len = 2 * cfg.num_instances + 1, max(2, min(8, max_len))
    gen = torch.Generator().manual_seed(0)
    example = tuple(torch.randint(0, 2 if n != "input_ids" else cfg.vocab_size,
                                  (example_batch, example_len), generator=gen) for n in names)
    batch = torch.export.Dim("batch", min=0, max=65536)
    sequence = torch.export.Dim("sequence", min=1, max=cfg.max_position_embeddings)
    dynamic = {n: {0: batch, 1: sequence} for n in names}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            _OnnxEntry(model.eval()), example, dynamo=True, input_names=names,
            output_names=["logits"], dynamic_shapes=dynamic, opset_version=opset, optimize=True,
            verbose=False)
    proto = program.model_proto
    # the exporter names the output's batch dim after its symbolic formula; users want "batch"
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].dim_param = "batch"
    out_dims[1].dim_value = cfg.num_labels
    proto.producer_name, proto.producer_version = "prumux-deploy", _version()
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path))


def record_graph_facts(path, cfg) -> None:
    """Write what the graph determines (engine_dir.GRAPH_FACTS: N, the label count, the position table, the
    vocabulary sizes of `cfg`) into the ONNX file's metadata_props: every opening of the engine checks the
    manifest, an editable text file, against them."""
    from prumux_deploy.engine_dir import graph_facts

    proto = onnx.load(str(path))
    facts = graph_facts(cfg)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in facts]
    del proto.metadata_props[:]
    for key, value in kept + list(facts.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(path))


def _version() -> str:
    from prumux_deploy import __version__

    return __version__


def parity(run_engine, reference: PruMuxModel, cases) -> Comparison:
    """Engine against reference logits over all cases (run_engine: feeds dict -> numpy logits). Raises
    ParityError when a shape differs or either side holds NaN or Inf (which no maximum may hide)."""
    parts = []
    for feeds in cases:
        got = run_engine(feeds)
        want = reference_logits(reference, feeds)
        c = compare_logits(got, want)
        if c.non_finite_reference:
            raise ParityError(f"the PyTorch model itself computes NaN or Inf logits ({_non_finite(want)}); its "
                              "weights overflow, so there is nothing to export")
        if c.non_finite_engine:
            raise ParityError(f"the engine computes NaN or Inf logits ({_non_finite(got)}) where PyTorch does not "
                              "(an fp16 overflow? export with `precision` fp32)")
        parts.append(c)
    return merge(parts)


def _non_finite(logits: np.ndarray) -> str:
    return f"{int((~np.isfinite(logits)).sum())} of {logits.size} values"
