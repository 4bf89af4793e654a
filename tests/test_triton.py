"""Triton model repositories: every config.pbtxt parsed with Triton's own ModelConfig schema and checked
against the engine (ONNX Runtime's view of the graph, manifest.json), plus the Python-backend tokenizer run
on fake requests against prumux_deploy.data.tokenize."""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import shutil
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main
from prumux_deploy.data import load_tokenizer, tokenize
from prumux_deploy.engine import Engine, read_manifest, sha256_file
from prumux_deploy.errors import EngineError, PruMuxError
from prumux_deploy.export import triton as tx
from prumux_deploy.export.triton import preferred_batch_sizes, write_triton_repository


# the engine model's own config and files: the layout of --isolation shared (request isolation puts a
# Python-backend front before it; tests/test_isolation.py)
write_shared = functools.partial(write_triton_repository, isolation="shared")

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format  # noqa: E402  (after the guard on purpose)

ORT_TO_TRITON = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}
TEXTS = ["a gorgeous , witty film", "dull", "what a film ! " + "very " * 30 + "good",  # the last one truncates
         "the plot was awful", "zebra unknownword"]
PAIRS = ["what is it ?", "a film", "who was it", "very good fun", "why"]


# --- helpers ------------------------------------------------------------------------------------

def parse_config(model_dir):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def type_name(data_type) -> str:
    return model_config_pb2.DataType.Name(data_type)


def kind_name(kind) -> str:
    return model_config_pb2.ModelInstanceGroup.Kind.Name(kind)


def all_configs(repo):
    return {d.name: parse_config(d) for d in sorted(repo.iterdir()) if (d / "config.pbtxt").is_file()}


def leftovers(repo):
    return [p.name for p in repo.iterdir() if p.name.startswith(".")]


def copy_engine(engine_dir, dst):
    shutil.copytree(engine_dir, dst)
    return dst


def fake_engine(tmp_path, kind="tensorrt", file="model.plan", **changes):
    """An engine directory with a (fake) engine file of another kind and a correct sha256."""
    from prumux_deploy.engine import MANIFEST_FORMAT, MANIFEST_VERSION

    d = tmp_path / f"fake-{kind}"
    d.mkdir()
    (d / file).write_bytes(b"not really a plan")
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
                "engine": {"file": file, "kind": kind, "sha256": sha256_file(d / file)},
                "inputs": [{"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
                           for n in ("input_ids", "attention_mask")],
                "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}],
                "num_instances": 4, "labels": {"0": "a", "1": "b", "2": "c"}, "max_seq_length": 16}
    manifest.update(changes)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture(params=["single", "pair"])
def any_engine(request):
    return request.getfixturevalue("engine_dir" if request.param == "single" else "pair_engine_dir")


def check_model_against_engine(model_dir, engine_dir, config):
    """config.pbtxt vs the ONNX graph as ONNX Runtime sees it and vs manifest.json; files and sha256."""
    manifest = read_manifest(engine_dir)
    n = manifest["num_instances"]
    session = ort.InferenceSession(str(engine_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert config.platform == "onnxruntime_onnx" and config.name == model_dir.name
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()] \
        == [i["name"] for i in manifest["inputs"]]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()] == ["logits"]
    for tensor, arg in list(zip(config.input, session.get_inputs())) + list(zip(config.output, session.get_outputs())):
        assert type_name(tensor.data_type) == ORT_TO_TRITON[arg.type], tensor.name
        assert len(tensor.dims) == len(arg.shape) - 1, tensor.name  # the batch axis is implicit
        assert not isinstance(arg.shape[0], int)  # ... and dynamic in the graph
        for dim, graph_dim in zip(tensor.dims, arg.shape[1:]):
            assert dim == (graph_dim if isinstance(graph_dim, int) else -1), tensor.name
    assert list(config.input[0].dims) == [-1]
    assert list(config.output[0].dims) == [len(manifest["labels"])]
    assert config.max_batch_size >= n and config.max_batch_size % n == 0
    # files: the engine byte for byte, the manifest, the labels
    copy = model_dir / "1" / "model.onnx"
    assert copy.is_file() and sha256_file(copy) == manifest["engine"]["sha256"]
    assert json.loads((model_dir / "manifest.json").read_text()) == manifest
    assert config.output[0].label_filename == "labels.txt"
    labels = (model_dir / "labels.txt").read_text().splitlines()
    assert labels == [manifest["labels"][str(i)] for i in range(len(manifest["labels"]))]


# --- the model config ---------------------------------------------------------------------------

def test_default_repository_matches_the_engine(engine_dir, tmp_path):
    repo = tmp_path / "repo"
    path = write_shared(engine_dir, repo, "sst2")
    assert path == repo / "sst2"
    assert sorted(p.name for p in repo.iterdir()) == ["sst2"]  # nothing else, no temp dirs left
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt", "manifest.json"]
    config = parse_config(path)
    check_model_against_engine(path, engine_dir, config)
    n = read_manifest(engine_dir)["num_instances"]
    assert n == 2 and config.max_batch_size == 32 * n
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 1 and kind_name(config.instance_group[0].kind) == "KIND_CPU"
    assert config.HasField("dynamic_batching")
    preferred = list(config.dynamic_batching.preferred_batch_size)
    assert preferred == [8, 16, 32, 64]
    assert all(b % n == 0 and b <= config.max_batch_size for b in preferred)
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert not config.HasField("optimization")


def test_options_reach_the_config(any_engine, tmp_path):
    repo = tmp_path / "repo"
    write_shared(any_engine, repo, "m", max_batch_size=16, copies=3, device="gpu",
                            ort_tensorrt=True)
    config = parse_config(repo / "m")
    check_model_against_engine(repo / "m", any_engine, config)
    assert config.max_batch_size == 16
    assert config.instance_group[0].count == 3 and kind_name(config.instance_group[0].kind) == "KIND_GPU"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    # the graph's own precision: TensorRT 11 (strongly typed) takes FP16 only from an fp16 graph
    want = "FP16" if read_manifest(any_engine).get("precision") == "fp16" else "FP32"
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": want}

    write_shared(any_engine, repo, "plain", max_batch_size=2, dynamic_batching=False)
    config = parse_config(repo / "plain")
    assert config.max_batch_size == 2 and not config.HasField("dynamic_batching")


@pytest.mark.parametrize("n, max_batch_size, expected", [
    (2, 64, [8, 16, 32, 64]), (2, 48, [8, 16, 32, 48]), (2, 6, [6]), (2, 2, [2]), (3, 96, [12, 24, 48, 96]),
    (10, 320, [40, 80, 160, 320]), (1, 32, [4, 8, 16, 32])])
def test_preferred_batch_sizes_are_multiples_of_n(n, max_batch_size, expected):
    sizes = preferred_batch_sizes(n, max_batch_size)
    assert sizes == expected
    assert all(s % n == 0 and s <= max_batch_size for s in sizes) and sizes == sorted(set(sizes))


def test_tensorrt_engine_gets_the_tensorrt_platform(tmp_path):
    # max_batch_size comes from the plan's profile (tests/test_gpu_fakes.py builds real plans through fakes)
    engine = fake_engine(tmp_path, tensorrt={"profile": {"min_batch": 1, "opt_batch": 128, "max_batch": 128,
                                                         "min_seq": 1, "opt_seq": 16, "max_seq": 16}})
    repo = tmp_path / "repo"
    write_shared(engine, repo, "trt")
    config = parse_config(repo / "trt")
    assert config.platform == "tensorrt_plan"
    assert kind_name(config.instance_group[0].kind) == "KIND_GPU"  # a plan runs only on a GPU
    assert config.max_batch_size == 32 * 4 and list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64, 128]
    assert [type_name(o.data_type) for o in config.output] == ["TYPE_FP32"] and list(config.output[0].dims) == [3]
    assert sha256_file(repo / "trt" / "1" / "model.plan") == read_manifest(engine)["engine"]["sha256"]
    assert not (repo / "trt" / "1" / "model.onnx").exists()
    with pytest.raises(PruMuxError, match="`ort_tensorrt` applies to ONNX engines"):
        write_shared(engine, repo, "x", device="gpu", ort_tensorrt=True)
    with pytest.raises(PruMuxError, match="runs only on a GPU"):
        write_shared(engine, repo, "x", device="cpu")
    assert not (repo / "x").exists()


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "`max_batch_size` must be at least 1"),
    ({"max_batch_size": -4}, "`max_batch_size` must be at least 1"),
    ({"max_batch_size": 33}, "not a multiple of N=2.*use 32 or 34"),
    ({"max_batch_size": 1}, "not a multiple of N=2.*use 2"),
    ({"copies": 0}, "`copies` must be at least 1"),
    ({"device": "tpu"}, "`device` must be one of cpu, gpu"),
    ({"ort_tensorrt": True}, "`ort_tensorrt` needs `device` gpu"),
    ({"name": "../up"}, "not a usable model name"),
    ({"name": ".hidden"}, "not a usable model name"),
    ({"name": ""}, "not a usable model name"),
])
def test_bad_options_are_refused_before_writing(engine_dir, tmp_path, kwargs, message):
    kwargs = {"name": "m", **kwargs}
    with pytest.raises(PruMuxError, match=message):
        write_shared(engine_dir, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_existing_model_is_refused_without_force(engine_dir, tmp_path):
    repo = tmp_path / "repo"
    write_shared(engine_dir, repo, "m")
    (repo / "other").mkdir()  # another model in the same repository
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    before = (repo / "m" / "config.pbtxt").read_text()
    with pytest.raises(PruMuxError, match="already exists; pass `force`"):
        write_shared(engine_dir, repo, "m", copies=4)
    assert (repo / "m" / "config.pbtxt").read_text() == before
    write_shared(engine_dir, repo, "m", copies=4, force=True)
    assert parse_config(repo / "m").instance_group[0].count == 4
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    assert sorted(p.name for p in repo.iterdir()) == ["m", "other"]


def test_existing_ensemble_blocks_the_whole_tokenizer_repository(engine_dir, tmp_path):
    repo = tmp_path / "repo"
    (repo / "m_ensemble").mkdir(parents=True)
    with pytest.raises(PruMuxError, match="m_ensemble already exists"):
        write_shared(engine_dir, repo, "m", with_tokenizer=True)
    assert sorted(p.name for p in repo.iterdir()) == ["m_ensemble"]  # the engine model was not written either


def test_tampered_engine_is_refused(engine_dir, tmp_path):
    engine = copy_engine(engine_dir, tmp_path / "engine")
    data = bytearray((engine / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (engine / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match manifest.json"):
        write_shared(engine, tmp_path / "repo", "m")
    (engine / "model.onnx").unlink()
    with pytest.raises(EngineError, match="missing"):
        write_shared(engine, tmp_path / "repo", "m")
    with pytest.raises(EngineError, match="nowhere: no such directory; pass the directory `prumux-deploy export`"):
        write_shared(tmp_path / "nowhere", tmp_path / "repo", "m")
    assert not (tmp_path / "repo").exists()


def test_with_tokenizer_needs_tokenizer_files(engine_dir, tmp_path):
    engine = copy_engine(engine_dir, tmp_path / "engine")
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (engine / f).unlink(missing_ok=True)
    with pytest.raises(PruMuxError, match="no tokenizer files"):
        write_shared(engine, tmp_path / "repo", "m", with_tokenizer=True)
    assert not (tmp_path / "repo").exists()


# --- tokenizer + ensemble -----------------------------------------------------------------------

def test_with_tokenizer_writes_three_consistent_models(any_engine, tmp_path):
    repo = tmp_path / "repo"
    write_shared(any_engine, repo, "cls", with_tokenizer=True, copies=2)
    manifest = read_manifest(any_engine)
    pair = "token_type_ids" in [i["name"] for i in manifest["inputs"]]
    configs = all_configs(repo)
    assert sorted(configs) == ["cls", "cls_ensemble", "cls_tokenizer"] and not leftovers(repo)
    check_model_against_engine(repo / "cls", any_engine, configs["cls"])

    texts = ["TEXT", "TEXT_PAIR"] if pair else ["TEXT"]
    tok = configs["cls_tokenizer"]
    assert tok.backend == "python" and tok.platform == ""
    assert [(i.name, type_name(i.data_type), list(i.dims)) for i in tok.input] == [
        (t, "TYPE_STRING", [1]) for t in texts]
    assert [(o.name, type_name(o.data_type), list(o.dims)) for o in tok.output] == [
        (i["name"], "TYPE_INT64", [-1]) for i in manifest["inputs"]]
    assert tok.parameters["max_seq_length"].string_value == str(manifest["max_seq_length"])
    assert (repo / "cls_tokenizer" / "1" / "model.py").is_file()
    assert (repo / "cls_tokenizer" / "1" / "tokenizer" / "vocab.txt").is_file()

    ens = configs["cls_ensemble"]
    assert ens.platform == "ensemble" and (repo / "cls_ensemble" / "1").is_dir()
    assert [i.name for i in ens.input] == texts and [o.name for o in ens.output] == ["logits"]
    assert all(c.max_batch_size == configs["cls"].max_batch_size for c in configs.values())

    # the wiring: every map key is a tensor of the step's model, every value is available when consumed
    def tensors(config, field):
        return {t.name: (type_name(t.data_type), list(t.dims)) for t in getattr(config, field)}

    available = tensors(ens, "input")
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["cls_tokenizer", "cls"]
    for step in steps:
        model = configs[step.model_name]
        model_inputs, model_outputs = tensors(model, "input"), tensors(model, "output")
        assert set(step.input_map) == set(model_inputs), step.model_name  # every input is fed ...
        for model_name, ensemble_name in step.input_map.items():
            assert ensemble_name in available, (step.model_name, ensemble_name)  # ... by something earlier
            assert available[ensemble_name][0] == model_inputs[model_name][0]  # with the same dtype
        for model_name, ensemble_name in step.output_map.items():
            assert model_name in model_outputs, (step.model_name, model_name)
            available[ensemble_name] = model_outputs[model_name]
    for out in ens.output:
        assert available[out.name] == (type_name(out.data_type), list(out.dims))


class FakeTensor:
    """What pb_utils.Tensor offers to a model: name() and as_numpy()."""

    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class FakeRequest:
    def __init__(self, **inputs):  # TEXT=[...] as Triton delivers TYPE_STRING [batch, 1]: bytes objects
        self._inputs = [FakeTensor(k, np.array([[s.encode()] for s in v], dtype=object)) for k, v in inputs.items()]

    def inputs(self):
        return self._inputs


def fake_pb_utils():
    module = types.ModuleType("triton_python_backend_utils")

    class Response:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    module.Tensor = FakeTensor
    module.InferenceResponse = Response
    module.TritonError = lambda message: message
    return module


def load_tokenizer_model(model_dir):
    """Import REPO/NAME_tokenizer/1/model.py and initialize it the way Triton does."""
    assert "triton_python_backend_utils" not in sys.modules  # importable outside the server
    spec = importlib.util.spec_from_file_location(f"triton_model_{id(model_dir)}", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToDict(parse_config(model_dir), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU",
                      "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name})
    return model


def test_tokenizer_model_matches_data_tokenize(any_engine, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_shared(any_engine, repo, "cls", with_tokenizer=True)
    engine = Engine(any_engine)
    pair = engine.uses_token_types
    model = load_tokenizer_model(repo / "cls_tokenizer")
    request = FakeRequest(TEXT=TEXTS, TEXT_PAIR=PAIRS) if pair else FakeRequest(TEXT=TEXTS)

    got = model.tokenize_request(request)
    want = tokenize(load_tokenizer(any_engine), TEXTS, PAIRS if pair else None,
                    max_length=engine.max_seq_length, uses_token_types=pair)
    assert list(got) == [i["name"] for i in engine.manifest["inputs"]] == list(want)
    for name in want:
        assert got[name].dtype == np.int64 and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])
    assert got["input_ids"].shape[1] == engine.max_seq_length  # the long text was truncated, the rest padded
    # and what the ensemble's second step computes from them is what `predict` computes
    np.testing.assert_array_equal(engine.run_feeds(got), engine.run_feeds(want))

    # execute() as the server calls it: one response per request, a bad request fails alone
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    small = FakeRequest(TEXT=TEXTS[:1], TEXT_PAIR=PAIRS[:1]) if pair else FakeRequest(TEXT=TEXTS[:1])
    bad = FakeRequest(TEXT_PAIR=PAIRS[:1])  # no TEXT
    responses = model.execute([request, bad, small])
    assert len(responses) == 3
    assert responses[1].error and "no TEXT input" in responses[1].error and responses[1].output_tensors == []
    for response, (texts, pairs) in zip([responses[0], responses[2]], [(TEXTS, PAIRS), (TEXTS[:1], PAIRS[:1])]):
        assert response.error is None
        expected = tokenize(load_tokenizer(any_engine), texts, pairs if pair else None,
                            max_length=engine.max_seq_length, uses_token_types=pair)
        assert [t.name() for t in response.output_tensors] == list(expected)
        for t in response.output_tensors:
            np.testing.assert_array_equal(t.as_numpy(), expected[t.name()])
    if pair:
        (response,) = model.execute([FakeRequest(TEXT=TEXTS[:2], TEXT_PAIR=PAIRS[:1])])
        assert "one entry per TEXT row" in response.error


# --- the serialisation --------------------------------------------------------------------------

def test_hand_written_text_equals_the_protobuf_route(pair_engine_dir, tmp_path, monkeypatch):
    """Without tritonclient the configs are written by hand; they must parse to the same messages."""
    write_shared(pair_engine_dir, tmp_path / "pb", "m", with_tokenizer=True, copies=2,
                            device="gpu", ort_tensorrt=True)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # `from tritonclient.grpc import ...` fails
    with pytest.raises(ImportError):
        from tritonclient.grpc import model_config_pb2 as _  # noqa: F401
    write_shared(pair_engine_dir, tmp_path / "hand", "m", with_tokenizer=True, copies=2,
                            device="gpu", ort_tensorrt=True)
    monkeypatch.undo()
    pb, hand = all_configs(tmp_path / "pb"), all_configs(tmp_path / "hand")
    assert sorted(pb) == sorted(hand) == ["m", "m_ensemble", "m_tokenizer"]
    for name in pb:
        assert pb[name] == hand[name], name
    assert (tmp_path / "hand" / "m" / "config.pbtxt").read_text() != ""
    assert tx._write_text({"s": 'a "quoted"\nline', "e": tx.Enum("KIND_GPU"), "l": [1, 2]}) == (
        's: "a \\"quoted\\"\\nline"\ne: KIND_GPU\nl: [1, 2]\n')


# --- the command line ---------------------------------------------------------------------------

def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_happy_path(pair_engine_dir, tmp_path):
    result = cli("triton", "--help")
    assert result.exit_code == 0 and "Usage:" in result.output and "--max-batch-size" in result.output
    repo = tmp_path / "repo"
    result = cli("triton", "--isolation", "shared", pair_engine_dir, repo, "--name", "qnli", "--max-batch-size", 8, "--copies", 2,
                 "--with-tokenizer", "--no-dynamic-batching")
    assert result.exit_code == 0, result.output
    assert f"wrote {repo / 'qnli'} (onnxruntime_onnx, N=2, max_batch_size 8, 2 copies on cpu)" in result.output
    assert f"tritonserver --model-repository {repo}" in result.output
    configs = all_configs(repo)
    assert sorted(configs) == ["qnli", "qnli_ensemble", "qnli_tokenizer"]
    check_model_against_engine(repo / "qnli", pair_engine_dir, configs["qnli"])
    assert configs["qnli"].max_batch_size == 8 and configs["qnli"].instance_group[0].count == 2
    assert not configs["qnli"].HasField("dynamic_batching")
    result = cli("triton", "--isolation", "shared", pair_engine_dir, repo, "--name", "qnli", "--with-tokenizer", "--force",
                 "--device", "gpu", "--ort-tensorrt")
    assert result.exit_code == 0, result.output
    assert parse_config(repo / "qnli").optimization.execution_accelerators.gpu_execution_accelerator[0].name \
        == "tensorrt"


def test_cli_errors_are_one_line(engine_dir, tmp_path):
    for args, text in [(["--max-batch-size", 3], "--max-batch-size 3 is not a multiple of N=2 (the engine "
                                                 "multiplexes 2 rows per pass); use 2 or 4"),
                       (["--ort-tensorrt"], "--ort-tensorrt needs --device gpu")]:
        result = cli("triton", "--isolation", "shared", engine_dir, tmp_path / "repo", "--name", "m", *args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and text in lines[0], result.output
    assert not (tmp_path / "repo").exists()
    before = sorted(p.name for p in engine_dir.iterdir())
    result = cli("triton", engine_dir, engine_dir, "--name", "m")  # REPO an engine: was written into
    assert result.exit_code == 2 and (f"error: {engine_dir} is an engine directory (manifest.json), not a model "
                                      "repository; give a new or existing repository directory for REPO"
                                      in result.output), result.output
    assert sorted(p.name for p in engine_dir.iterdir()) == before


def test_an_n1_engine_is_served_directly_there_being_nothing_to_isolate(tmp_path, bert_dir):
    from prumux_deploy.checkpoint import create_model, save_checkpoint
    from prumux_deploy.export.pipeline import export_checkpoint

    save_checkpoint(create_model(bert_dir, num_instances=1, num_labels=2, seed=1, task="sst2"), tmp_path / "m1")
    export_checkpoint(tmp_path / "m1", tmp_path / "e1", log=lambda m: None, runtime="onnxruntime")
    repo = tmp_path / "repo"
    result = cli("triton", tmp_path / "e1", repo, "--name", "one")  # --isolation request is the default
    assert result.exit_code == 0, result.output
    assert "N=1: every row has a pass of its own, so there is nothing to isolate; the engine is served directly " \
           "as one" in result.output
    assert f"wrote {repo / 'one'} (onnxruntime_onnx, N=1," in result.output
    assert sorted(p.name for p in repo.iterdir()) == ["one"]  # no front, no one_engine
    check_model_against_engine(repo / "one", tmp_path / "e1", parse_config(repo / "one"))


# --- a repository update is whole or not at all ------------------------------------------------------

WHOLE = ["m_engine", "m", "m_tokenizer", "m_ensemble"]  # request isolation + tokenizer: four model directories


def snapshot(folder):
    """Every entry under `folder`, hidden ones too, with its bytes (None for a directory)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def fail_a_model_rename(monkeypatch, repo, at, error):
    """Make the `at`-th rename that moves a model directory of `repo` (into place, or its old version aside)
    raise `error`, once: a failure, or a Ctrl-C, between the model directories of one update."""
    real, seen = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if any(os.path.dirname(os.fspath(p)) == str(repo) and not os.path.basename(os.fspath(p)).startswith(".")
               for p in (src, dst)):
            seen.append(dst)
            if len(seen) == at:
                raise error
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return seen


@pytest.mark.parametrize("at", range(1, 2 * len(WHOLE) + 1))  # each model moved aside, each put in
def test_a_failure_between_model_directories_leaves_the_previous_repository(engine_dir, tmp_path, monkeypatch, at):
    repo = tmp_path / "repo"
    write_triton_repository(engine_dir, repo, "m", with_tokenizer=True)
    (repo / "other").mkdir()  # another model of the same repository
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    before = snapshot(repo)
    fail_a_model_rename(monkeypatch, repo, at, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(PruMuxError, match="cannot update .*: No space left on device; nothing of this update was "
                                          "put in, its models are as they were; free space there"):
        write_triton_repository(engine_dir, repo, "m", with_tokenizer=True, max_batch_size=8, copies=3, force=True)
    assert snapshot(repo) == before  # the complete previous set, byte for byte; nothing left beside it


def test_a_failed_update_is_one_line_on_the_command_line(engine_dir, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    assert cli("triton", engine_dir, repo, "--name", "m", "--with-tokenizer").exit_code == 0
    before = snapshot(repo)
    fail_a_model_rename(monkeypatch, repo, 4, OSError(errno.ENOSPC, "No space left on device"))
    result = cli("triton", engine_dir, repo, "--name", "m", "--with-tokenizer", "--copies", "3", "--force")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: cannot update {repo}: No space left on device; nothing of this update was put in, "
                     "its models are as they were; free space there or choose another location"], result.output
    assert snapshot(repo) == before


@pytest.mark.parametrize("at", [1, 2, 3])
def test_an_interrupted_first_update_leaves_no_repository(engine_dir, tmp_path, monkeypatch, at):
    repo = tmp_path / "repo"
    fail_a_model_rename(monkeypatch, repo, at, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_triton_repository(engine_dir, repo, "m", with_tokenizer=True)
    assert not repo.exists()


def test_an_update_replaces_every_model_directory(engine_dir, tmp_path):
    repo, fresh = tmp_path / "repo", tmp_path / "fresh"
    write_triton_repository(engine_dir, repo, "m", with_tokenizer=True)
    (repo / "m_tokenizer" / "1" / "stale.txt").write_text("from the previous version")
    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    before = snapshot(repo)
    write_triton_repository(engine_dir, repo, "m", with_tokenizer=True, max_batch_size=8, copies=3, force=True)
    write_triton_repository(engine_dir, fresh, "m", with_tokenizer=True, max_batch_size=8, copies=3)
    after = snapshot(repo)
    assert {k: v for k, v in after.items() if k.split("/")[0] in WHOLE} == snapshot(fresh)  # all new, no stale file
    assert all(after[f"{n}/config.pbtxt"] != before[f"{n}/config.pbtxt"] for n in WHOLE)
    assert {k: v for k, v in after.items() if k.startswith("other")} == \
        {k: v for k, v in before.items() if k.startswith("other")}
    assert sorted(p.name for p in repo.iterdir()) == sorted(WHOLE + ["other"])  # nothing left beside them


def test_concurrent_updates_of_one_repository_never_mix(engine_dir, tmp_path):
    """Two --force runs updating the same models at once: the repository ends as one run's complete set."""
    import threading

    repo = tmp_path / "repo"
    write_triton_repository(engine_dir, repo, "m", with_tokenizer=True)
    errors = []

    def update(copies):
        try:
            write_triton_repository(engine_dir, repo, "m", with_tokenizer=True, copies=copies, force=True)
        except Exception as e:  # noqa: BLE001 - the test reports any
            errors.append(e)

    for _ in range(3):
        threads = [threading.Thread(target=update, args=(c,)) for c in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        counts = {parse_config(repo / n).instance_group[0].count for n in ("m_engine", "m", "m_tokenizer")}
        assert len(counts) == 1 and not leftovers(repo)
