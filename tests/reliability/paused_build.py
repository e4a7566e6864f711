"""Test harness: ``mnv3 build`` (the real CLI entry point) paused at its most fragile moment.

    python paused_build.py READY GO <mnv3 build arguments...>

The engine's ``build_compiled`` runs normally; then the harness writes the temporary model
directory's path to READY and waits (up to 60 s) until the file GO exists. At that moment the
compiled file is written but meta.json is not, so a signal sent now is the worst case for
atomicity, and the test does not depend on timing luck.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from mnv3.backends.onnxruntime import OnnxRuntimeBackend
from mnv3.cli.main import main

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
_original = OnnxRuntimeBackend.build_compiled


def _paused(self, onnx_path, out_dir, cfg):
    result = _original(self, onnx_path, out_dir, cfg)
    ready.write_text(str(out_dir))
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


OnnxRuntimeBackend.build_compiled = _paused
# A shell starts a background job with SIGINT ignored, and Python keeps it ignored: a test
# suite run from one (nohup ... &) would wait out the 60 s. The test's SIGINT stands for a
# terminal's Ctrl-C to a foreground build, so take it as one.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main(sys.argv[3:]))
