"""A compiled AOTInductor package at run time: the session (CPU, or CUDA with pinned buffers
and CUDA graphs for a fixed batch) and the GPU's description. Imported by
``TorchAotBackend.open`` only; the build side is ``mnv3.backends.torch_aot``.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mnv3.backends.base import Session
from mnv3.backends.torch_aot import (CUDA_WARMUP, parse_device, private_kernel_cache,
                                     torch_device)
from mnv3.errors import BackendUnavailable, ModelError
from mnv3.meta import ModelMeta


def load_device(meta: ModelMeta, requested: str | None):
    """The device a built model runs on here: its build device, or the GPU asked for."""
    built = (meta.extra or {}).get("device", "cpu")
    kind = parse_device(built)[0]
    if requested is not None and parse_device(requested)[0] != kind:
        raise ModelError(f"{meta.name} was compiled for {built} and cannot run on {requested}; "
                         f"rebuild it with --device {requested}")
    try:
        return torch_device(requested or built)
    except BackendUnavailable as e:
        raise ModelError(f"{meta.name} was compiled for {built}: {e}") from None


class TorchAotSession(Session):
    def __init__(self, meta: ModelMeta, package: Path, threads: int | None,
                 device: str | None, cuda_graphs: bool | None):
        import torch

        super().__init__(meta)
        self.device = load_device(meta, device)
        self.dtype = getattr(torch, (meta.extra or {}).get("dtype", "float32"))
        self.channels_last = bool((meta.extra or {}).get("channels_last"))
        self.batch_range = (meta.extra or {}).get("batch_range")
        if threads is not None:  # process-wide in torch: the last session opened sets it
            torch.set_num_threads(int(threads))
        self.threads = threads or torch.get_num_threads()
        cuda = self.device.type == "cuda"
        try:
            with self._on_device(), private_kernel_cache():  # it unpacks the .so there
                # On CUDA the runner's pool of model instances asks cudaEventQuery whether the
                # last run finished, which a stream capture forbids: run it single-threaded
                # (CudaRunner serialises its plain calls; graph replays need no runner).
                self._runner = load_package(package, cuda, self.device.index or 0)
        except RuntimeError as e:
            raise ModelError(f"torch could not load {package}: {str(e).splitlines()[0]}; "
                             "rebuild it with this torch") from e
        self._cuda = CudaRunner(self) if self.device.type == "cuda" else None
        if self._cuda is not None:
            self._cuda.use_graphs = self.fixed_batch is not None if cuda_graphs is None \
                else bool(cuda_graphs)

    def _on_device(self):
        import torch

        return torch.cuda.device(self.device) if self.device.type == "cuda" \
            else contextlib.nullcontext()

    def _prepare(self, x):
        import torch

        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        n = batch.shape[0]
        if self.batch_range and not self.batch_range[0] <= n <= self.batch_range[1]:
            raise ModelError(f"{self.meta.name} was compiled for batches {self.batch_range[0]}"
                             f"..{self.batch_range[1]}, got {n}; call predict() in smaller "
                             "batches or rebuild with a larger --batch-size")
        if self._cuda is not None:
            return self._cuda.run(batch)
        with torch.no_grad():
            out = self._runner(self._prepare(torch.from_numpy(batch)))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float().numpy()

    def device_report(self, reset: bool = False) -> dict[str, Any] | None:
        """Device time per call (CUDA events) and the GPU; None on the CPU. ``reset``
        starts the device times afresh after reporting them."""
        if self._cuda is None:
            return None
        report = self._cuda.report()
        if reset:
            self._cuda.reset_times()
        return report


def load_package(package: Path, cuda: bool, index: int):
    """``aoti_load_package`` single-threaded on the GPU ``index`` where this torch has those
    arguments (2.7 on), plainly elsewhere (the device context then picks the GPU)."""
    import inspect

    import torch

    load = torch._inductor.aoti_load_package
    known = inspect.signature(load).parameters
    kwargs = {}
    if cuda and "run_single_threaded" in known:
        kwargs["run_single_threaded"] = True
    if cuda and "device_index" in known:
        kwargs["device_index"] = index
    return load(str(package), **kwargs)


class CudaRunner:
    """A session's GPU path: per calling thread (one per bench stream) its own CUDA stream and
    pinned host buffers per batch size; CUDA-event timing of the device work; for a fixed
    batch, a CUDA graph captured after ``CUDA_WARMUP`` calls and replayed per call.

    A capture that fails falls back to plain calls, with a note in ``report``.
    """

    def __init__(self, session: TorchAotSession):
        import torch

        self.s, self.use_graphs = session, False
        self.local = threading.local()
        # The runner is loaded single-threaded: one plain call at a time. A capture holds it
        # too, from start to end: torch.cuda.graph synchronizes the device and empties the
        # allocator's cache on entry, which would break another thread's capture.
        self.runner_lock = threading.RLock()
        # device ms per call, by batch size; the lock keeps a report (which walks the dict)
        # from seeing another thread add a batch size
        self.device_ms: dict[int, list[float]] = collections.defaultdict(list)
        self.times_lock = threading.Lock()
        if session.dtype == torch.float32:
            # force_float32 means IEEE float32: cuDNN convolutions default to TF32 (10-bit
            # mantissa), which is a different precision. Process-wide, as torch's flags are.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.notes: list[str] = []
        self.graphs = 0

    def _buffers(self, n: int) -> dict:
        import torch

        if not hasattr(self.local, "stream"):
            with self.s._on_device():
                self.local.stream, self.local.buffers = torch.cuda.Stream(), {}
        if n not in self.local.buffers:
            shape = (n, *(int(d) for d in self.s.meta.input_shape[1:]))
            self.local.buffers[n] = {"host_in": torch.empty(shape, pin_memory=True),
                                     "dev_in": torch.empty(shape, device=self.s.device),
                                     "host_out": None, "graph": None, "graph_out": None,
                                     "calls": 0}
        return self.local.buffers[n]

    def _forward(self, dev_in):
        with self.runner_lock:
            out = self.s._runner(self.s._prepare(dev_in))
        return out[0] if isinstance(out, (list, tuple)) else out

    def _capture(self, buf) -> None:
        import torch

        try:
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads may copy, allocate and replay while this one captures
            with self.runner_lock, torch.cuda.graph(graph, stream=self.local.stream,
                                                    capture_error_mode="thread_local"):
                buf["graph_out"] = self._forward(buf["dev_in"])
            buf["graph"] = graph
            self.graphs += 1
        except RuntimeError as e:  # kernels that cannot be captured: run plainly
            self.use_graphs = False
            self.notes.append(f"CUDA graph capture failed, running without: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        buf = self._buffers(batch.shape[0])
        stream = self.local.stream
        buf["host_in"].numpy()[...] = batch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with self.s._on_device(), torch.cuda.stream(stream), torch.no_grad():
            buf["dev_in"].copy_(buf["host_in"], non_blocking=True)
            if self.use_graphs and buf["graph"] is None and buf["calls"] >= CUDA_WARMUP:
                self._capture(buf)
            start.record(stream)
            if buf["graph"] is not None:
                buf["graph"].replay()
                out = buf["graph_out"]
            else:
                out = self._forward(buf["dev_in"])
            end.record(stream)
            if buf["host_out"] is None or tuple(buf["host_out"].shape) != tuple(out.shape):
                buf["host_out"] = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
            buf["host_out"].copy_(out.float(), non_blocking=True)
        stream.synchronize()
        buf["calls"] += 1
        with self.times_lock:
            self.device_ms[batch.shape[0]].append(start.elapsed_time(end))
        return buf["host_out"].numpy().copy()

    def report(self) -> dict[str, Any]:
        """Device time over all calls and per batch size (CUDA events), graphs, the GPU."""
        with self.times_lock:
            by_batch = {n: list(ms) for n, ms in sorted(self.device_ms.items())}
        every = [ms for calls in by_batch.values() for ms in calls]
        return {"device": str(self.s.device), "gpu": gpu_info(self.s.device.index or 0),
                "cuda_graphs": self.graphs > 0, "device_time": _ms_stats(every),
                "device_time_by_batch": {n: _ms_stats(ms) for n, ms in by_batch.items()},
                "tf32": bool(torch_flags_tf32()), "notes": list(self.notes)}

    def reset_times(self) -> None:
        """Forget the device times so far (a caller measuring one setting after another)."""
        with self.times_lock:
            self.device_ms.clear()


def _ms_stats(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    return {"calls": len(ms), "avg_ms": float(np.mean(ms)),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def torch_flags_tf32() -> bool:
    import torch

    return torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32


def gpu_info(index: int) -> dict[str, Any]:
    """The GPU's name, memory, driver and clocks (nvidia-smi when present), like the CPU's."""
    import torch

    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {"index": index, "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}",
                            "cuda": torch.version.cuda}
    query = "driver_version,clocks.sm,clocks.max.sm,clocks.mem"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader",
                              f"--id={index}"], capture_output=True, text=True, timeout=10)
        fields = [f.strip() for f in out.stdout.strip().split(",")]
        if out.returncode == 0 and len(fields) == 4:
            info.update(driver=fields[0], sm_clock=fields[1], sm_clock_max=fields[2],
                        mem_clock=fields[3])
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None  # no nvidia-smi on PATH: the rest comes from torch
    return info
