"""The engine interface: a Backend builds and loads; a Session runs.

Backends implement only the engine calls (``Backend.build_compiled``, ``Backend.open``,
``Session._run``). The checks every engine needs (dtype, rank, image size, fixed batch) and the
split-and-pad for fixed-batch models live here once. (After Polygraphy's runner base class.)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnv3.errors import ModelError
from mnv3.meta import ModelMeta, PreprocessCfg
from mnv3.quant_mode import QuantMode


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, as data: the registry, ``mnv3 run``'s planner, build's checks
    and the CLI's choices read this, so no code elsewhere branches on a backend's name."""

    modes: tuple[QuantMode, ...]  # the quant modes it builds
    calib_methods: tuple[str, ...] = ()  # int8 activation-range methods (--calib-method)
    # Accuracy-aware int8 fallback below the budget (mnv3.gate): "layers" = mnv3 returns the
    # groups ``rank_layers`` measures to float; "accuracy_control" = the engine's own
    # (``options["max_drop"]``, e.g. NNCF); None = the build fails below its budget.
    fallback: str | None = None
    distribution: str = ""  # the pip distribution of the engine
    install_hint: str = ""  # what to run when the engine is missing
    # Runs built models without mnv3's C++ program? (mnv3-infer-cpp links OpenVINO only)
    cpp: bool = False
    # Where its models run: "cpu" and/or "cuda" (the kind of a build's --device)
    devices: tuple[str, ...] = ("cpu",)
    # Compiles the PyTorch network (a checkpoint, or mnv3 run's seeded one), not the ONNX file
    from_network: bool = False
    # Runs one call's batch as S sub-batches at once, each on its own stream (``split=S``):
    # a batch's latency where S single-thread streams beat one S-thread request
    split_batch: bool = False

    def builds(self, mode: QuantMode) -> bool:
        return mode in self.modes


@dataclass
class BuildConfig:
    """What a backend needs to compile one model (validated by ``mnv3.build`` before it gets here)."""

    quant_mode: QuantMode
    shape_mutable: bool
    batch_size: int
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    calib_files: list[Path] = field(default_factory=list)  # already chosen, sorted, reproducible
    calib_method: str = "minmax"
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific knobs
    # Layers the accuracy fallback returns to float (names from ``Backend.rank_layers``).
    float_layers: list[str] = field(default_factory=list)
    # A backend's cache across the rounds of one build (calibration, the prepared graph):
    # the same BuildConfig object is passed to every round and dropped after the build.
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    # What the model is made from (meta.json's ``source``: a checkpoint with its arch and
    # layout, or a seeded random network): for a backend that compiles the PyTorch network
    # rather than the ONNX file (torch).
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompiledModel:
    """What ``Backend.build_compiled`` returns: the file it wrote and what it learned doing so."""

    compiled_file: str  # name inside the model directory
    op_precisions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """One inference engine. Registered by name in ``mnv3.backends``."""

    name: str = ""
    capabilities: Capabilities = Capabilities(modes=())

    @classmethod
    def missing(cls) -> str | None:
        """Why the engine cannot be used here (its import error), or None when it can."""
        return None

    def runs_here(self, mode: QuantMode) -> bool:
        """Whether this CPU runs ``mode`` in its own precision (bf16 needs bf16 hardware)."""
        return self.capabilities.builds(mode)

    @abc.abstractmethod
    def version(self) -> str:
        """The engine's version string (recorded in meta.json)."""

    @abc.abstractmethod
    def build_compiled(self, onnx_path: Path, out_dir: Path, cfg: BuildConfig) -> CompiledModel:
        """Quantize / convert ``onnx_path`` into ``out_dir`` (a temporary directory)."""

    @abc.abstractmethod
    def open(self, model_dir: Path, meta: ModelMeta, threads: int | None = None,
             **options: Any) -> Session:
        """Load a built model; ``threads=None`` lets the engine choose."""

    def rank_layers(self, out_dir: Path, cfg: BuildConfig, images: np.ndarray) -> list[dict]:
        """The int8 layers of the model just built into ``out_dir``, most harmful first.

        Each entry: ``{"layer": name, "score": error it adds, ...}``; names are what
        ``cfg.float_layers`` accepts. Only backends whose ``capabilities.fallback`` is "layers".
        """
        raise NotImplementedError(f"the {self.name} backend has no accuracy-aware fallback")


class Session(abc.ABC):
    """A loaded model. Call ``predict``; backends implement ``_run`` for one engine call."""

    # Calls a caller should keep in flight at once to get this session's speed: >1 where
    # ``mnv3 tune`` measured several requests in flight fastest (``mnv3.load`` sets it).
    in_flight: int = 1
    # Sub-batches one call's batch runs as, at once (``mnv3.load(split=S)``, a tuned setting)
    split: int = 1

    def __init__(self, meta: ModelMeta):
        self.meta = meta

    @property
    def fixed_batch(self) -> int | None:
        return None if self.meta.shape_mutable else int(self.meta.batch_size)

    @property
    def image_size(self) -> int:
        return int(self.meta.input_shape[-1])

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One engine call on a contiguous float32 batch that already fits the model."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One engine call, no splitting: for benchmarks, which must measure exactly one query."""
        self.check_input(batch)
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise ModelError(
                f"model {self.meta.name} has a fixed batch of {self.fixed_batch} but got "
                f"{batch.shape[0]} images in one call; use batch {self.fixed_batch}, "
                "call predict() (it splits and pads), or build with --shape-mutable true"
            )
        return self._run(np.ascontiguousarray(batch))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits float32 [N, classes] for images float32 [N, 3, H, W], any N >= 1.

        A fixed-batch model gets full batches: larger inputs are split and the last partial
        batch is padded (with copies of its last image), so callers never have to care.
        """
        self.check_input(x)
        x = np.ascontiguousarray(x)
        b = self.fixed_batch
        if b is None or x.shape[0] == b:
            return self._run(x)
        outputs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start:start + b]
            n = chunk.shape[0]
            if n < b:
                pad = np.repeat(chunk[-1:], b - n, axis=0)
                chunk = np.concatenate([chunk, pad], axis=0)
            outputs.append(self._run(chunk)[:n])
        return np.concatenate(outputs, axis=0)

    def check_input(self, x: Any) -> None:
        if not isinstance(x, np.ndarray):
            raise ModelError(f"expected a numpy float32 array [N, 3, H, W], got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ModelError(
                f"expected float32 input, got {x.dtype}; convert with x.astype(np.float32) "
                "after preprocessing (mnv3.data.preprocess)"
            )
        expected = tuple(int(d) for d in self.meta.input_shape[1:])
        if x.ndim != 4 or x.shape[0] < 1 or tuple(x.shape[1:]) != expected:
            raise ModelError(
                f"expected input shape [N, {', '.join(map(str, expected))}] with N >= 1, "
                f"got {list(x.shape)}; preprocess images with the model's meta.json settings"
            )

    def close(self) -> None:
        """Release engine resources (optional)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
