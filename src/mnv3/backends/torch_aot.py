"""PyTorch engine compiled ahead of time: torch.export + AOTInductor into ``model.pt2``.

The package loads with torch alone (``torch._inductor.aoti_load_package``), without mnv3's
model code. It is compiled from the PyTorch network, not from the ONNX file: the builder hands
the backend the source it already describes (``BuildConfig.source``: a checkpoint with its
arch / layout, or a seeded random network); an ONNX file alone cannot be turned back into
PyTorch here (no converter is installed), so ``--onnx`` is refused with a hint to use
``--weights``. The builder's fidelity check against float32 ONNX Runtime still applies.

Devices and precisions (``--device cpu|cuda[:N]``, a build option):

* cpu: float32 everywhere; float16 / bfloat16 only on a CPU that computes them (AVX512-FP16 /
  AMX-FP16, AVX512-BF16 / AMX-BF16; ``runs_here``), refused elsewhere, because torch would
  emulate them in float32 at a fraction of the speed.
* cuda: float32 (IEEE: TF32 off), float16 and bfloat16 weights and activations. A fixed-batch
  model is captured in a CUDA graph after warm-up and replayed per call; each calling thread
  gets its own stream and pinned host buffers, and the device work is timed with CUDA events
  (``device_report``, which ``mnv3 bench`` prints). Measured on an H200 with
  ``benchmarks/gpu_check.py`` (README, "On an NVIDIA GPU").

int8 (``qint8_mixed_float32``: X86InductorQuantizer quantizes a float32 graph) runs on the CPU
through PT2E quantization, which torch 2.13 no longer ships: it is torchao's
(``pip install "mnv3[torch-int8]"``), and without it int8 is refused with that line. torchao's
X86InductorQuantizer makes convolutions and linear layers int8 (per-channel int8 weights,
per-tensor uint8 activations, calibrated on the build's images), the rest float32; with
``reduce_range`` where the CPU's u8 x s8 multiply-add saturates (no VNNI, as the quantizer's
own documentation advises and issue 12 measured for ONNX Runtime). Its layer matcher misses
subclasses of nn.Conv2d in a non-strict export, so ``expose_layers`` marks every convolution
and linear node first, the recipe records how many layers are int8 (``int8_layers``), and a
build that quantized none is refused. The builder holds it to the accuracy budget like any
int8 build (no layer fallback: below budget is refused) and ships float32 instead where int8
is slower. EfficientNet-Lite0 (real weights, 50 of 50 layers int8, AVX2, reduce_range;
README, "PyTorch backend"): 97.25% top-1 agreement with float32 on 400 held-out images, so
refused. Speed, measured through torchao 0.18 (``benchmarks/torch_int8_probe.py``; every
layer int8 there, with or without ``expose_layers``), MobileNetV3-Small batch 8, 1 thread,
AMD EPYC AVX2 (no VNNI), 7 interleaved rounds, other jobs sharing the 2 cores: int8 189 vs
float32 95 images/s (x1.99), again 123 vs 69 (x1.62); at 2 threads under heavy load x0.87
(OpenMP barriers collapse there, so that figure says little). On CUDA, int8 is refused (the quantizer targets
x86 CPUs).

Layout on the CPU (``benchmarks/torch_vs_engines.py --channels-last --threads 1``, Small batch
8, AVX2, 7 interleaved rounds): contiguous NCHW 221 images/s, channels_last 206 (slower in 6 of
7 rounds), so the CPU compiles NCHW. Compile time: Small 262-448 s wall on the 2 shared cores
(load average 7-13), Large 358 s wall = 86 CPU s; Small x0.35 at 32x32 48 CPU s (36 with the
headers precompiled by an earlier build of the same process).

A mutable batch is a dynamic batch dimension with a declared range (1..``MAX_BATCH``, or up
to --batch-size when larger); calls outside it are a ModelError. Inductor's kernel cache
lives in a temporary folder of the process, removed when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import resource
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any


from mnv3.backends.base import Backend, BuildConfig, Capabilities, CompiledModel, Session
from mnv3.errors import BackendUnavailable, BuildError, UsageError
from mnv3.meta import ModelMeta
from mnv3.quant_mode import QuantMode

PACKAGE_FILE = "model.pt2"
MAX_BATCH = 256  # the declared upper end of a mutable batch (the 1..256)
CUDA_WARMUP = 3  # calls before a CUDA graph is captured (lazy init, autotuning, allocator)
# The memory layout per device. CPU: measured, see the module docstring. CUDA: H200, Small
# float16 (gpu_check.py): channels_last as fast as NCHW at batch 8, x1.41 at 64, x1.62 at 256.
CHANNELS_LAST = {"cpu": False, "cuda": True}
DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

_MISSING = None if importlib.util.find_spec("torch") else "No module named 'torch'"
INT8_INSTALL = 'pip install "mnv3[torch-int8]"'  # torchao: PT2E quantization left torch in 2.13
# --calib-method -> torchao's activation observer: the quantizer's default histogram search for
# the range of least quantization error (the entropy family's idea; the first is the backend's
# default), or min/max. Lite0 on AVX2, 400 held-out images, every layer int8
# (benchmarks/torch_int8_lite0.py): entropy 97.25% top-1 agreement with float32; minmax 97.75%.
ACTIVATION_OBSERVERS = {"entropy": "HistogramObserver", "minmax": "MinMaxObserver"}


def has_torchao() -> bool:
    return importlib.util.find_spec("torchao") is not None


def parse_device(text: str | None) -> tuple[str, int | None]:
    """``cpu`` / ``cuda`` / ``cuda:N`` -> (kind, index); a UsageError for anything else."""
    m = DEVICE_RE.match(str(text or "cpu").strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise UsageError(f"--device must be cpu, cuda or cuda:N (N = GPU index), got {text!r}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def torch_device(text: str | None):
    """The torch.device for ``text``, checked against this machine (clear errors, no GPU)."""
    import torch

    kind, index = parse_device(text)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"--device {text} needs an NVIDIA GPU, but torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda or 'none'}); "
            "use --device cpu")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise UsageError(f"--device {text}: this machine has {count} GPU(s), cuda:0.."
                         f"cuda:{count - 1}")
    return torch.device("cuda", index or 0)


def cpu_computes(float_type: str) -> bool:
    """Whether this CPU computes ``float_type`` natively (else torch emulates it in fp32)."""
    from mnv3.sysinfo import float16_support

    if float_type == "float32":
        return True
    return float16_support()["bf16" if float_type == "bfloat16" else "fp16"]


def torch_dtype(mode: QuantMode, device) -> Any:
    """The dtype of weights and activations for ``mode`` on ``device``; refuses an emulated one,
    and int8 where it cannot be built (a GPU, no torchao)."""
    import torch

    if mode.int8 and device.type != "cpu":
        raise UsageError(f"{mode} on the torch backend runs on the CPU (torchao's "
                         "X86InductorQuantizer); on a GPU build force_float16 or force_bfloat16")
    if mode.int8 and not has_torchao():
        raise BackendUnavailable(f"{mode} on the torch backend needs torchao (PT2E quantization "
                                 f"left torch in 2.13): {INT8_INSTALL}")

    if device.type == "cpu" and not cpu_computes(mode.float_type):
        from mnv3.sysinfo import isa_label

        raise BackendUnavailable(
            f"{mode} on the CPU needs {mode.float_type} arithmetic (AVX512/AMX "
            f"{'BF16' if mode.float_type == 'bfloat16' else 'FP16'}); this CPU is "
            f"{isa_label()}, where torch would emulate it in float32. Use force_float32, or "
            "--device cuda on a machine with an NVIDIA GPU")
    return {"float32": torch.float32, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[mode.float_type]


def source_module(source: dict):
    """The eval-mode PyTorch network the model is built from, rebuilt from meta.json's source.

    A checkpoint (``weights_path`` or ``path``, with the arch and layout it was read as) is
    loaded again and must still have the sha256 it was exported with; a seeded random network
    (``mnv3 run`` without --weights) is re-created from its seed; ``exported_program`` (a file
    of ``torch.export.save``, with its ``exported_program_sha256``) is any other network, e.g.
    the EfficientNet-Lite0 yardstick of ``benchmarks/gpu_check.py``.
    """
    from mnv3.models import create_model, load_checkpoint
    from mnv3.models.checkpoints import is_onnx_file

    if source.get("exported_program"):
        return exported_module(Path(source["exported_program"]),
                               source.get("exported_program_sha256"))
    arch, layout = source.get("arch"), source.get("layout")
    width, classes = source.get("width_mult"), source.get("num_classes")
    if arch and layout and source.get("random_seed") is not None:
        return create_model(arch, layout, width_mult=width or 1.0,
                            num_classes=int(classes or 1000), seed=int(source["random_seed"]))
    ckpt = source.get("weights_path") or source.get("path")
    if arch and layout and ckpt and not is_onnx_file(Path(ckpt)):
        loaded = load_checkpoint(ckpt, arch=arch, layout=layout, width_mult=width,
                                 num_classes=classes)
        want = source.get("weights_sha256") or source.get("sha256")
        if want and loaded.source_sha256 != want:
            raise BuildError(f"checkpoint {ckpt} changed since it was exported (sha256 "
                             f"{loaded.source_sha256[:12]}, expected {want[:12]}); build again")
        return loaded.module
    raise UsageError("the torch backend compiles the PyTorch network, and an ONNX file cannot "
                     "be turned back into one here: build from the checkpoint instead, e.g. "
                     "mnv3 build --backend torch --weights CKPT --quant-mode force_float32 ...")


def save_exported_program(net, path: Path, size: int) -> dict:
    """Write ``net`` (an nn.Module taking N x 3 x size x size) as a ``torch.export.save`` file
    with a free batch (1..MAX_BATCH) and return the build source that names it: any network
    the seed's checkpoints do not describe (e.g. the real EfficientNet-Lite0) built this way."""
    import torch

    from mnv3.meta import sha256_file

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(net.eval(), (torch.zeros(2, 3, size, size),),
                                      dynamic_shapes=({0: batch},), strict=False)
    torch.export.save(program, str(path))
    return {"exported_program": str(path), "exported_program_sha256": sha256_file(path)}


def exported_module(path: Path, want_sha256: str | None):
    """The network of a ``torch.export.save`` file, unchanged since ``want_sha256``."""
    import torch

    from mnv3.meta import sha256_file

    if not path.is_file():
        raise UsageError(f"exported program {path} does not exist; write it with "
                         "torch.export.save(torch.export.export(net, (x,)), PATH)")
    if want_sha256 and sha256_file(path) != want_sha256:
        raise BuildError(f"exported program {path} changed since it was described (sha256 "
                         f"{sha256_file(path)[:12]}, expected {want_sha256[:12]}); build again")
    try:
        return torch.export.load(str(path)).module()
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path} is not a torch.export program torch "
                         f"{torch.__version__} can load: {str(e).splitlines()[0]}") from None


def batch_range(cfg: BuildConfig) -> tuple[int, int] | None:
    """The declared batch range of a mutable model (None: fixed batch)."""
    return (1, max(MAX_BATCH, cfg.batch_size)) if cfg.shape_mutable else None


_CACHE: list[str] = []  # this process's kernel cache folder, made on first use


@contextlib.contextmanager
def private_kernel_cache():
    """Inductor's and Triton's caches in a temporary folder of this process, removed at its
    exit: the package holds what it needs, and the default /tmp/torchinductor_<user> would
    outlive mnv3. One folder per process, so the builds of one ``mnv3 run`` (or test session)
    share the precompiled torch headers (measured: 48 -> 36 CPU s for MobileNetV3-Small x0.35)."""
    if not _CACHE:
        _CACHE.append(tempfile.mkdtemp(prefix="mnv3-inductor-"))
        atexit.register(shutil.rmtree, _CACHE[0], True)
    keys = {"TORCHINDUCTOR_CACHE_DIR": _CACHE[0],
            "TRITON_CACHE_DIR": os.path.join(_CACHE[0], "triton")}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    # the precompiled headers' folder is fixed when torch is imported (/tmp/torchinductor_*)
    from torch._inductor import codecache

    headers = {k: getattr(codecache, k) for k in ("_HEADER_DIR", "_HEADER_LOCK_DIR")
               if hasattr(codecache, k)}
    if len(headers) == 2:
        codecache._HEADER_DIR = os.path.join(_CACHE[0], "precompiled_headers")
        codecache._HEADER_LOCK_DIR = os.path.join(codecache._HEADER_DIR, "locks")
    try:
        yield _CACHE[0]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in headers.items():
            setattr(codecache, k, v)


def inductor_options(device) -> dict[str, Any]:
    """The AOTInductor options a package is compiled with (recorded in meta.json).

    freezing: weights become constants, so Inductor folds them and prepacks convolution weights
    for oneDNN on the CPU (the main CPU speed-up)."""
    return {"freezing": True}


def compile_package(module, cfg: BuildConfig, device, dtype, path: Path) -> dict[str, Any]:
    """torch.export ``module`` and compile it with AOTInductor into ``path``; what was done."""
    import torch

    size = int(cfg.preprocess.crop)
    rng = batch_range(cfg)
    example_batch = cfg.batch_size if rng is None else max(2, min(cfg.batch_size, 8))
    last = cfg.options.get("channels_last")  # a knob for measuring; None: the measured choice
    last = CHANNELS_LAST[device.type] if last is None else bool(last)
    layout = torch.channels_last if last else torch.contiguous_format
    module = module.to(device=device, dtype=dtype, memory_format=layout)
    if not isinstance(module, torch.fx.GraphModule):  # an exported program's is traced in
        module = module.eval()                         # eval mode and refuses .eval()
    x = torch.randn(example_batch, 3, size, size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=layout)
    dynamic = None
    if rng is not None:
        dynamic = ({0: torch.export.Dim("batch", min=rng[0], max=rng[1])},)
    options = inductor_options(device)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    int8 = None
    with torch.no_grad(), private_kernel_cache():
        try:
            if cfg.quant_mode.int8:
                module, int8 = quantize_int8(module, x, cfg)
            program = torch.export.export(module, (x,), dynamic_shapes=dynamic, strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                     inductor_configs=dict(options))
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:
            raise BuildError(f"torch.export / AOTInductor failed to compile the network: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return {"compile_s": round(time.perf_counter() - t0, 1),
            "compile_cpu_s": round(cpu_seconds() - cpu0, 1), "inductor_configs": options,
            "channels_last": layout is torch.channels_last,
            "op_precisions": graph_precisions(program), "int8": int8}


def quantize_int8(module, x, cfg: BuildConfig):
    """PT2E int8 of ``module`` calibrated on the build's images: (converted module, recipe).

    ``reduce_range`` (7-bit activations) where u8 x s8 saturates (``int8_saturates``): Lite0
    on AVX2 without it, the compiled package agreed with float32 on 85.50% of 400 images where
    its own fake-quantized graph agreed on 97.50% (the int16 sums saturate); with it, 97.25% for
    both (``benchmarks/torch_int8_lite0.py --reduce-range off`` / ``on``)."""
    import dataclasses

    import torch
    from torchao.quantization.pt2e import observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from mnv3.calibration import decode_batches
    from mnv3.sysinfo import int8_isa, int8_saturates

    if not cfg.calib_files:
        raise BuildError("int8 needs calibration images (--calib-dir)")
    reduce = cfg.options.get("reduce_range")  # a knob for measuring; None: this CPU's need
    reduce = int8_saturates() if reduce is None else bool(reduce)
    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce)
    name = ACTIVATION_OBSERVERS[cfg.calib_method]
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=getattr(
        observer, name).with_args(eps=2 ** -12))
    config = dataclasses.replace(config, input_activation=act,
                                 output_activation=act if config.output_activation else None)
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    # captured with a free batch, so calibration runs in batches of its own size whatever the
    # package's batch; the caller exports the converted module again with the package's shapes
    free = ({0: torch.export.Dim("calibration_batch", min=1, max=MAX_BATCH)},)
    captured = torch.export.export(module, (x,), dynamic_shapes=free, strict=False).module()
    prepared = prepare_pt2e(expose_layers(captured), quantizer)
    for batch in decode_batches(cfg.calib_files, cfg.preprocess, 16):
        prepared(torch.from_numpy(batch).to(x.dtype))
    converted = convert_pt2e(prepared)
    quantized, layers = int8_layers(converted)
    if layers and not quantized:
        raise BuildError(f"int8 quantized none of the network's {layers} convolution / linear "
                         "layers, so it would run float32: build force_float32 instead")
    from importlib.metadata import version

    return converted, {
        "quantizer": "torchao X86InductorQuantizer", "torchao": version("torchao"),
        "weights": "int8 per channel", "activations": f"uint8 per tensor, {name}",
        "int8_layers": f"{quantized} of {layers}",
        "reduce_range": reduce, "isa": int8_isa(), "calibration_images": len(cfg.calib_files)}


def _layer_ops():
    import torch

    return {torch.ops.aten.conv2d.default: torch.nn.Conv2d,
            torch.ops.aten.linear.default: torch.nn.Linear}


def expose_layers(graph_module):
    """Mark every convolution and linear node of a non-strict export as the nn layer it is.

    X86InductorQuantizer finds its layers by source module type. A non-strict export records
    only the innermost module's class name, which matches exactly, so a subclass of nn.Conv2d
    (EfficientNet-Lite0's TF-style "same" padding convolutions) was left float32 without a
    word: 1 of Lite0's 50 layers was int8 (torchao 0.18, torch 2.13; pytorch/ao#3914 is the
    same matcher failing on torch_fn). The mark is the metadata a strict export writes."""
    kinds = _layer_ops()
    for node in graph_module.graph.nodes:
        kind = kinds.get(node.target) if node.op == "call_function" else None
        if kind is not None and not node.meta.get("source_fn_stack"):
            node.meta["source_fn_stack"] = [(node.name, kind)]
    return graph_module


def int8_layers(converted) -> tuple[int, int]:
    """(convolution / linear nodes whose weight is dequantized from int8, all of them)."""
    kinds = _layer_ops()
    layers = [n for n in converted.graph.nodes if n.op == "call_function" and n.target in kinds]
    quantized = [n for n in layers if len(n.args) > 1 and "dequantize" in str(
        getattr(n.args[1], "target", ""))]
    return len(quantized), len(layers)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the C++ compiler): what a compile
    costs, whatever else shares the machine (its wall time on 2 busy cores can be 5x this)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def graph_precisions(program) -> dict[str, str]:
    """{aten op: dtype of its output} over the exported graph: what each op type runs in."""
    seen: dict[str, Counter] = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not hasattr(val, "dtype"):
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        seen.setdefault(name, Counter())[str(val.dtype).replace("torch.", "")] += 1
    return {op: "/".join(sorted(c)) for op, c in sorted(seen.items())}


class TorchAotBackend(Backend):
    name = "torch"
    capabilities = Capabilities(
        # int8 with float32 elsewhere only: X86InductorQuantizer quantizes a float32 graph
        modes=(QuantMode.FLOAT32, QuantMode.FLOAT16, QuantMode.BFLOAT16,
               QuantMode.INT8_FLOAT32),
        calib_methods=tuple(ACTIVATION_OBSERVERS), distribution="torch",
        install_hint="pip install torch", devices=("cpu", "cuda"), from_network=True)

    @classmethod
    def missing(cls) -> str | None:
        return _MISSING

    def runs_here(self, mode: QuantMode) -> bool:
        """On this machine's CPU (a GPU build is asked for with --device cuda); int8 with
        torchao installed."""
        return self.capabilities.builds(mode) and cpu_computes(mode.float_type) and \
            (has_torchao() or not mode.int8)

    def version(self) -> str:
        import torch

        return torch.__version__

    def build_compiled(self, onnx_path: Path, out_dir: Path, cfg: BuildConfig) -> CompiledModel:
        device = torch_device(cfg.options.get("device"))
        dtype = torch_dtype(cfg.quant_mode, device)  # refused here, before any slow work
        done = compile_package(source_module(cfg.source), cfg, device, dtype,
                               out_dir / PACKAGE_FILE)
        rng = batch_range(cfg)
        extra = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                 "channels_last": done["channels_last"], "compile_s": done["compile_s"],
                 "compile_cpu_s": done["compile_cpu_s"],
                 "compile_options": {"inductor_configs": done["inductor_configs"],
                                     "dynamic_batch": list(rng) if rng else None},
                 "batch_range": list(rng) if rng else None}
        if done["int8"]:
            extra["int8"] = done["int8"]
        if device.type == "cuda":
            from mnv3.backends.torch_session import gpu_info

            extra["gpu"] = gpu_info(device.index or 0)
        notes = [f"compiled by AOTInductor for {device} in {done['compile_s']} s "
                 f"({done['compile_cpu_s']} CPU s)"]
        return CompiledModel(PACKAGE_FILE, op_precisions=done["op_precisions"], notes=notes,
                             extra=extra)

    def open(self, model_dir: Path, meta: ModelMeta, threads: int | None = None,
             device: str | None = None, cuda_graphs: bool | None = None,
             **options: Any) -> Session:
        """Load the package on the device it was built for (``device="cuda:N"`` picks another
        GPU of the same kind); ``cuda_graphs`` defaults to on for a fixed batch on CUDA."""
        from mnv3.backends.torch_session import TorchAotSession

        return TorchAotSession(meta, Path(model_dir) / meta.compiled_file, threads, device,
                               cuda_graphs)
