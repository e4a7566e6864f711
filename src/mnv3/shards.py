"""One inference run split over several drivers, and their result files merged (issue 18).

    mnv3 infer --model M --dataset D --shard 1/4 --output-dir out/s1   # machine (or cluster) 1
    ...                                                                # 2/4, 3/4 elsewhere
    mnv3 infer --model M --dataset D --shard 4/4 --output-dir out/s4
    mnv3 merge out/s1 out/s2 out/s3 out/s4 --output-dir out/all

Why: one driver receives every image's logits and writes every line, so one run tops out at
what one driver process handles however many machines its Ray cluster has (README, "infer on
a Ray cluster"). Shards run independently, each on its own machine or cluster, with nothing
shared but the image list and the model folder.

Shard K of N is the K-th contiguous slice of the image list (after ``image_num``), its images
named as the whole list names them, so the shards' files concatenated in order are the
unsharded run's files byte for byte (tested). Each shard's infer.json records which slice it
ran, of which list (a sha256 of the names) and with which model (the compiled file's sha256);
``merge`` refuses shards that do not fit together (another list, model or decode, a missing or
repeated shard) before writing anything, and publishes the merged files as ``infer`` does:
each file whole, eval_result.txt last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnv3.atomic import atomic_write_text, normal_mode
from mnv3.data.files import read_text, shown
from mnv3.defaults import SAME_PIXELS
from mnv3.errors import DataError, UsageError

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text) -> Shard:
        """'K/N' (or a (K, N) pair, or a Shard), checked: 1 <= K <= N."""
        if isinstance(text, Shard):
            return text
        if isinstance(text, (tuple, list)) and len(text) == 2:
            k, n = (int(v) for v in text)
        else:
            m = _SHARD.fullmatch(str(text))
            if not m:
                raise UsageError(f"--shard takes K/N (shard K of N, counted from 1), got "
                                 f"{shown(text)}; e.g. --shard 2/4")
            k, n = int(m.group(1)), int(m.group(2))
        if not 1 <= k <= n:
            raise UsageError(f"--shard {k}/{n}: K must be between 1 and N; e.g. --shard 1/{max(n, 2)}")
        return cls(k, n)

    def bounds(self, total: int) -> tuple[int, int]:
        """[start, stop) of this shard in a list of ``total`` images; shard sizes differ by at
        most one."""
        if total < self.count:
            raise UsageError(f"--shard {self}: {total} images cannot fill {self.count} shards; "
                             f"use at most {total}")
        return (self.index - 1) * total // self.count, self.index * total // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def take_shard(samples: list, names: dict, shard, meta) -> tuple[list, dict | None]:
    """(this shard's samples, its record for infer.json); everything, None without a shard.

    ``names`` are the whole list's display names (``inference._display_names``): a shard's
    images keep them, so its lines are the unsharded run's lines. The record carries the
    model's below-budget note, which ``merge`` repeats beside the accuracy it prints."""
    from mnv3.provenance import below_budget_note

    if shard is None:
        return samples, None
    shard = Shard.parse(shard)
    start, stop = shard.bounds(len(samples))
    record = {"index": shard.index, "count": shard.count, "first": start,
              "images": stop - start, "total": len(samples),
              "list_sha256": _list_sha256(names[s.path] for s in samples),
              "model_sha256": meta.compiled_sha256, "below_budget": below_budget_note(meta)}
    return samples[start:stop], record


def _list_sha256(names) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


# The per-image files, concatenated in shard order (eval_labels.txt only where labels were).
CONCATENATED = ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "results.jsonl",
                "skipped.txt")
REQUIRED = ("eval_result_1.txt", "eval_result_5.txt", "results.jsonl")  # every shard has them
MUST_MATCH = ("count", "total", "list_sha256", "model_sha256")


def merge(shard_dirs, output_dir):
    """Merge the result folders of ``mnv3 infer --shard K/N`` runs (every K once, any order)
    into ``output_dir``: the files one unsharded run writes, and an InferResult whose counts
    and accuracy are the whole run's (its seconds: the shards' summed, i.e. driver time)."""
    from mnv3.evaluation import format_accuracy
    from mnv3.inference import InferResult
    from mnv3.results import output_folder

    shards = sorted((_read_shard(Path(d)) for d in shard_dirs), key=lambda s: s[1]["shard"]["index"])
    _check_fit(shards)
    out = Path(output_dir)
    if any(out.resolve() == d.resolve() for d, _ in shards):
        raise UsageError(f"--output-dir {shown(out)} is one of the shards; merge into a new "
                         "folder")
    first = shards[0][1]
    labeled = sum(s["labeled"] for _, s in shards)
    c1 = sum(s["top1_correct"] or 0 for _, s in shards)
    c5 = sum(s["top5_correct"] or 0 for _, s in shards)
    seconds = sum(s["seconds"] for _, s in shards)
    engine = sum(s["engine_seconds"] for _, s in shards)
    processed = sum(s["processed"] for _, s in shards)
    result = InferResult(
        images=first["shard"]["total"], processed=processed,
        skipped=sum(s["skipped"] for _, s in shards), labeled=labeled,
        top1_correct=c1 if labeled else None, top5_correct=c5 if labeled else None,
        top1=c1 / labeled if labeled else None, top5=c5 / labeled if labeled else None,
        seconds=seconds, engine_seconds=engine,
        images_per_s=processed / seconds if seconds > 0 else 0.0,
        engine_images_per_s=processed / engine if engine > 0 else 0.0,
        batch_size=first["batch_size"], workers=first["workers"], output_dir=str(out),
        model=first["model"],
        skipped_files=[tuple(x) for _, s in shards for x in s["skipped_files"]],
        untrained=first.get("untrained"), engine=first.get("engine", "python"),
        decode=first.get("decode", "exact"),
        shards=[{"dir": str(d), **s["shard"], "images_per_s": s["images_per_s"],
                 "seconds": s["seconds"], "engine": s.get("engine")} for d, s in shards])
    with output_folder(out):
        try:
            _publish(out, shards, result, format_accuracy(result.top1, result.top5)
                     if labeled else None)
        except OSError as e:  # a shard's file unreadable, or the disk full
            raise UsageError(f"cannot merge into {shown(out)} ({e.strerror or e}: "
                             f"{shown(e.filename or out)}); check the shard folders and free "
                             "space, or choose another --output-dir") from None
    return result


def _read_shard(folder: Path) -> tuple[Path, dict]:
    path = folder / "infer.json"
    if not folder.is_dir():
        raise DataError(f"{shown(folder)} is not a folder; give the --output-dir of each "
                        "'mnv3 infer --shard K/N' run")
    try:
        summary = json.loads(read_text(path, "result file", DataError))
    except ValueError as e:
        raise DataError(f"{shown(path)} is not valid JSON ({e}); run that shard again") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("shard"), dict):
        raise DataError(f"{shown(folder)} was not written by 'mnv3 infer --shard K/N' (its "
                        "infer.json names no shard); give the shards' output folders")
    return folder, summary


def _check_fit(shards: list[tuple[Path, dict]]) -> None:
    """Every shard of one run exactly once, in order, with its files: refused before anything
    is written (an output folder holding an earlier merge keeps it whole)."""
    (d0, s0), n = shards[0], shards[0][1]["shard"]["count"]
    for d, s in shards:
        for key in MUST_MATCH:
            if s["shard"].get(key) != s0["shard"].get(key):
                raise DataError(f"{shown(d)} and {shown(d0)} are shards of different runs "
                                f"(their {key} differs); merge the shards of one run")
        if _pixels(s) != _pixels(s0):  # exact and native decode the same pixels
            raise DataError(f"{shown(d)} decoded {s.get('decode')!r} and {shown(d0)} "
                            f"{s0.get('decode')!r}; run every shard with the same --decode")
        lost = next((d / n for n in REQUIRED if not (d / n).is_file()), None)
        if lost is not None:
            raise DataError(f"{shown(lost)} is missing; run that shard again")
    have = [s["shard"]["index"] for _, s in shards]
    if have != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(have))
        repeated = sorted({k for k in have if have.count(k) > 1})
        why = "; ".join(x for x in (
            f"missing {', '.join(f'{k}/{n}' for k in missing)}" if missing else "",
            f"given twice {', '.join(f'{k}/{n}' for k in repeated)}" if repeated else "") if x)
        raise DataError(f"the shards do not make one run of {n} ({why}); give each shard's "
                        "folder once")
    for (d, s), (_, prev) in zip(shards[1:], shards):
        if s["shard"]["first"] != prev["shard"]["first"] + prev["shard"]["images"]:
            raise DataError(f"{shown(d)} does not start where shard {prev['shard']['index']} "
                            "ends; run every shard with the same mnv3 version and flags")


def _publish(out: Path, shards, result, accuracy: str | None) -> None:
    """Each file written beside its name and renamed into place; eval_result.txt removed first
    and written last, so no accuracy is ever left beside files it does not describe."""
    (out / "eval_result.txt").unlink(missing_ok=True)
    for name in CONCATENATED:
        parts = [d / name for d, _ in shards if (d / name).is_file()]
        if not parts:
            (out / name).unlink(missing_ok=True)
            continue
        _concatenate(parts, out / name)
    atomic_write_text(out / "infer.json", json.dumps(result.to_dict(), indent=2) + "\n")
    if accuracy is not None:
        atomic_write_text(out / "eval_result.txt", accuracy)


def _concatenate(parts: list[Path], dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        normal_mode(fd)  # mkstemp's 0600 is for the temporary file, not the result
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pixels(summary: dict) -> str:
    """What a shard's images looked like to the model: ``exact`` for either exact-pixel decode."""
    decode = summary.get("decode", "exact")
    return "exact" if decode in SAME_PIXELS else decode
