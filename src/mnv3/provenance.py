"""Where a model came from, carried with it: who exported an ONNX file, and whether the network
was trained at all.

An ONNX file that ``export_onnx`` writes carries ``metadata_props`` (standard ONNX key/value
strings): ``mnv3.exported_by`` marks it as ours (so ``export --output`` may replace it without
--force, issue 13), and ``mnv3.random_seed`` marks a network with random weights
(``create_model(seed=...)``, ``mnv3 export --demo-weights``). ``build`` copies the mark into
meta.json's ``source``, the same field ``mnv3 run`` fills for its random-init network, so every
command that prints an accuracy can say it is meaningless (``untrained_note``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXPORTED_BY = "mnv3.exported_by"
RANDOM_SEED = "mnv3.random_seed"
NO_SEED = "none"  # random init from the global RNG: untrained, not reproducible


def stamp_onnx(path: str | os.PathLike, *, version: str, random_seed: Any = None,
               untrained: bool = False) -> None:
    """Write our marks into the ONNX file at ``path`` (in place)."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[EXPORTED_BY] = f"mnv3 {version}"
    if untrained:
        props[RANDOM_SEED] = NO_SEED if random_seed is None else str(int(random_seed))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def onnx_marks(path: str | os.PathLike) -> dict[str, str] | None:
    """Our metadata of an ONNX file, or None when ``path`` is not a readable ONNX model."""
    import onnx

    from mnv3.engine_errors import onnx_errors

    try:
        model = onnx.load(str(path), load_external_data=False)
    except onnx_errors():  # DecodeError on non-ONNX bytes
        return None
    if not len(model.graph.node):
        return None  # parsed, but not a model: random bytes can parse as an empty proto
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("mnv3.")}


def exported_by_mnv3(path: str | os.PathLike) -> bool:
    marks = onnx_marks(path)
    return bool(marks and EXPORTED_BY in marks)


def source_fields(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """What meta.json's ``source`` records from the ONNX file's marks: ``random_seed`` (an int,
    or None for an unseeded random init) when the network was never trained."""
    marks = onnx_marks(Path(onnx_path)) or {}
    if RANDOM_SEED not in marks:
        return {}
    seed = marks[RANDOM_SEED]
    return {"random_seed": None if seed == NO_SEED else int(seed), "untrained": True}


def below_budget_note(meta) -> str | None:
    """One line for a model shipped below its accuracy budget (--allow-below-budget), else
    None: every answer it gives carries that."""
    below = (getattr(meta, "fidelity", None) or {}).get("below_budget")
    if not below:
        return None
    return (f"this model was built BELOW its accuracy budget ({'; '.join(below)}); see its "
            "meta.json fidelity")


def quality_notes(meta) -> list[str]:
    """What a user of the model's answers must know: untrained, below its accuracy budget."""
    return [n for n in (untrained_note(meta), below_budget_note(meta)) if n]


def untrained_note(meta) -> str | None:
    """One line for a model whose network has random weights (else None): its accuracy is
    meaningless, its speed and its agreement with float32 are real."""
    src = getattr(meta, "source", None) or {}
    if not (src.get("untrained") or "random_seed" in src):
        return None
    seed = src.get("random_seed")
    how = f"seed {seed}" if seed is not None else "unseeded"
    return (f"UNTRAINED model (random weights, {how}; meta.json source.random_seed): its "
            "top-1/top-5 are meaningless; pass a trained checkpoint (--weights) for real ones")
