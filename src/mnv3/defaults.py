"""The library's defaults in one light module: the API's signatures and the CLIs' flags both
read them, so they cannot drift apart (importing the pipeline just to read them would cost
every ``mnv3 --help`` the 0.6 s import of numpy)."""

from mnv3.quant_mode import RUN_MODES

CALIB_NUM = 100  # int8 calibration images (the seed's sample uses 100 too)
CALIB_METHOD = "minmax"

RUN_QUANT_MODES = tuple(m.value for m in RUN_MODES)  # the seed README's table rows
RUN_BATCH_SIZES = (1, 4, 8)  # the seed README's table columns
RUN_BENCH_DURATION_S = 0.6  # seconds per configuration per interleaved round
RUN_BENCH_ROUNDS = 5
RUN_BENCH_WARMUP = 10

BENCH_ITERATIONS = 1000  # measured queries of `mnv3 bench` when neither count nor time is given
BENCH_WARMUP = 10  # unmeasured runs per stream after the cold run

TUNE_BATCH_SIZES = (1, 8)
TUNE_TIME_BUDGET_S = 600.0  # the whole `mnv3 tune` run, builds included
TUNE_ROUNDS = 7  # interleaved rounds per batch at most
TUNE_SLICE_S = 0.5  # one setting's measurement per round

SERVE_ENGINES = ("local", "ray")  # mnv3 serve --engine; local needs no extra packages
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # this machine only: the service has no auth
SERVE_WAIT_MS = 10.0  # a batch's wait for more requests (Ray Serve's default, 0.01 s)
SERVE_MAX_BODY = 20 << 20  # bytes of one request body; a 20 MiB photo is already huge

# mnv3 infer / serve --decode. exact: mnv3.data.preprocess (Pillow); fast: mnv3.data.fast_decode
# (other pixels); native: mnv3.data.native_decode, exact's pixels from the C++ program's decoder
# (checked before it runs, fewer CPU ms per image; built by mnv3 build-cpp).
DECODES = ("exact", "fast", "native")
SAME_PIXELS = ("exact", "native")
DECODE_ENGINES = {"exact": ("python", "cpp", "ray"), "fast": ("python",),
                  "native": ("python", "ray")}  # mnv3 infer --engine that can decode that way
