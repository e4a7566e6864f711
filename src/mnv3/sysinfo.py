"""What machine and software a figure was measured on: CPU model, core counts, engine versions.

Every speed figure mnv3 prints carries this, because a throughput without its CPU, thread count
and engine version cannot be compared with anything. Reading it is cheap and imports no engine
(versions come from the installed package metadata, not from importing torch or onnxruntime).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path

# Distribution names whose versions matter for a speed figure (pip name -> label).
ENGINES = {
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime-gpu",
    "openvino": "openvino",
    "torch": "torch",
    "onnx": "onnx",
    "numpy": "numpy",
}

# CPU features that decide which kernels the engines pick (fp32 FMA, bf16, int8 dot products).
FEATURE_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                 "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")

# int8 ISA classes, best first: what decides whether a u8 x s8 multiply-add can saturate.
# Without VNNI, x86 int8 kernels use vpmaddubsw, whose pairwise u8*s8 sum saturates at int16
# (255*127*2 > 32767); VNNI (and AMX) accumulate in int32 and never saturate. A recipe that is
# exact on one class can lose points on the other (issue 12: 8.4 points with NNCF on AVX2).
INT8_ISAS = ("amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "other_x86", "non_x86")
# Classes whose int8 dot product accumulates in int32 (no saturation).
NO_SATURATION_ISAS = ("amx", "avx512_vnni", "avx_vnni", "non_x86")


def _cpuinfo(path: str = "/proc/cpuinfo") -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU ([] where there is no such file)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    cpus, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                cpus.append(cur)
            cur = {}
            continue
        key, _, value = line.partition(":")
        cur[key.strip()] = value.strip()
    if cur:
        cpus.append(cur)
    return cpus


def cpu_model(cpuinfo: list[dict[str, str]] | None = None) -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC' (falls back to platform.processor())."""
    cpus = _cpuinfo() if cpuinfo is None else cpuinfo
    for cpu in cpus:
        if cpu.get("model name"):
            return cpu["model name"]
    return platform.processor() or platform.machine() or "unknown CPU"


def core_counts(cpuinfo: list[dict[str, str]] | None = None) -> dict[str, int | None]:
    """Logical CPUs, physical cores (None if unknown) and the CPUs this process may run on."""
    cpus = _cpuinfo() if cpuinfo is None else cpuinfo
    physical = {(c.get("physical id"), c.get("core id")) for c in cpus if "core id" in c}
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count()
    return {
        "logical": os.cpu_count(),
        "physical": len(physical) or None,
        "usable": usable,
    }


def cpu_features(cpuinfo: list[dict[str, str]] | None = None) -> list[str]:
    cpus = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    return [f for f in FEATURE_FLAGS if f in flags]


def int8_isa(cpuinfo: list[dict[str, str]] | None = None, machine: str | None = None) -> str:
    """The CPU's int8 ISA class (one of ``INT8_ISAS``), read from the CPU flags.

    ``non_x86`` (ARM and others) has int8 dot products that do not saturate; ``other_x86`` is
    an x86 CPU without AVX2 (the engines fall back to slow generic kernels there).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "non_x86"
    cpus = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    if not flags:  # no /proc/cpuinfo (not Linux): assume the common case, a VNNI-less x86
        return "avx2"
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other_x86"


def int8_saturates(isa: str | None = None) -> bool:
    """True where x86 u8 x s8 int8 kernels can saturate (no VNNI/AMX): AVX2 and plain AVX-512."""
    return (isa or int8_isa()) not in NO_SATURATION_ISAS


def float16_support(cpuinfo: list[dict[str, str]] | None = None) -> dict[str, bool]:
    """Native bf16 / fp16 arithmetic on this CPU (else engines compute those in float32)."""
    cpus = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    return {"bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "fp16": bool({"avx512_fp16", "amx_fp16"} & flags)}


def isa_label(isa: str | None = None) -> str:
    """A short ISA tag printed beside every figure, e.g. 'AVX2 (no VNNI)'."""
    isa = isa or int8_isa()
    return {"amx": "AMX + AVX-512 VNNI", "avx512_vnni": "AVX-512 VNNI",
            "avx_vnni": "AVX-VNNI", "avx512": "AVX-512 (no VNNI)", "avx2": "AVX2 (no VNNI)",
            "other_x86": "x86 without AVX2", "non_x86": platform.machine() or "non-x86"}.get(
                isa, isa)


def engine_versions() -> dict[str, str]:
    """Installed versions of the engines and numeric libraries (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for dist, label in ENGINES.items():
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["mnv3"] = metadata.version("mnv3")
    except metadata.PackageNotFoundError:
        from mnv3 import __version__

        out["mnv3"] = __version__
    return out


def cpu_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU-seconds all CPUs spent not idle since boot (steal included: the hypervisor took it).

    None where /proc/stat does not exist. The difference over an interval, minus this process's
    own CPU time, tells how much CPU other processes took while we measured.
    """
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_clocks() -> tuple[float, float] | None:
    """(CPU seconds all processes were busy, CPU seconds this process used), or None."""
    busy = cpu_busy_seconds()
    if busy is None:
        return None
    t = os.times()
    return busy, t.user + t.system


def others_cores(before, after, wall: float) -> float | None:
    """Cores' worth of CPU other processes (and the hypervisor) took during ``wall`` seconds."""
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / wall)


@lru_cache(maxsize=1)
def system_info() -> dict:
    """Everything above in one JSON-able dict (cached: it does not change within a process)."""
    cpus = _cpuinfo()
    return {
        "cpu_model": cpu_model(cpus),
        "cores": core_counts(cpus),
        "cpu_features": cpu_features(cpus),
        "int8_isa": int8_isa(cpus),
        "float16": float16_support(cpus),
        "os": f"{platform.system()} {platform.release()}",
        "versions": engine_versions(),
    }


def device_label(info: dict | None = None) -> str:
    """A short 'device' column for report tables, e.g. 'CPU AMD EPYC x2'."""
    info = info or system_info()
    n = info["cores"].get("usable") or info["cores"].get("logical")
    isa = info.get("int8_isa")
    return f"CPU {info['cpu_model']} x{n}" + (f" ({isa_label(isa)})" if isa else "")
