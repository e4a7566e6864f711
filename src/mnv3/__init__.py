"""mnv3: deploy a trained PyTorch MobileNetV3 for fast inference and prove its accuracy and speed.

The pipeline is the API: export -> build -> infer / evaluate -> bench -> run.
Heavy modules (torch, onnxruntime) are imported lazily so ``import mnv3`` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> "module:attribute"; resolved on first use. No public name may also name a
# submodule: importing mnv3.<name> would bind the module over the function.
_LAZY = {
    "create_model": "mnv3.models:create_model",
    "list_models": "mnv3.models:list_models",
    "load_checkpoint": "mnv3.models:load_checkpoint",
    "export_onnx": "mnv3.export:export_onnx",
    "build": "mnv3.builder:build",
    "load": "mnv3.backends:load",
    "list_backends": "mnv3.backends:list_backends",
    "infer": "mnv3.inference:infer",
    "evaluate": "mnv3.evaluation:evaluate_files",
    "benchmark": "mnv3.bench:benchmark",
    "run_all": "mnv3.pipeline:run_all",
    "serve": "mnv3.serving:serve",
    "ModelMeta": "mnv3.meta:ModelMeta",
    "PreprocessCfg": "mnv3.meta:PreprocessCfg",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mnv3' has no attribute {name!r}") from None
    module, attr = target.split(":")
    return getattr(import_module(module), attr)
