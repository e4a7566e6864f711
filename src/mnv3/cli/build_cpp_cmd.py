"""Build mnv3-infer-cpp, the native inference program (cpp/), and print the binary's path.

Beside it goes libmnv3-preprocess.so, the program's decoding for Python: 'mnv3 infer --decode
native' and 'mnv3 serve --decode native' (the exact pixels, about half the CPU per image).

It is compiled with CMake against the OpenVINO C++ API inside the installed openvino wheel
(nothing is downloaded) and the system libjpeg-turbo and libpng; on Debian/Ubuntu install the
build packages once with:
  apt-get install -y cmake g++ make libjpeg-dev libpng-dev
The binary is cached per source tree and OpenVINO version ($XDG_CACHE_HOME/mnv3/cpp, or
MNV3_CPP_CACHE), so a second call returns at once. Then run it directly (--help lists its
flags, named after the seed's infer_cpp) or through 'mnv3 infer --engine cpp'.

examples:
  mnv3 build-cpp
  mnv3 infer --engine cpp --model data/models/openvino/force_float32_false_8 --output-dir out/cpp
  $(mnv3 build-cpp) --model data/models/openvino/force_float32_false_8 \\
      --image-dir val/images --label-file val/labels.txt --output-dir out/cpp
"""

from __future__ import annotations

from mnv3.cli.common import add_parser as _add


def add_parser(sub):
    p = _add(sub, "build-cpp", __doc__, run)
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel compile jobs (default: up to 2)")
    p.add_argument("--force", action="store_true", help="rebuild even if a binary is cached")
    p.add_argument("--verbose", action="store_true", help="show CMake's and the compiler's output")
    return p


def run(args) -> int:
    from mnv3.cpp_engine import build_cpp
    from mnv3.errors import UsageError

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    print(build_cpp(jobs=args.jobs, force=args.force, verbose=args.verbose))
    return 0
