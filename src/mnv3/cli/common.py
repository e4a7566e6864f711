"""Small helpers shared by subcommands: parsing lists, writing JSON for machines."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from mnv3.atomic import atomic_write_text
from mnv3.errors import UsageError


def add_parser(sub, name: str, module_doc: str, func) -> argparse.ArgumentParser:
    """A subparser whose --help is the command module's docstring (first line = summary)."""
    summary, _, body = (module_doc or "").strip().partition("\n")
    p = sub.add_parser(
        name, help=summary, description=(summary + "\n" + body).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def str2bool(text: str) -> bool:
    """``true`` or ``false`` (any case): what the flags' help says, and nothing else."""
    t = text.strip().lower()
    if t in ("true", "false"):
        return t == "true"
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def dataset_dir(folder: str, synsets: str | None) -> tuple[str, str | None, str | None]:
    """--dataset DIR: (DIR/images, DIR/labels.txt or None, --synsets or DIR/synsets.txt or None)
    for a folder laid out like the demo set and ../shared/datasets/imagenet-sample-500."""
    from mnv3.errors import DataError

    d = Path(folder)
    if not (d / "images").is_dir():
        raise DataError(f"--dataset {d}: expected a folder holding images/ (and labels.txt, "
                        "synsets.txt); for a plain folder of images use --image-dir")
    labels = d / "labels.txt"
    syn = synsets or (str(d / "synsets.txt") if (d / "synsets.txt").is_file() else None)
    return str(d / "images"), str(labels) if labels.is_file() else None, syn


def human_print(json_path) -> Callable[..., None]:
    """``print`` for the human lines: to stderr when ``--json -`` makes stdout the JSON's alone,
    so ``mnv3 CMD --json - | python -m json.tool`` always parses (issue 13)."""
    if json_path is not None and str(json_path) == "-":
        return functools.partial(print, file=sys.stderr)
    return print


def write_json(path: str | Path | None, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` ('-' = stdout); nothing when path is None."""
    if path is None:
        return
    text = json.dumps(data, indent=2, default=str) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        try:
            atomic_write_text(path, text)
        except OSError as e:  # the work is done; only this copy of the summary failed
            raise UsageError(f"cannot write --json {path} ({e.strerror or e}); choose a "
                             "writable path (the output above is complete)") from None


def duration(text: str) -> float:
    """``600``, ``90s``, ``10m`` or ``1h`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 600, 90s or 10m, "
                                         f"got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
