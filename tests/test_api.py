"""The public API in ``mnv3``: every name resolves to what it promises, whatever was imported."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import mnv3


def test_no_public_name_is_shadowed_by_a_submodule():
    """Importing every submodule (as the CLI does) must leave mnv3.build etc. the functions."""
    for mod in pkgutil.walk_packages(mnv3.__path__, "mnv3."):
        try:
            importlib.import_module(mod.name)
        except ModuleNotFoundError as e:  # an optional engine (openvino, nncf) not installed
            assert e.name.split(".")[0] in ("openvino", "nncf"), e
    for name in mnv3.__all__:
        if name != "__version__":
            obj = getattr(mnv3, name)
            assert callable(obj) and not isinstance(obj, type(mnv3)), name


def test_public_names_resolve_in_a_fresh_process():
    code = ("import mnv3, mnv3.builder, mnv3.inference, mnv3.evaluation; "
            "print(mnv3.build.__name__, mnv3.infer.__name__, mnv3.evaluate.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["build", "infer", "evaluate_files"]
