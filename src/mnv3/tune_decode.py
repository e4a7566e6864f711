"""``mnv3 tune``'s decoding choice: how ``mnv3 infer`` decodes a tuned model's images by
default: exact, fast (``--decode fast``, ``mnv3.data.fast_decode``) or native (``--decode
native``, ``mnv3.data.native_decode``).

The fast path gives other pixels, so it is chosen only on evidence measured here, per winner, on
tune's held-out images (those int8 calibration did not use): its top-1 agreement with the exact
path (at least ``AGREEMENT``, issue 17's bar) and its end-to-end speed, ``mnv3.infer`` run with
the winner's threads and requests in flight, exact and fast passes alternating (at most
``ROUNDS`` rounds; the median of the per-round speed ratios must exceed 1). The native path
gives the exact pixels (it checks so itself), so where it is built (``mnv3 build-cpp``) it takes
a third pass in each round and needs only to be faster, with every top-1 the exact one's; the
faster of the qualifying paths is chosen. The check gets ``SHARE`` of the time budget, held back
from the speed rounds; when the held-out set would not fit, fewer images are used, and the
record says so.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mnv3.tune_report import say

AGREEMENT = 0.995  # issue 17: the fast path's top-1 agreement with the exact path
ROUNDS = 3  # rounds of exact / fast (/ native) passes at most
SHARE = 0.15  # of the time budget, held back from the speed rounds for this check
MIN_IMAGES = 10  # fewer would make the agreement figure meaningless: not checked then
DECODE_S = 0.01  # one image's decode + resize, seconds on one core, to plan (measured ~5 ms)


def held_out(calib_dir, calib_num: int) -> tuple[list[Path], str]:
    """(images, what they are): the calibration folder's images the int8 builds held out
    (``calibration.split_calibration``, the same seeded split), else all of them."""
    from mnv3 import calibration as cal
    from mnv3.builder import _demo_dir

    folder = calib_dir if calib_dir is not None else _demo_dir()
    if folder is None:
        return [], "no images"
    files = cal.list_images(folder)
    rest = cal.split_calibration(files, calib_num)[1]
    if rest:
        return rest, f"held-out images of {folder}"
    return files, f"images of {folder} (all also used for int8 calibration)"


class DecodeCheck:
    """Called by ``tune_choose.choose`` with each winner: the ``decode`` entries of its tuned
    settings. ``winners``: how many will be checked (they share the time left evenly)."""

    def __init__(self, files, where: str, clock, winners: int, report, progress: bool):
        self.files, self.where, self.clock = list(files), where, clock
        self.todo, self.report, self.progress = max(1, winners), report, progress

    def __call__(self, c, s, batch: int) -> dict[str, Any]:
        seconds = self.clock.left() / self.todo
        self.todo = max(1, self.todo - 1)
        n = _images_that_fit(seconds, s.median(), len(self.files))
        if n < MIN_IMAGES:
            why = ("not checked: no images (no --calib-dir and no bundled demo set)"
                   if not self.files else f"not checked: only {len(self.files)} {self.where}"
                   if len(self.files) < MIN_IMAGES else f"not checked: under {MIN_IMAGES} "
                   f"images fit the time budget left ({seconds:.1f} s)")
            if self.files:
                self.report.skipped.append(f"{c.name} at batch {batch}: decode check {why}")
            return {"decode": "exact", "decode_check": {"checked": False, "why": why}}
        if n < len(self.files):
            self.report.skipped.append(f"{c.name} at batch {batch}: decode check on {n} of "
                                       f"{len(self.files)} {self.where}, to fit the time budget")
        native = _native_available(c.model_dir)
        say(self.progress, f"{c.name}: checking --decode fast"
            + (" and native" if native is True else "") + f" on {n} {self.where}")
        check = measure(c.model_dir, s.threads, s.streams, batch, self.files[:n], seconds,
                        split=s.split, native=native is True)
        if native is not True:
            check["native"] = {"checked": False, "why": native}
        check["images_of"] = f"{n} of {len(self.files)} {self.where}"
        return {"decode": decide(check), "decode_check": check}


def _images_that_fit(seconds: float, engine_ips: float | None, n: int) -> int:
    """Images one exact + one fast + one native pass can cover in ``seconds`` (planned
    conservatively: the decode is counted as if on one core, beside the engine's time)."""
    per_image = 1.0 / max(engine_ips or 1.0, 1e-9) + DECODE_S
    return min(n, int(seconds / (3 * per_image)))


def _native_available(model_dir) -> bool | str:
    """True where ``--decode native`` can run this model here, else why not."""
    from mnv3.data.native_decode import unavailable
    from mnv3.meta import read_meta

    why = unavailable(read_meta(model_dir).preprocess)
    return f"not checked: {why}" if why else True


def decide(check: dict[str, Any]) -> str:
    """The fastest of: ``fast`` where it kept ``AGREEMENT`` top-1 agreement and was faster than
    exact; ``native`` where every top-1 was exact's and it was faster; else ``exact``."""
    ok = {"exact": 1.0}
    if check.get("agreement", 0) >= AGREEMENT and check.get("speed_ratio", 0) > 1.0:
        ok["fast"] = check["speed_ratio"]
    native = check.get("native") or {}
    if native.get("agreement", 0) == 1.0 and native.get("speed_ratio", 0) > 1.0:
        ok["native"] = native["speed_ratio"]
    return max(ok, key=ok.get)


def measure(model_dir, threads: int, streams: int, batch: int, files, seconds: float,
            split: int = 1, native: bool = False) -> dict[str, Any]:
    """Alternating exact, fast (and with ``native``, native) ``mnv3.infer`` passes over
    ``files`` with these settings: top-1 agreement with exact (first round) and end-to-end
    images/s (every round that fits ``seconds``)."""
    from mnv3.backends import load
    from mnv3.data.datasets import Sample
    from mnv3.inference import infer

    samples = [Sample(Path(f)) for f in files]
    decodes = ("exact", "fast", "native") if native else ("exact", "fast")
    ips: dict[str, list[float]] = {d: [] for d in decodes}
    top1: dict[str, dict[str, str]] = {}
    end = time.perf_counter() + seconds
    with tempfile.TemporaryDirectory(prefix="mnv3-tune-decode-") as tmp, \
            load(model_dir, threads=threads, streams=streams, split=split,
                 spin=False) as session:
        for r in range(ROUNDS):
            t0 = time.perf_counter()
            for decode in decodes:
                out = Path(tmp) / f"{decode}{r}"
                res = infer(session, samples, out, batch_size=batch, progress=False,
                            decode=decode)
                ips[decode].append(res.images_per_s)
                top1.setdefault(decode, _top1(out))
            if time.perf_counter() + (time.perf_counter() - t0) > end:
                break
    check = {"checked": True, **_against_exact(ips, top1, "fast"),
             "exact_ips": statistics.median(ips["exact"]),
             "threads": threads, "streams": streams, "split": split, "batch": batch}
    check["fast_ips"] = check.pop("ips")
    if native:
        check["native"] = {"checked": True, **_against_exact(ips, top1, "native")}
    return check


def _against_exact(ips, top1, decode: str) -> dict[str, Any]:
    """``decode``'s top-1 agreement with exact and its per-round speed ratios to it."""
    ratios = [f / e for f, e in zip(ips[decode], ips["exact"])]
    common = top1["exact"].keys() & top1[decode].keys()
    same = sum(top1["exact"][k] == top1[decode][k] for k in common)
    return {"images": len(common), "agreement": same / max(1, len(common)),
            "ips": statistics.median(ips[decode]), "speed_ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)], "pairs": len(ratios)}


def _top1(out: Path) -> dict[str, str]:
    """File name -> top-1 class index, from infer's eval_result_1.txt."""
    rows = (line.rsplit(None, 1) for line in
            (out / "eval_result_1.txt").read_text(encoding="utf-8").splitlines() if line)
    return {name: idx for name, idx in rows}


def describe(tuned: dict[str, Any]) -> str:
    """One line on the decode choice, for tune.md and infer's summary."""
    check = tuned.get("decode_check") or {}
    if not check.get("checked"):
        return f"decode exact ({check.get('why', 'not checked')})"
    lo, hi = check["ratio_range"]
    line = (f"decode {tuned.get('decode', 'exact')}: the fast path's top-1 agreement with the "
            f"exact path {100 * check['agreement']:.1f}% on {check['images_of']} (bar "
            f"{100 * AGREEMENT:.1f}%), end-to-end speed {check['speed_ratio']:.2f}x the exact "
            f"path's (median of {check['pairs']} pair(s), {lo:.2f}-{hi:.2f}; "
            f"{check['fast_ips']:.1f} vs {check['exact_ips']:.1f} images/s)")
    native = check.get("native") or {}
    if native.get("checked"):
        lo, hi = native["ratio_range"]
        line += (f"; the native path (exact pixels in C++): top-1 the exact path's on "
                 f"{100 * native['agreement']:.1f}%, {native['speed_ratio']:.2f}x its speed "
                 f"({lo:.2f}-{hi:.2f}; {native['ips']:.1f} images/s)")
    elif native.get("why"):
        line += f"; the native path {native['why']}"
    return line
