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
* cuda: float32, float16 and bfloat16 weights and activations (untested on a GPU so far: no GPU
  was lent to the sessions that wrote this; ``benchmarks/gpu_check.py`` is the check to run).
  A fixed-batch model is captured in a CUDA graph after warm-up and replayed per call; each
  calling thread gets its own stream and pinned host buffers, and the device work is timed
  with CUDA events (``device_report``, which ``mnv3 bench`` prints).

int8 is not offered yet, and the capabilities leave it out (``--quant-mode qint8_*`` is refused
naming the backends that build it). torch 2.13 no longer ships PT2E quantization; it is in
torchao, which mnv3 does not depend on. Measured through torchao 0.18 (PT2E +
X86InductorQuantizer, default config; ``benchmarks/torch_int8_probe.py``), MobileNetV3-Small
batch 8, 1 thread, AMD EPYC AVX2 (no VNNI), 7 interleaved rounds, other jobs sharing the 2
cores: int8 189 vs float32 95 images/s (x1.99), again 123 vs 69 (x1.62); at 2 threads under
heavy load x0.87 (OpenMP barriers collapse there, so that figure says little). It measures
faster, so the issue's rule says offer it: that needs torchao as an optional extra, the
builder's calibration images and the accuracy budget, and is left to a later change.

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
# The memory layout per device. CPU: measured, see the module docstring. CUDA: channels_last is
# the layout cuDNN's fp16/bf16 tensor-core convolutions want (not yet measured on a GPU).
CHANNELS_LAST = {"cpu": False, "cuda": True}
DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

_MISSING = None if importlib.util.find_spec("torch") else "No module named 'torch'"


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
    """The dtype of weights and activations for ``mode`` on ``device``; refuses an emulated one."""
    import torch

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
    (``mnv3 run`` without --weights) is re-created from its seed.
    """
    from mnv3.models import create_model, load_checkpoint
    from mnv3.models.checkpoints import is_onnx_file

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
    module = module.to(device=device, dtype=dtype, memory_format=layout).eval()
    x = torch.randn(example_batch, 3, size, size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=layout)
    dynamic = None
    if rng is not None:
        dynamic = ({0: torch.export.Dim("batch", min=rng[0], max=rng[1])},)
    options = inductor_options(device)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with torch.no_grad(), private_kernel_cache():
        try:
            program = torch.export.export(module, (x,), dynamic_shapes=dynamic, strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                     inductor_configs=dict(options))
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:
            raise BuildError(f"torch.export / AOTInductor failed to compile the network: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return {"compile_s": round(time.perf_counter() - t0, 1),
            "compile_cpu_s": round(cpu_seconds() - cpu0, 1), "inductor_configs": options,
            "channels_last": layout is torch.channels_last,
            "op_precisions": graph_precisions(program)}


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
        modes=(QuantMode.FLOAT32, QuantMode.FLOAT16, QuantMode.BFLOAT16),
        distribution="torch", install_hint="pip install torch", devices=("cpu", "cuda"),
        from_network=True)

    @classmethod
    def missing(cls) -> str | None:
        return _MISSING

    def runs_here(self, mode: QuantMode) -> bool:
        """On this machine's CPU (a GPU build is asked for with --device cuda)."""
        return self.capabilities.builds(mode) and cpu_computes(mode.float_type)

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
