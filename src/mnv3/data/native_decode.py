"""The native decode path (``--decode native``): the exact path's pixels for half its CPU time.

The C++ program's decoding and preprocessing (cpp/src/image.cpp, resize.cpp: libjpeg-turbo and
libpng, Pillow's RGB conversion and antialiased resize reproduced pixel for pixel, a JPEG decoded
only in the iMCUs the crop reads) built as a shared library, ``libmnv3-preprocess.so``, by
``mnv3 build-cpp`` next to the program, and called here through ctypes, which lets go of the GIL
for each call, so the loader's decode threads run it in parallel as they run Pillow.

Same pixels, not approximately: every tensor must equal ``preprocess_image``'s bit for bit. That
rests on this machine's Pillow and libjpeg agreeing with what the C++ reproduces, so each
``NativeDecoder`` first checks it on the bundled demo images and refuses to run if one differs
(``--decode exact`` is then the way). What the library does not decode itself (formats other
than JPEG and PNG, corrupt or truncated files, strips too thin to resize) goes to the exact path,
which decodes it or says why not in its own words: skipped.txt reads as with ``--decode exact``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

from mnv3.data.files import read_bytes, shown
from mnv3.data.preprocess import decode_bytes, preprocess_image
from mnv3.cpp_engine import LIBRARY, find_binary
from mnv3.errors import BackendUnavailable, UsageError
from mnv3.meta import PreprocessCfg

ABI = 1  # cpp/src/capi.cpp's mnv3_native_abi()
_ERR_LEN = 512
_SELF_CHECK_IMAGES = 3  # demo JPEGs compared with the exact path before any run


def find_library() -> Path | None:
    """The built library for these sources and this OpenVINO (``MNV3_PREPROCESS_LIB`` wins), or
    None: ``mnv3 build-cpp`` builds it beside mnv3-infer-cpp."""
    env = os.environ.get("MNV3_PREPROCESS_LIB")
    if env:
        return Path(env)
    binary = find_binary()
    path = binary.parent / LIBRARY if binary is not None else None
    return path if path is not None and path.is_file() else None


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
        abi = lib.mnv3_native_abi()
    except (OSError, AttributeError) as e:
        raise BackendUnavailable(f"cannot load the native decoder {path} ({e}); rebuild it with: "
                                 "mnv3 build-cpp --force") from None
    if abi != ABI:
        raise BackendUnavailable(f"the native decoder {path} is version {abi}, this mnv3 needs "
                                 f"{ABI}; rebuild it with: mnv3 build-cpp --force")
    f3 = ctypes.POINTER(ctypes.c_float)
    lib.mnv3_pre_new.restype = ctypes.c_void_p
    lib.mnv3_pre_new.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, f3, f3,
                                 ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.mnv3_pre_free.argtypes = [ctypes.c_void_p]
    lib.mnv3_pre_run.restype = ctypes.c_int
    lib.mnv3_pre_run.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    return lib


def library() -> ctypes.CDLL:
    """The loaded library; BackendUnavailable saying how to build it where it is not built."""
    path = find_library()
    if path is None or not path.is_file():
        raise BackendUnavailable("--decode native needs the native decoder, which is not built "
                                 "for this checkout: build it once with 'mnv3 build-cpp' (the "
                                 "C++ program and the decoder), or use --decode exact")
    return _load(str(path))


class NativeDecoder:
    """``preprocess_image`` for one model's preprocessing, by the C++ code: same tensors.

    Thread-safe (the library keeps its buffers per thread). Construction loads the library and
    runs the self-check; ``decoder(cfg)`` caches one per configuration.
    """

    def __init__(self, cfg: PreprocessCfg):
        self.cfg = cfg
        self._lib = library()
        err = ctypes.create_string_buffer(_ERR_LEN)
        f3 = ctypes.c_float * 3
        handle = self._lib.mnv3_pre_new(cfg.resize, cfg.crop, cfg.interpolation.encode(),
                                        f3(*cfg.mean), f3(*cfg.std),
                                        int(cfg.channel_order == "BGR"), err, _ERR_LEN)
        if not handle:
            raise UsageError(f"--decode native cannot reproduce this model's preprocessing "
                             f"({err.value.decode(errors='replace')}); use --decode exact")
        self._handle = handle
        self._check_same_pixels()

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.mnv3_pre_free(handle)

    def file(self, path: str | os.PathLike, out: np.ndarray | None = None) -> np.ndarray:
        """One image file -> float32 [3, crop, crop], as ``preprocess_image(path, cfg)``."""
        data = read_bytes(path, "image")  # the exact path's checks: regular file, cap, deadline
        return self._run(data, shown(Path(path)), out)

    def bytes(self, data: bytes, what: str = "image", out: np.ndarray | None = None
              ) -> np.ndarray:
        """An image held in memory (``mnv3 serve``'s request body); ``what`` names it in errors."""
        return self._run(data, what, out)

    def _run(self, data: bytes, name: str, out: np.ndarray | None) -> np.ndarray:
        crop = self.cfg.crop
        if out is None:
            out = np.empty((3, crop, crop), dtype=np.float32)
        elif out.shape != (3, crop, crop) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape (3, {crop}, "
                             f"{crop}), got {out.dtype} {out.shape}")
        # No error buffer: the library's reason is never shown (the exact path's words are).
        rc = self._lib.mnv3_pre_run(self._handle, data, len(data), out.ctypes.data, None, 0)
        if rc == 0:
            return out
        if rc == 2:
            raise MemoryError(f"out of memory decoding image {name}")
        # Not decoded here (another format, damaged, too thin): the exact path decodes it or
        # raises its own DataError, word for word what --decode exact would write.
        return preprocess_image(decode_bytes(data, name), self.cfg, out=out)

    def _check_same_pixels(self) -> None:
        from mnv3.data.datasets import demo_dir

        images = sorted((demo_dir() / "images").iterdir())[:_SELF_CHECK_IMAGES]
        for path in images:
            if not np.array_equal(self.file(path), preprocess_image(path, self.cfg)):
                import PIL

                raise BackendUnavailable(
                    f"the native decoder's pixels differ from the exact path's on {path.name} "
                    f"(Pillow {PIL.__version__}): this Pillow or the system libjpeg is not the "
                    "one it reproduces; use --decode exact")


@functools.lru_cache(maxsize=8)
def decoder(cfg: PreprocessCfg) -> NativeDecoder:
    """The (checked) native decoder for ``cfg``, made once per process."""
    return NativeDecoder(cfg)


def unavailable(cfg: PreprocessCfg) -> str | None:
    """Why ``--decode native`` cannot run ``cfg`` here (not built, other pixels ...), or None."""
    from mnv3.errors import Mnv3Error

    try:
        decoder(cfg)
    except Mnv3Error as e:
        return str(e)
    return None
