"""The native engine: build ``mnv3-infer-cpp`` (cpp/) and run it as ``mnv3 infer --engine cpp``.

    path = build_cpp()                       # CMake + the OpenVINO wheel's C++ API; cached
    with CppModel("data/models/openvino/force_float32_false_8") as model:
        result = infer_cpp(model, samples, "out/")   # the same InferResult as mnv3.infer

The program is built against the OpenVINO C++ API that ships inside the installed ``openvino``
wheel (``openvino/cmake``, ``openvino/include``, ``openvino/libs``): the same engine the Python
side runs, nothing downloaded. Decoding uses the system libjpeg-turbo and libpng (Debian:
``apt-get install cmake g++ make libjpeg-dev libpng-dev``), not OpenCV: two small libraries
instead of OpenCV's hundreds of megabytes, and Pillow itself decodes with libjpeg-turbo, so the
decoded pixels are the ones Python sees (OpenCV's resize is not Pillow's antialiased one anyway;
the program reimplements Pillow's).

The binary is cached per source tree and OpenVINO version under ``$XDG_CACHE_HOME/mnv3/cpp``
(``MNV3_CPP_CACHE`` overrides; ``MNV3_INFER_CPP`` names a prebuilt binary). ``infer_cpp`` hands the
program the samples Python resolved (any dataset layout ``mnv3 infer`` reads) as a label file, so
both engines see the same images, names and labels.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mnv3.atomic import atomic_file
from mnv3.errors import BackendUnavailable, DataError, Interrupted, ModelError, UsageError

BINARY = "mnv3-infer-cpp"
LIBRARY = "libmnv3-preprocess.so"  # the same decoding for Python: mnv3.data.native_decode
SYSTEM_PACKAGES = "cmake g++ make libjpeg-dev libpng-dev"
INSTALL_HINT = f"apt-get install -y {SYSTEM_PACKAGES}"
_EXIT_ERRORS = {2: UsageError, 3: DataError, 7: ModelError, 8: BackendUnavailable,
                130: Interrupted}


def source_dir() -> Path:
    """cpp/ of the source checkout this package runs from (``pip install -e .``)."""
    d = Path(__file__).resolve().parents[2] / "cpp"
    if not (d / "CMakeLists.txt").is_file():
        raise BackendUnavailable(f"the C++ sources are not at {d}: mnv3-infer-cpp is built from a "
                                 "source checkout installed with 'pip install -e .'")
    return d


def openvino_cmake_dir() -> Path:
    """``<site-packages>/openvino/cmake``: OpenVINOConfig.cmake of the installed wheel."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable('mnv3-infer-cpp needs OpenVINO; install it with: '
                                 'pip install "mnv3[openvino]"') from None
    d = Path(openvino.__file__).resolve().parent / "cmake"
    if not (d / "OpenVINOConfig.cmake").is_file():
        raise BackendUnavailable(f"this openvino wheel ships no C++ CMake config ({d}); "
                                 "install openvino >= 2025.0 from PyPI")
    return d


def _key() -> str:
    """Sources + OpenVINO version and install folder: a change to any means a new binary (the
    binary loads libopenvino from the folder it was linked against, so one built in another
    virtual environment fails to start once that environment is gone)."""
    import openvino

    h = hashlib.sha256(openvino.get_version().encode())
    h.update(str(Path(openvino.__file__).resolve().parent).encode())
    src = source_dir()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "build" not in p.parts):
        h.update(str(path.relative_to(src)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("MNV3_CPP_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnv3" / "cpp"
    return Path(base)


def find_binary() -> Path | None:
    """The built program for these sources and this OpenVINO, or None (``MNV3_INFER_CPP`` wins)."""
    env = os.environ.get("MNV3_INFER_CPP")
    if env:
        return Path(env)
    try:
        path = cache_dir() / _key() / BINARY
    except (BackendUnavailable, ImportError):
        return None
    return path if path.is_file() else None


def missing_tools() -> list[str]:
    """Build tools not on PATH (cmake, a C++ compiler, make)."""
    need = {"cmake": "cmake", "c++": "g++", "make": "make"}
    return [pkg for tool, pkg in need.items() if shutil.which(tool) is None]


def build_cpp(jobs: int | None = None, force: bool = False, verbose: bool = False) -> Path:
    """Configure and compile cpp/ (Release) and return the binary's path; reused when built.

    The CMake build folder is ``<cache>/build`` (incremental); the finished binary is copied
    atomically to ``<cache>/<key>/mnv3-infer-cpp``, so a failed build leaves no binary, and
    beside it ``libmnv3-preprocess.so``, its decoding for ``--decode native``. A lock serialises
    concurrent builds.
    """
    if not force and (found := find_binary()) is not None and found.is_file() and (
            "MNV3_INFER_CPP" in os.environ or (found.parent / LIBRARY).is_file()):
        return found
    src, ov_cmake = source_dir(), openvino_cmake_dir()
    if missing := missing_tools():
        raise BackendUnavailable(f"building mnv3-infer-cpp needs {', '.join(missing)}; install "
                                 f"the build packages with: {INSTALL_HINT}")
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the build cache {cache} ({e.strerror}); set "
                         "MNV3_CPP_CACHE to a writable folder") from None
    target = cache / _key() / BINARY
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and (target.parent / LIBRARY).is_file() and not force:
            return target
        build = cache / f"build-{target.parent.name}"  # CMake ties a build folder to one source
        jobs = jobs or max(1, min(2, os.cpu_count() or 1))
        _cmake(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                f"-DOpenVINO_DIR={ov_cmake}"], verbose)
        _cmake(["cmake", "--build", str(build), "--parallel", str(jobs)], verbose)
        # The library first: a binary in the cache means both are there.
        for name in (LIBRARY, BINARY):
            with atomic_file(target.parent / name) as tmp:
                shutil.copy2(build / name, tmp)  # copies the mode too: it stays executable
    return target


def _cmake(cmd: list[str], verbose: bool) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=not verbose, text=True)
    if proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "")
        tail = "\n".join(out.strip().splitlines()[-15:])
        hint = ""
        if "JPEG" in out or "PNG" in out or "jpeglib" in out or "png.h" in out:
            hint = f"; the image libraries are missing: {INSTALL_HINT}"
        raise BackendUnavailable(f"building mnv3-infer-cpp failed ({' '.join(cmd[:2])}){hint}\n{tail}")


def runs_in_cpp(backend: str) -> bool:
    """Whether models of ``backend`` run in mnv3-infer-cpp (its capabilities say so)."""
    from mnv3.backends import capabilities, list_backends

    return backend in list_backends() and capabilities(backend).cpp


class CppModel:
    """A model directory for the native program: meta.json read, backend checked, binary found.

    The program itself re-checks the sha256 of model.xml / model.bin when it runs. ``threads``:
    engine threads in all, as ``mnv3 infer --threads`` (None: one per CPU); ``streams``: how
    many streams share them (None: the program's default, one per thread).
    """

    def __init__(self, model_dir, threads: int | None = None, streams: int | None = None,
                 binary: str | os.PathLike | None = None, device: str = "CPU"):
        from mnv3.meta import read_meta

        self.model_dir = Path(model_dir)
        self.meta = read_meta(self.model_dir)
        if not runs_in_cpp(self.meta.backend):
            raise ModelError(f"{self.model_dir} was built for backend {self.meta.backend!r}; the "
                             "C++ engine runs OpenVINO models: build one with 'mnv3 build "
                             "--backend openvino', or drop --engine cpp")
        self.binary = Path(binary) if binary else find_binary()
        if self.binary is None or not self.binary.is_file():
            raise BackendUnavailable("mnv3-infer-cpp is not built for this checkout and OpenVINO; "
                                     "build it once with: mnv3 build-cpp")
        self.threads, self.streams, self.device = threads, streams, device

    @property
    def fixed_batch(self) -> int | None:
        return None if self.meta.shape_mutable else int(self.meta.batch_size)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def infer_cpp(model: CppModel, samples, output_dir, *, batch_size: int | None = None,
              image_num: int | None = None, workers: int | None = None, strict: bool = False,
              save_images: bool = False, class_names: list[str] | None = None,
              progress: bool = False):
    """``mnv3.infer`` through the native program: same result files, an ``InferResult``."""
    from mnv3.inference import (InferResult, _check_labels, _display_names, _imagenet_names,
                                _select)

    if isinstance(model, (str, os.PathLike)):
        model = CppModel(model)
    samples = _select(samples, image_num)
    _check_labels(samples, model.meta.num_classes)
    names = _display_names(samples)
    root = Path(os.path.commonpath([str(Path(s.path).parent) for s in samples]))
    class_names = class_names or model.meta.class_names or _imagenet_names(model.meta.num_classes)
    with tempfile.TemporaryDirectory(prefix="mnv3-cpp-") as tmp:
        cmd = [str(model.binary), "--model", str(model.model_dir), "--image-dir", str(root),
               "--output-dir", str(output_dir), "--json", str(Path(tmp) / "summary.json"),
               "--quiet", "--device", model.device]
        # Exactly these samples, named as mnv3.infer names them ('-': unlabeled).
        (Path(tmp) / "list.txt").write_text("".join(
            f"{names[s.path]} {'-' if s.label is None else s.label}\n" for s in samples),
            encoding="utf-8")
        cmd += ["--label-file", str(Path(tmp) / "list.txt"), "--only-listed"]
        if class_names:
            (Path(tmp) / "names.txt").write_text(
                "".join(f"{n}\n" for n in class_names), encoding="utf-8")
            cmd += ["--synsets", str(Path(tmp) / "names.txt")]
        for flag, value in (("--batch-size", batch_size), ("--workers", workers),
                            ("--threads", model.threads), ("--streams", model.streams)):
            if value is not None:
                cmd += [flag, str(value)]
        cmd += ["--strict"] * strict + ["--save-images"] * save_images
        _run(cmd)
        d = json.loads((Path(tmp) / "summary.json").read_text())
    d["skipped_files"] = [tuple(x) for x in d["skipped_files"]]
    d["model"] = str(model.model_dir)
    keep = set(InferResult.__dataclass_fields__)
    result = InferResult(**{k: v for k, v in d.items() if k in keep})
    result.engine = "cpp"
    result.peak_rss_kb = d.get("peak_rss_kb")  # the program's own peak memory (not a field)
    return result


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except KeyboardInterrupt:  # the program got the same SIGINT and cleaned up after itself
        raise
    if proc.returncode == 0:
        return
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    msg = lines[-1] if lines else f"exit code {proc.returncode}"
    msg = msg.split(": error: ", 1)[-1] if ": error: " in msg else msg
    cls = _EXIT_ERRORS.get(proc.returncode)
    if cls is None:  # a crash or an internal error: a bug, keep everything it said
        raise RuntimeError(f"mnv3-infer-cpp failed with exit code {proc.returncode}:\n"
                           f"{proc.stderr.strip()}")
    raise cls(msg)


def describe() -> str:
    """One line for reports: the binary and the OpenVINO it runs."""
    path = find_binary()
    return f"{BINARY} ({path})" if path else f"{BINARY} (not built)"


if __name__ == "__main__":  # pragma: no cover
    print(build_cpp(verbose="-v" in sys.argv))

