"""The smallest backend mnv3 accepts: float32 only, the source ONNX run by ONNX Runtime.

It is here to prove the claim of issue 14: a new engine is one module like this plus one
``mnv3.backends.register`` line; the registry, build's checks, ``mnv3 run``'s planner and the
contract tests pick it up from its ``capabilities`` alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mnv3.backends.base import Backend, BuildConfig, Capabilities, CompiledModel, Session
from mnv3.quant_mode import QuantMode

FILE = "model.onnx"


class MinimalBackend(Backend):
    name = "minimal"
    capabilities = Capabilities(modes=(QuantMode.FLOAT32,), distribution="onnxruntime",
                                install_hint='pip install "mnv3"')

    def version(self) -> str:
        return "0.1"

    def build_compiled(self, onnx_path: Path, out_dir: Path, cfg: BuildConfig) -> CompiledModel:
        shutil.copyfile(onnx_path, out_dir / FILE)  # the batch is already set by the builder
        return CompiledModel(FILE, op_precisions={"Conv": "float32"})

    def open(self, model_dir: Path, meta, threads=None, **options) -> Session:
        return MinimalSession(meta, Path(model_dir) / meta.compiled_file)


class MinimalSession(Session):
    def __init__(self, meta, path: Path):
        import onnxruntime as ort

        super().__init__(meta)
        self._sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self.meta.input_name: batch})[0]
