"""Shared fixtures: tiny random BERT configs, CoFi-style masks, a tiny BERT directory and GLUE-like data."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from prumux_deploy import create_model, save_checkpoint

LAYERS, HEADS, HIDDEN, FFN, MAX_POS, VOCAB = 4, 4, 32, 64, 24, 120

WORDS = ("good great fun witty gorgeous lovely bad dull awful boring tedious film movie plot the a is "
         "was and very not what who where why how question answer").split()


def tiny_bert_config(**overrides) -> BertConfig:
    kw = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              intermediate_size=FFN, max_position_embeddings=MAX_POS, type_vocab_size=2)
    kw.update(overrides)
    return BertConfig(**kw)


def spine_masks(seed: int = 0) -> dict[str, torch.Tensor]:
    """The structure the spine issue asks to cover, with fractional kept scales everywhere:
    layer 0 loses every head, layer 1 one head, layer 3 its whole FFN, layer 2 most of its FFN,
    and half of the hidden dims go."""
    g = torch.Generator().manual_seed(seed)

    def scales(*shape):
        return torch.rand(*shape, generator=g) * 0.8 + 0.4  # kept, with scales in [0.4, 1.2)

    head_z = scales(LAYERS, HEADS)
    head_z[0] = 0
    head_z[1, 2] = 0
    intermediate_z = scales(LAYERS, FFN)
    intermediate_z[2, : FFN - 5] = 0
    mlp_z = scales(LAYERS)
    mlp_z[3] = 0
    hidden_z = scales(HIDDEN)
    hidden_z[torch.randperm(HIDDEN, generator=g)[: HIDDEN // 2]] = 0
    return {"head_z": head_z, "head_layer_z": scales(LAYERS), "intermediate_z": intermediate_z,
            "mlp_z": mlp_z, "hidden_z": hidden_z}


def masked_model(num_instances: int = 2, num_labels: int = 3, seed: int = 0, task=None, demux_kind="key_cls", **cfg):
    model = create_model(tiny_bert_config(**cfg), num_instances=num_instances, num_labels=num_labels,
                         seed=seed, task=task, max_seq_length=16, demux_kind=demux_kind)
    model.set_masks(spine_masks(seed))
    return model


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A tiny random BERT directory as Hugging Face writes it: config, safetensors weights, tokenizer."""
    from transformers import BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "'", "?", "!"] + WORDS
    vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(path))  # WordPiece over the vocab.txt just written
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(str(path))
    return path


def write_sst2(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows))
    return path


SST2_ROWS = [("a gorgeous , witty film", 1), ("dull and tedious", 0), ("very good fun", 1),
             ("the plot was awful", 0), ("lovely", 1), ("boring boring boring", 0), ("great movie", 1),
             ("not good", 0), ("what a film !", 1), ("bad", 0), ("a very lovely plot", 1)]


@pytest.fixture
def sst2_dir(tmp_path):
    return write_sst2(tmp_path / "SST-2", SST2_ROWS)


@pytest.fixture
def glue_dir(tmp_path):
    """SST-2-like train (70 rows) and dev (11 rows) TSVs for the training tests."""
    path = tmp_path / "SST-2"
    path.mkdir()
    rows = [(s, l) for s, l in SST2_ROWS] * 4 + [(f"{w} {w}", i % 2) for i, w in enumerate(WORDS)]
    (path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows))
    (path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST2_ROWS))
    return path


@pytest.fixture(scope="session")
def masked_checkpoint(tmp_path_factory, bert_dir):
    """A masked N=2 SST-2 checkpoint on the tiny BERT directory (with tokenizer)."""
    model = create_model(bert_dir, num_instances=2, num_labels=2, seed=3, task="sst2",
                         id2label={0: "negative", 1: "positive"}, max_seq_length=16)
    model.set_masks(spine_masks(3))
    path = tmp_path_factory.mktemp("ckpt") / "masked"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory, masked_checkpoint):
    from prumux_deploy.export.pipeline import export_checkpoint

    out = tmp_path_factory.mktemp("engines") / "sst2"
    export_checkpoint(masked_checkpoint, out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def pair_engine_dir(tmp_path_factory, bert_dir):
    """An N=2 QNLI (sentence-pair: token_type_ids) engine with the tiny tokenizer."""
    from prumux_deploy.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("pair")
    save_checkpoint(masked_model(2, num_labels=2, task="qnli"), root / "ckpt", tokenizer_dir=bert_dir)
    export_checkpoint(root / "ckpt", root / "engine", log=lambda m: None)
    return root / "engine"


def _missing(item) -> str | None:
    """Why a `gpu` test cannot run here (None when it can): every one needs CUDA; those that build or run
    TensorRT engines (marked `tensorrt` too) also need the tensorrt package; ONNX Runtime on the GPU needs
    onnxruntime-gpu (marked `ort_cuda`)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here)"
    except Exception as e:  # noqa: BLE001
        return f"needs an NVIDIA GPU with CUDA ({e})"
    if "tensorrt" in item.keywords:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "needs the tensorrt package: pip install 'prumux-deploy[gpu-cu13]' (or [gpu-cu12]; README, GPU)"
    if "ort_cuda" in item.keywords:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return ("needs onnxruntime-gpu (ONNX Runtime's CUDA provider): pip install 'prumux-deploy[gpu-cu13]' "
                    "(or [gpu-cu12]; README, GPU)")
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords and (reason := _missing(item)):
            item.add_marker(pytest.mark.skip(reason=reason))


def run_cli(*args):
    """`prumux-deploy ARGS` in-process (click's runner); every argument is turned into a string."""
    from click.testing import CliRunner

    from prumux_deploy.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, code, text):
    """The command failed with `code`, printed exactly one `error:` line containing `text`, and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.output
    return errors[0]


def commands(group=None, path=()):
    """(command path, command) of every leaf command of the CLI, e.g. (("train", "warmup"), <Command>)."""
    import click

    from prumux_deploy.cli import main

    group = main if group is None else group
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd
