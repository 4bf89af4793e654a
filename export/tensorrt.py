"""TensorRT engines: one optimization profile (ShapeProfile), built from our ONNX with the TensorRT
Python API, serialized to model.plan.

Networks are strongly typed (the TensorRT 10 flag; always on from TensorRT 11): precision comes from the
ONNX graph, so an fp16 engine is built from the fp16 ONNX graph (LayerNorm and softmax kept in fp32 by
the conversion), not from builder precision flags.

TF32: TensorRT lets fp32 layers run in TF32 unless the builder config clears BuilderFlag.TF32 (the flag is
on by default; TensorRT Python API, IBuilderConfig / BuilderFlag). An fp32 engine is an fp32 engine here:
`build_plan` clears the flag unless `TensorRTOptions.tf32` asks for it (export --tf32), and the manifest
records which (`tensorrt.tf32`), so validate and bench can say what arithmetic the engine used.

Only `build_plan` and the runtime need a GPU; shape profiles, flag checks and the manifest entries are
plain Python and unit-tested everywhere (the TensorRT calls themselves against tests/fake_tensorrt.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from prumux_deploy.atomic import atomic_file
from prumux_deploy.errors import PruMuxError

INSTALL_HINT = ("pip install 'prumux-deploy[gpu-cu13]' (or [gpu-cu12] where nvidia-smi shows CUDA 12.x; "
                "README, GPU)")


@dataclass(frozen=True)
class ShapeProfile:
    """Batch and sequence ranges of the engine's single optimization profile (inclusive). Fields left None
    take their defaults in `resolve`."""

    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    min_seq: int | None = None
    opt_seq: int | None = None
    max_seq: int | None = None

    def resolve(self, num_instances: int, max_positions: int, default_seq: int = 128) -> "ShapeProfile":
        """Every field set, following the paper's protocol by default: batches of 128*N rows at sequence
        min(default_seq, max_positions). Opt and max batch are rounded up to multiples of N, since a mux group
        is N rows and the graph pads partial groups anyway; a default opt batch is capped at a given max batch
        (`max_batch=8` tunes for 8, not 128*N); min batch stays as given (1 by default: any batch must run).
        Raises PruMuxError for ranges out of order or past the position table."""
        N = num_instances
        max_seq = self.max_seq or min(default_seq, max_positions)
        max_given = None if self.max_batch is None else _round_up(self.max_batch, N)
        opt_batch = _round_up(self.opt_batch or 128 * N, N)
        if self.opt_batch is None and max_given is not None:
            opt_batch = min(opt_batch, max_given)
        resolved = ShapeProfile(min_batch=1 if self.min_batch is None else self.min_batch, opt_batch=opt_batch,
                                max_batch=max(opt_batch, 128 * N) if max_given is None else max_given,
                                min_seq=self.min_seq or 1, opt_seq=self.opt_seq or max_seq, max_seq=max_seq)
        if not 1 <= resolved.min_batch <= resolved.opt_batch <= resolved.max_batch:
            raise PruMuxError(f"batch range must satisfy 1 <= `min_batch` <= `opt_batch` <= `max_batch`, got "
                              f"{resolved.min_batch} / {resolved.opt_batch} / {resolved.max_batch} (opt and max "
                              f"are rounded up to multiples of N={N})")
        if not 1 <= resolved.min_seq <= resolved.opt_seq <= resolved.max_seq:
            raise PruMuxError(f"sequence range must satisfy 1 <= `min_seq` <= `opt_seq` <= `max_seq`, got "
                              f"{resolved.min_seq} / {resolved.opt_seq} / {resolved.max_seq}")
        if resolved.max_seq > max_positions:
            raise PruMuxError(f"`max_seq` {resolved.max_seq} exceeds the model's position table ({max_positions})")
        return resolved

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) [batch, sequence] shapes of every input, of a resolved profile."""
        return ((self.min_batch, self.min_seq), (self.opt_batch, self.opt_seq), (self.max_batch, self.max_seq))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TensorRTOptions:
    """What a TensorRT export takes besides the model: the shape profile and the builder's options."""

    profile: ShapeProfile = field(default_factory=ShapeProfile)
    timing_cache: str | None = None    # file read if present and updated after the build
    version_compatible: bool = False   # TensorRT's VERSION_COMPATIBLE builder flag
    tf32: bool = False                 # let fp32 layers run in TF32 (BuilderFlag.TF32); cleared otherwise

    @property
    def is_default(self) -> bool:
        return self == TensorRTOptions()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def require_tensorrt():
    """Import tensorrt and check for a CUDA GPU, or fail with one line saying what is missing."""
    from prumux_deploy import cuda

    try:
        import tensorrt as trt
    except ImportError:
        raise PruMuxError(f"TensorRT engines need the tensorrt package and an NVIDIA GPU: {INSTALL_HINT}") from None
    cuda.require_gpu("building a TensorRT engine", "build it on the GPU machine it will run on")
    return trt


def gpu_info() -> dict:
    from prumux_deploy import cuda

    return cuda.backend().info()


def set_tf32(trt, config, enabled: bool) -> None:
    """TF32 for fp32 layers exactly as asked: TensorRT sets BuilderFlag.TF32 by default, so an fp32 build
    must clear it (TensorRT Python API, BuilderFlag.TF32: "Enabled by default")."""
    if enabled:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)


def build_plan(onnx_path, plan_path, profile: ShapeProfile, input_names: list[str], options: TensorRTOptions,
               log=print) -> dict:
    """Build and serialize a TensorRT engine from an ONNX file with a resolved profile; returns what the
    manifest records. Raises PruMuxError when TensorRT cannot parse the graph or build the engine."""
    timing_cache, version_compatible = options.timing_cache, options.version_compatible
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PruMuxError(f"TensorRT could not parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile.shapes()
    for name in input_names:
        opt_profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(opt_profile) < 0:
        raise PruMuxError(f"TensorRT refused the optimization profile {lo} .. {opt} .. {hi} for inputs "
                          f"{', '.join(input_names)}; see the TensorRT log above")
    set_tf32(trt, config, options.tf32)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache = None
    if timing_cache is not None:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise PruMuxError(f"{timing_cache}: TensorRT refused this timing cache (made by another TensorRT "
                              "version or GPU?); delete it and build again")
    log(f"building TensorRT engine (profile {lo} .. {opt} .. {hi}, TF32 {'on' if options.tf32 else 'off'})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PruMuxError("TensorRT failed to build the engine; see the TensorRT log above")
    Path(plan_path).write_bytes(bytes(serialized))
    if cache is not None:  # keep the cache for the next build (it is the user's file, not part of OUT)
        with atomic_file(timing_cache, force=True) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    return {"tensorrt": trt.__version__, **gpu_info(), "strongly_typed": bool(flags),
            "version_compatible": version_compatible, "tf32": options.tf32, "profile": profile.to_dict()}
