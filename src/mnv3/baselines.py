"""The two baselines every mnv3 speed figure is compared with, as ordinary Sessions.

* ``TorchEagerSession``: the network in PyTorch eager fp32, the way a careful user would run
  it: ``torch.inference_mode()``, weights and input in ``channels_last`` (faster for depthwise
  convolutions on CPU), ``torch.set_num_threads(threads)``.
* ``PlainOrtSession``: ONNX Runtime on the exported fp32 ONNX with default SessionOptions
  (only the intra-op thread count is set, so both sides use the same threads, and warnings
  are off: ``mnv3.onnx_source.cpu_session``).

Because they are ``Session`` subclasses, ``mnv3.bench.benchmark`` measures them with the same
loop, the same pre-filled input and the same statistics as a built model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnv3.backends.base import Session
from mnv3.meta import ModelMeta, PreprocessCfg
from mnv3.quant_mode import QuantMode


def baseline_meta(backend: str, version: str, num_classes: int, image_size: int = 224,
                  preprocess: PreprocessCfg | None = None) -> ModelMeta:
    """A shape-mutable fp32 description so the Session checks and ``benchmark`` work."""
    return ModelMeta(
        backend=backend, backend_version=version, quant_mode=QuantMode.FLOAT32,
        shape_mutable=True, batch_size=1, compiled_file="", compiled_sha256="",
        input_name="input", output_name="logits", input_shape=["batch", 3, image_size, image_size],
        output_shape=["batch", num_classes], num_classes=num_classes,
        preprocess=preprocess or PreprocessCfg(),
    )


class TorchEagerSession(Session):
    """PyTorch eager fp32, channels_last, inference_mode, ``threads`` intra-op threads."""

    def __init__(self, module, *, threads: int | None = None, image_size: int = 224,
                 num_classes: int | None = None):
        import torch

        self._torch = torch
        self._threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: PyTorch has no per-model pool
        self.threads = threads
        self.module = module.eval().to(memory_format=torch.channels_last)
        n = num_classes or getattr(module, "num_classes", None) or 1000
        super().__init__(baseline_meta("pytorch", torch.__version__, n, image_size,
                                       getattr(module, "preprocess", None)))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return self.module(x).numpy()

    def close(self) -> None:
        """Give the process its PyTorch thread count back."""
        self._torch.set_num_threads(self._threads_before)


class PlainOrtSession(Session):
    """ONNX Runtime with default SessionOptions on an fp32 ONNX file (intra-op threads set)."""

    def __init__(self, onnx_path: str | Path, *, threads: int | None = None,
                 num_classes: int | None = None, image_size: int = 224):
        import onnxruntime as ort

        from mnv3.onnx_source import cpu_session

        self.threads = threads
        self.session = cpu_session(onnx_path, threads or None)
        self._input = self.session.get_inputs()[0].name
        out = self.session.get_outputs()[0]
        n = num_classes or (out.shape[-1] if isinstance(out.shape[-1], int) else 1000)
        super().__init__(baseline_meta("onnxruntime", ort.__version__, n, image_size))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: batch})[0]

    def close(self) -> None:
        self.session = None
