#include "args.hpp"

#include <openvino/core/version.hpp>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "common.hpp"

namespace mnv3 {
namespace {

const char* VERSION = "mnv3-infer-cpp 0.1.0";

const char* HELP = R"(usage: mnv3-infer-cpp --model DIR --image-dir D [--label-file F] --output-dir O [options]

Run a model built with 'mnv3 build --backend openvino' over a folder of JPEG/PNG images and
write the result files of 'mnv3 infer': eval_labels.txt, eval_result_1.txt, eval_result_5.txt
(five lines per image), eval_result.txt ('top1 accuracy: x' / 'top5 accuracy: y'),
results.jsonl and skipped.txt (images that could not be decoded). Preprocessing follows the
model's meta.json exactly as the Python pipeline does (PIL-identical decode, resize, crop).

data:
  --image-dir D       folder of images: plain (predict only), with --label-file, or an
                      ImageFolder tree (one sub-folder per class)
  --label-file F      'filename class_index' lines (or 'filename wnid' with --synsets)
  --synsets F         'wnid name' per line, line N = class N (maps wnids, names classes)
  --image-num N       only the first N images (sorted by path)
  --only-listed       run exactly the images the label file lists (label '-' = none),
                      ignoring other files in the folder
options:
  --model DIR         a model directory built with --backend openvino (sha256-checked)
  --output-dir O      where the result files go (created; replaced only on success)
  --batch-size N      images per engine call (default: the model's batch; a fixed-batch
                      model runs only its own)
  --threads T         engine threads in all, as 'mnv3 infer --threads' (default: one per CPU)
  --streams S         concurrent engine streams sharing those threads (default: one per
                      thread, the fastest split measured, benchmarks/cpp_vs_python.py);
                      S+1 infer requests
  --workers W         decode threads (default: one per CPU)
  --device NAME       OpenVINO device (default CPU; e.g. GPU)
  --save-images       also write copies with the top-1 class drawn on them to O/images/
  --strict            stop with an error at the first image that cannot be decoded
  --json F            write the run's summary as JSON to F ('-' = stdout, no other output)
  --quiet             no summary on stdout
  --dump-tensors D    diagnostics: write each preprocessed image as raw float32 D/<index>.f32
  --profile           print where the time went (CPU ms per image per decode stage, waits,
                      engine busy time) on stderr, and add it to --json
engine only (no images; --image-dir and --output-dir not needed):
  --bench SECONDS     run the engine on one pre-filled input for SECONDS with S concurrent
                      requests after --warmup N runs each (default 10), as 'mnv3 bench' does;
                      prints throughput and latency (--json: every latency)
  --version, --help
Seed spellings with underscores (--image_dir, --batch_size, ...) are accepted.
exit codes: 0 ok, 2 usage, 3 data, 7 model, 8 device unavailable, 130 interrupted.
)";

int parse_int(const std::string& flag, const std::string& v) {
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != 0) throw usage_error(flag + " needs a whole number, got '" + v + "'");
    if (x < 1 || x > 1000000) throw usage_error(flag + " must be at least 1, got " + v);
    return static_cast<int>(x);
}

double parse_seconds(const std::string& flag, const std::string& v) {
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != 0 || !(x > 0) || x > 86400)
        throw usage_error(flag + " needs a positive number of seconds, got '" + v + "'");
    return x;
}

}  // namespace

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i], value;
        bool has_value = false;
        if (flag.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + flag + "'; flags start with -- (see --help)");
        size_t eq = flag.find('=');
        if (eq != std::string::npos) { value = flag.substr(eq + 1); flag = flag.substr(0, eq); has_value = true; }
        std::replace(flag.begin() + 2, flag.end(), '_', '-');
        if (flag == "--help") { std::cout << HELP; std::exit(0); }
        if (flag == "--version") { std::cout << VERSION << " (OpenVINO " << ov::get_openvino_version().buildNumber << ")\n"; std::exit(0); }
        if (flag == "--save-images") { a.save_images = true; continue; }
        if (flag == "--strict") { a.strict = true; continue; }
        if (flag == "--quiet") { a.quiet = true; continue; }
        if (flag == "--only-listed") { a.only_listed = true; continue; }
        if (flag == "--profile") { a.profile = true; continue; }
        if (!has_value) {
            if (i + 1 >= argc) throw usage_error(flag + " needs a value (see --help)");
            value = argv[++i];
        }
        if (flag == "--model") a.model = value;
        else if (flag == "--image-dir") a.image_dir = value;
        else if (flag == "--label-file") a.label_file = value;
        else if (flag == "--synsets") a.synsets = value;
        else if (flag == "--output-dir") a.output_dir = value;
        else if (flag == "--device") a.device = value;
        else if (flag == "--json") a.json = value;
        else if (flag == "--dump-tensors") a.dump_dir = value;
        else if (flag == "--batch-size") a.batch = parse_int(flag, value);
        else if (flag == "--image-num") a.image_num = parse_int(flag, value);
        else if (flag == "--threads") a.threads = parse_int(flag, value);
        else if (flag == "--streams") a.streams = parse_int(flag, value);
        else if (flag == "--workers") a.workers = parse_int(flag, value);
        else if (flag == "--warmup") a.warmup = parse_int(flag, value);
        else if (flag == "--bench") a.bench = parse_seconds(flag, value);
        else throw usage_error("unknown flag " + flag + " (see --help)");
    }
    if (a.model.empty()) throw usage_error("--model is required: a directory built with 'mnv3 build --backend openvino'");
    if (a.threads && a.streams > a.threads)
        throw usage_error("--streams " + std::to_string(a.streams) + " needs at least as many --threads (each stream runs on its own threads), got --threads " + std::to_string(a.threads));
    if (a.json == "-") a.quiet = true;
    if (a.bench > 0) return a;
    if (a.image_dir.empty()) throw usage_error("--image-dir is required: the folder that holds your images");
    if (a.output_dir.empty()) throw usage_error("--output-dir is required: where the result files go");
    return a;
}

int default_workers() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

// Engine threads in all and the streams sharing them: --threads T as 'mnv3 infer --threads'
// (one stream of T threads there); here S streams of T/S threads, one per thread by default:
// on the 2-vCPU machine a stream per core beat one 2-thread stream end to end (README).
void resolve_threads(Args* a) {
    if (a->device != "CPU") {
        a->streams = a->streams ? a->streams : 1;
        return;
    }
    if (!a->threads) a->threads = std::max(default_workers(), a->streams);
    if (!a->streams) a->streams = a->threads;
}

}  // namespace mnv3
