"""The networks mnv3 deploys and how they are loaded from checkpoints.

``create_model(arch, layout, width_mult, num_classes, seed)`` builds one; ``load_checkpoint(path)``
reads a trained one (layout, arch, width and classes detected from the file).
"""

from mnv3.models.checkpoints import LoadedModel, load_checkpoint
from mnv3.models.registry import (PREPROCESS_PRESETS, count_params, create_model, list_layouts,
                                  list_models, preprocess_preset)

__all__ = ["create_model", "list_models", "list_layouts", "load_checkpoint", "LoadedModel",
           "PREPROCESS_PRESETS", "preprocess_preset", "count_params"]
