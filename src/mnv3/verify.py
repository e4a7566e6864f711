"""Re-check a built model's fidelity on *this* CPU (``mnv3 verify``).

int8 arithmetic differs between CPUs (AVX2 saturates where VNNI does not, see
mnv3.sysinfo.INT8_ISAS), so a model validated on one machine proves nothing on another.
``verify`` re-measures top-1 agreement and logit cosine against the model's float32 source
(meta.json's ``source``, checked by sha256) on images the user gives, holds the result to the
budget the model was built with, and changes nothing unless ``update=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from mnv3.errors import ModelError, UsageError


def verify(model_dir, files: Sequence[os.PathLike], *, source=None, threads: int | None = None,
           update: bool = False) -> dict[str, Any]:
    """Fidelity of ``model_dir`` on this CPU; ``within_budget`` says whether it still holds."""
    from mnv3.backends import load
    from mnv3.fidelity import measure_fidelity
    from mnv3.gate import Budget
    from mnv3.meta import read_meta, sha256_file, write_meta
    from mnv3.sysinfo import int8_isa

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    reference = Path(source) if source else Path(meta.source.get("path", ""))
    if not reference.is_file():
        raise UsageError(f"the float32 source of {model_dir} ({reference}) is not there; pass "
                         "--source MODEL.onnx (the ONNX it was built from)")
    if meta.source.get("sha256") and sha256_file(reference) != meta.source["sha256"]:
        raise ModelError(f"{reference} is not the ONNX {model_dir} was built from (sha256 "
                         "differs); pass the right one with --source")
    files = list(files)
    if not files:
        raise UsageError("verify needs images; pass --images DIR with at least one image")
    budget_dict = (meta.fidelity or {}).get("budget") or {}
    budget = Budget(budget_dict.get("min_agreement", Budget.min_agreement),
                    budget_dict.get("min_cosine", Budget.min_cosine))
    with load(model_dir, threads=threads) as session:
        fidelity = measure_fidelity(reference, session, files, meta.preprocess)
    short = budget.shortfalls(fidelity) if not meta.quant_mode.is_reference else []
    result = {"model": str(model_dir), "isa": int8_isa(),
              "built_on_isa": (meta.extra or {}).get("isa"), "fidelity": fidelity,
              "budget": budget.to_dict(), "within_budget": not short, "shortfalls": short,
              "updated": False}
    if update:
        fidelity.update(budget=budget.to_dict(), within_budget=not short, verified_on=int8_isa())
        if short:
            fidelity["below_budget"] = short
        meta.fidelity = fidelity
        meta.extra = {**(meta.extra or {}), "isa": int8_isa()}
        write_meta(meta, model_dir)
        result["updated"] = True
    return result
