// mnv3-infer-cpp: run a model built by 'mnv3 build --backend openvino' over an image folder and
// write the result files of 'mnv3 infer' (the seed's infer_cpp, on OpenVINO's C++ API).
//
// Pipeline: W decode threads decode, resize and crop an image, then wait for the infer request
// its batch goes to and normalise it straight into that request's input tensor (R requests,
// R = streams + 1), so the next batch is decoded while the engine runs the previous ones; a
// full batch is started with start_async by the thread that completes it; the main thread
// takes results in order, writes their lines, and hands the request back. Memory is R batches
// plus the decoders' reused buffers, whatever the number of images. --threads T engine threads
// are split into streams (one per thread by default); --profile says where the time went.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "bench.hpp"
#include "common.hpp"
#include "dataset.hpp"
#include "image.hpp"
#include "model.hpp"
#include "output.hpp"
#include "profile.hpp"

namespace fs = std::filesystem;
using namespace mnv3;
using Clock = std::chrono::steady_clock;

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

struct Args {
    std::string model, image_dir, label_file, synsets, output_dir, device = "CPU", json, dump_dir;
    int batch = 0, image_num = 0, threads = 0, streams = 0, workers = 0, warmup = 10;
    double bench = 0;  // seconds of --bench; 0: infer over the images
    bool save_images = false, strict = false, quiet = false, only_listed = false, profile = false;
};

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

std::atomic<bool> g_interrupted{false};
extern "C" void on_signal(int) { g_interrupted = true; }

int default_workers() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

// Top-5 by descending logit, ties to the lower index (evaluation.topk_indices), and the
// softmax probabilities of those five, in double as inference._softmax computes them.
void top5_probs(const float* logits, int n, int top[5], double probs[5]) {
    int k = std::min(5, n);
    std::vector<int> idx(n);
    for (int i = 0; i < n; ++i) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    double mx = logits[idx[0]], sum = 0.0;
    for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
    for (int j = 0; j < 5; ++j) {
        top[j] = j < k ? idx[j] : idx[k - 1];
        probs[j] = std::exp(double(logits[top[j]]) - mx) / sum;
    }
}

struct Request {
    ov::InferRequest req;
    float* input = nullptr;
    long batch = -1;          // the batch it holds or is being filled with
    int count = 0, filled = 0;
    bool started = false, done = false;
    std::exception_ptr error;
    std::vector<char> ok;
    std::vector<std::string> reason;
};

class Pipeline {
public:
    Pipeline(const Args& args, const ModelInfo& info, ov::CompiledModel& compiled, const std::vector<Sample>& samples,
             int batch, ResultWriter& writer, const std::vector<std::string>& class_names)
        : args_(args), info_(info), samples_(samples), batch_(batch), writer_(writer), names_(class_names),
          pre_(info.preprocess) {
        plane_ = static_cast<size_t>(3) * info.preprocess.crop * info.preprocess.crop;
        nbatches_ = (static_cast<long>(samples.size()) + batch - 1) / batch;
        int nreq = args.streams + 1;
        for (int r = 0; r < nreq; ++r) {
            auto q = std::make_unique<Request>();
            q->req = compiled.create_infer_request();
            q->input = q->req.get_input_tensor().data<float>();
            q->ok.assign(batch, 0);
            q->reason.assign(batch, "");
            Request* raw = q.get();
            q->req.set_callback([this, raw](std::exception_ptr e) {
                std::lock_guard<std::mutex> lk(m_);
                raw->done = true;
                raw->error = e;
                if (--active_ == 0) engine_s_ += std::chrono::duration<double>(Clock::now() - active_since_).count();
                cv_.notify_all();
            });
            reqs_.push_back(std::move(q));
        }
        for (long b = 0; b < std::min<long>(nbatches_, nreq); ++b) assign(*reqs_[b], b);
        workers_ = args.workers ? args.workers : default_workers();
    }

    ~Pipeline() { stop(); }

    double engine_seconds() const { return engine_s_; }
    const StageTimes& stages() const { return stages_; }
    double results_wait() const { return results_wait_; }
    int workers() const { return workers_; }

    void run() {
        for (int w = 0; w < workers_; ++w) threads_.emplace_back([this] { decode_loop(); });
        std::unique_ptr<ImageSaver> saver;
        if (!writer_.staging().empty()) saver = std::make_unique<ImageSaver>(writer_.staging());
        for (long b = 0; b < nbatches_; ++b) {
            Request& q = *reqs_[b % reqs_.size()];
            auto w0 = Clock::now();
            {
                std::unique_lock<std::mutex> lk(m_);
                while (!(q.batch == b && q.done) && !abort_) {
                    cv_.wait_for(lk, std::chrono::milliseconds(50));
                    if (g_interrupted) abort_ = true;
                }
                if (abort_) break;
            }
            results_wait_ += std::chrono::duration<double>(Clock::now() - w0).count();
            if (q.error) {
                try { std::rethrow_exception(q.error); }
                catch (const std::exception& e) { fail(Failure(1, std::string("OpenVINO inference failed: ") + e.what())); }
                break;
            }
            const float* out = q.req.get_output_tensor().data<float>();
            const int ncls = info_.num_classes;
            for (int s = 0; s < q.count; ++s) {
                const Sample& smp = samples_[b * batch_ + s];
                if (!q.ok[s]) { writer_.skip(smp.name, q.reason[s]); continue; }
                int top[5];
                double probs[5];
                top5_probs(out + static_cast<size_t>(s) * ncls, ncls, top, probs);
                writer_.add(smp.name, smp.label, top, probs, names_);
                if (saver) {
                    char text[64];
                    std::snprintf(text, sizeof text, " %.1f%%", probs[0] * 100.0);
                    const std::string cls = static_cast<size_t>(top[0]) < names_.size() ? names_[top[0]] : std::to_string(top[0]);
                    saver->submit(smp.path, smp.name, cls + text);
                }
            }
            std::lock_guard<std::mutex> lk(m_);
            long next = b + static_cast<long>(reqs_.size());
            if (next < nbatches_) assign(q, next);
            else q.batch = -1;
            cv_.notify_all();
        }
        stop();
        if (g_interrupted) throw Failure(EXIT_INTERRUPTED, "interrupted; nothing partial was left behind");
        if (error_) std::rethrow_exception(error_);
        if (saver) saver->finish();
    }

private:
    const Args& args_;
    const ModelInfo& info_;
    const std::vector<Sample>& samples_;
    int batch_;
    ResultWriter& writer_;
    const std::vector<std::string>& names_;
    Preprocessor pre_;
    size_t plane_;
    long nbatches_;
    int workers_ = 1;
    std::vector<std::unique_ptr<Request>> reqs_;
    std::vector<std::thread> threads_;
    std::mutex m_;
    std::condition_variable cv_;
    std::atomic<long> next_{0};
    bool abort_ = false;
    std::exception_ptr error_;
    int active_ = 0;
    Clock::time_point active_since_;
    double engine_s_ = 0.0;
    StageTimes stages_;
    double results_wait_ = 0.0;  // main thread: waiting for the engine's next batch

    void assign(Request& q, long b) {  // under m_ (or before the threads start)
        q.batch = b;
        q.count = static_cast<int>(std::min<long>(batch_, static_cast<long>(samples_.size()) - b * batch_));
        q.filled = 0;
        q.started = q.done = false;
        q.error = nullptr;
        if (q.count < batch_)  // the last batch is padded with zeros: fixed shapes
            std::memset(q.input + static_cast<size_t>(q.count) * plane_, 0, (batch_ - q.count) * plane_ * sizeof(float));
    }

    void fail(const Failure& f) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::make_exception_ptr(f);
        abort_ = true;
        cv_.notify_all();
    }

    void decode_loop() {
        StageClock prof(args_.profile);
        StageTimes st;
        std::vector<uint8_t> data, scratch;  // reused from image to image
        Rgb img, cropped;
        try {
            for (;;) {
                long i = next_++;
                if (i >= static_cast<long>(samples_.size()) || g_interrupted) break;
                long b = i / batch_;
                int slot = static_cast<int>(i % batch_);
                Request* q = reqs_[b % reqs_.size()].get();
                // Decode before waiting for the request: the next image is decoded while the
                // engine still holds the request it goes to.
                std::string reason = decode_one(i, &data, &img, &cropped, &scratch, prof, &st);
                const bool ok = reason.empty();
                if (!ok && args_.strict) {
                    fail(data_error(reason + " (--strict: stopping at the first bad image; drop --strict to skip bad images)"));
                    return;
                }
                auto w0 = Clock::now();
                {
                    std::unique_lock<std::mutex> lk(m_);
                    cv_.wait(lk, [&] { return q->batch == b || abort_; });
                    if (abort_) return;
                }
                st.wait += std::chrono::duration<double>(Clock::now() - w0).count();
                float* dst = q->input + slot * plane_;
                prof.mark();
                if (ok) pre_.normalize(cropped, dst);
                else std::memset(dst, 0, plane_ * sizeof(float));
                prof.lap(&st.normalize);
                ++st.images;
                if (ok && !args_.dump_dir.empty()) dump(i, dst);
                bool start = false;
                {
                    std::lock_guard<std::mutex> lk(m_);
                    q->ok[slot] = ok;
                    q->reason[slot] = reason;
                    if (++q->filled == q->count) {
                        start = true;
                        q->started = true;
                        if (active_++ == 0) active_since_ = Clock::now();
                    }
                }
                if (start) q->req.start_async();
            }
        } catch (const Failure& f) {
            fail(f);
        } catch (const std::exception& e) {
            fail(Failure(1, std::string("internal error in a decode thread: ") + e.what()));
        }
        std::lock_guard<std::mutex> lk(m_);
        stages_.add(st);
    }

    // Read, decode, resize and crop image i into cropped; "" or why it was skipped.
    std::string decode_one(long i, std::vector<uint8_t>* data, Rgb* img, Rgb* cropped,
                           std::vector<uint8_t>* scratch, StageClock& prof, StageTimes* st) {
        const std::string& path = samples_[i].path;
        try {
            prof.mark();
            read_file(path, data);
            prof.lap(&st->read);
            decode_memory(*data, img, &pre_);
            prof.lap(&st->decode);
            pre_.resize_and_crop(*img, cropped, scratch);
            prof.lap(&st->resize);
            return "";
        } catch (const FileProblem& e) {
            return "image " + path + " " + e.what() + "; replace or remove the file";
        } catch (const ImageError& e) {
            return "cannot decode image " + path + ": " + e.what() + "; replace or remove the file";
        } catch (const std::bad_alloc&) {
            return "cannot decode image " + path + ": out of memory; replace or remove the file";
        }
    }

    void dump(long i, const float* data) {
        std::ofstream f((fs::path(args_.dump_dir) / (std::to_string(i) + ".f32")).string(), std::ios::binary);
        f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(plane_ * sizeof(float)));
        if (!f) throw usage_error("cannot write into --dump-tensors folder " + args_.dump_dir);
    }

    void stop() {
        {
            std::lock_guard<std::mutex> lk(m_);
            if (next_ < static_cast<long>(samples_.size()) || abort_) abort_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) if (t.joinable()) t.join();
        threads_.clear();
        for (auto& q : reqs_) {  // no callback may run after we are gone
            bool in_flight;
            {
                std::lock_guard<std::mutex> lk(m_);
                in_flight = q->started && !q->done;
            }
            if (in_flight) { try { q->req.wait(); } catch (...) {} }
        }
    }
};

void print_summary(const Args& a, const Summary& s, long images, int batch, int workers, double seconds, double engine,
                   const std::vector<std::pair<std::string, std::string>>& skipped) {
    std::printf("images: %ld predicted, %ld skipped (of %ld; batch %d, %d decode threads)\n", s.processed, s.skipped,
                images, batch, workers);
    if (s.skipped) {
        std::printf("skipped (could not decode), listed in %s/skipped.txt:\n", a.output_dir.c_str());
        for (size_t i = 0; i < skipped.size() && i < 5; ++i) std::printf("  %s: %s\n", skipped[i].first.c_str(), skipped[i].second.c_str());
        if (s.skipped > 5) std::printf("  ... and %ld more\n", s.skipped - 5);
    }
    if (s.labeled) {
        std::printf("top1 accuracy: %f (%ld/%ld)\n", double(s.correct1) / s.labeled, s.correct1, s.labeled);
        std::printf("top5 accuracy: %f (%ld/%ld)\n", double(s.correct5) / s.labeled, s.correct5, s.labeled);
    } else {
        std::printf("no labels given: predictions only (see results.jsonl)\n");
    }
    std::printf("speed: %.1f images/s end to end (decode included), %.1f images/s engine only (%.2f s of %.2f s in the engine)\n",
                seconds > 0 ? s.processed / seconds : 0.0, engine > 0 ? s.processed / engine : 0.0, engine, seconds);
    std::printf("results in %s\n", a.output_dir.c_str());
}

std::string summary_json(const Args& a, const Summary& s, long images, int batch, int workers, double seconds,
                         double engine, long peak_rss_kb, const std::vector<std::pair<std::string, std::string>>& skipped) {
    auto num = [](double v) { return python_float(v); };
    std::string j = "{\"images\": " + std::to_string(images) + ", \"processed\": " + std::to_string(s.processed) +
                    ", \"skipped\": " + std::to_string(s.skipped) + ", \"labeled\": " + std::to_string(s.labeled);
    if (s.labeled) {
        j += ", \"top1_correct\": " + std::to_string(s.correct1) + ", \"top5_correct\": " + std::to_string(s.correct5) +
             ", \"top1\": " + num(double(s.correct1) / s.labeled) + ", \"top5\": " + num(double(s.correct5) / s.labeled);
    } else {
        j += ", \"top1_correct\": null, \"top5_correct\": null, \"top1\": null, \"top5\": null";
    }
    j += ", \"seconds\": " + num(seconds) + ", \"engine_seconds\": " + num(engine) +
         ", \"images_per_s\": " + num(seconds > 0 ? s.processed / seconds : 0.0) +
         ", \"engine_images_per_s\": " + num(engine > 0 ? s.processed / engine : 0.0) +
         ", \"batch_size\": " + std::to_string(batch) + ", \"workers\": " + std::to_string(workers) +
         ", \"output_dir\": " + json_string(a.output_dir) + ", \"model\": " + json_string(a.model) +
         ", \"skipped_files\": [";
    for (size_t i = 0; i < skipped.size(); ++i)
        j += (i ? ", [" : "[") + json_string(skipped[i].first) + ", " + json_string(skipped[i].second) + "]";
    j += "], \"engine\": \"cpp\", \"peak_rss_kb\": " + std::to_string(peak_rss_kb) + "}";
    return j;
}

void write_json(const std::string& where, const std::string& j) {
    if (where == "-") {
        std::cout << j << "\n";
        return;
    }
    std::ofstream f(where);
    f << j << "\n";
    if (!f) throw usage_error("cannot write --json file " + where);
}

// --profile as JSON: decode threads' CPU ms per image by stage, their waits for a free request,
// the main thread's wait for results, the engine's busy time, the process's CPU time in all.
std::string profile_json(const Pipeline& p, double seconds, double cpu_s) {
    const StageTimes& t = p.stages();
    const double n = t.images ? static_cast<double>(t.images) : 1.0;
    auto ms = [&](double v) { return python_float(round6(v * 1e3 / n)); };
    const double decode_cpu = t.read + t.decode + t.resize + t.normalize;
    return "{\"images\": " + std::to_string(t.images) + ", \"cpu_ms_per_image\": {\"read\": " + ms(t.read) +
           ", \"decode\": " + ms(t.decode) + ", \"resize_crop\": " + ms(t.resize) +
           ", \"normalize\": " + ms(t.normalize) + ", \"decode_threads_total\": " + ms(decode_cpu) +
           ", \"process_total\": " + ms(cpu_s) + ", \"rest_engine_and_main\": " + ms(cpu_s - decode_cpu) +
           "}, \"wall_s\": " + python_float(round6(seconds)) +
           ", \"engine_busy_s\": " + python_float(round6(p.engine_seconds())) +
           ", \"decode_threads_waiting_for_a_request_s\": " + python_float(round6(t.wait)) +
           ", \"main_waiting_for_results_s\": " + python_float(round6(p.results_wait())) +
           ", \"workers\": " + std::to_string(p.workers()) + "}";
}

long peak_rss_kb() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
    return 0;
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

int run_bench(const Args& a, ov::CompiledModel& compiled, int batch, double load_ms) {
    BenchRun r = bench_engine(compiled, a.streams, a.warmup, a.bench);
    if (!a.quiet) std::cout << bench_text(r, batch, a.threads, a.streams, load_ms);
    if (!a.json.empty()) write_json(a.json, bench_json(r, batch, a.threads, a.streams, a.warmup, a.bench, load_ms));
    return 0;
}

int run(int argc, char** argv) {
    Args a = parse_args(argc, argv);
    resolve_threads(&a);
    auto load0 = Clock::now();
    ModelInfo info = read_model_dir(a.model);
    int batch = a.batch ? a.batch : info.batch;
    if (!info.shape_mutable && batch != info.batch)
        throw usage_error("this model has a fixed batch of " + std::to_string(info.batch) + "; drop --batch-size or pass " +
                          std::to_string(info.batch) + " (or build a --shape-mutable true model)");
    ov::Core core;
    CompileOptions opt;
    opt.device = a.device;
    opt.batch = batch;
    opt.threads = a.threads;
    opt.streams = a.streams;
    if (a.bench > 0) {
        ov::CompiledModel compiled = compile(core, info, opt);
        return run_bench(a, compiled, batch, std::chrono::duration<double, std::milli>(Clock::now() - load0).count());
    }
    Synsets syn;
    if (!a.synsets.empty()) syn = load_synsets(a.synsets);
    std::vector<Sample> samples = load_samples(a.image_dir, a.label_file, a.synsets.empty() ? nullptr : &syn, info.num_classes,
                                           a.only_listed);
    if (a.image_num && static_cast<size_t>(a.image_num) < samples.size()) samples.resize(a.image_num);
    std::vector<std::string> class_names = !syn.names.empty() ? syn.names : info.class_names;
    if (!a.dump_dir.empty()) {
        std::error_code ec;
        fs::create_directories(a.dump_dir, ec);
    }
    ov::CompiledModel compiled = compile(core, info, opt);

    ResultWriter writer(a.output_dir, a.save_images);
    std::vector<std::pair<std::string, std::string>> skipped;
    double seconds = 0, engine = 0;
    int workers = 0;
    std::string profile;
    try {
        Pipeline p(a, info, compiled, samples, batch, writer, class_names);
        workers = p.workers();
        auto t0 = Clock::now();
        const double cpu0 = process_cpu_seconds();
        p.run();
        seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        engine = p.engine_seconds();
        if (a.profile) profile = profile_json(p, seconds, process_cpu_seconds() - cpu0);
    } catch (...) {
        writer.abort();
        throw;
    }
    const Summary& s = writer.summary();
    if (s.processed == 0) {
        writer.abort();
        throw data_error("none of the " + std::to_string(samples.size()) + " images could be decoded; check that the folder holds valid JPEG or PNG images (see skipped.txt of a run with fewer bad files)");
    }
    writer.commit();
    {   // skipped list for the summary: read back what was written (small)
        std::ifstream f((fs::path(a.output_dir) / "skipped.txt").string());
        std::string line;
        while (std::getline(f, line)) {
            size_t tab = line.find('\t');
            skipped.emplace_back(line.substr(0, tab), tab == std::string::npos ? "" : line.substr(tab + 1));
        }
    }
    if (!a.quiet) print_summary(a, s, static_cast<long>(samples.size()), batch, workers, seconds, engine, skipped);
    if (a.profile) std::cerr << "profile: " << profile << "\n";
    if (!a.json.empty()) {
        std::string j = summary_json(a, s, static_cast<long>(samples.size()), batch, workers, seconds, engine, peak_rss_kb(), skipped);
        j.pop_back();  // the closing brace: add the settings (and the profile)
        j += ", \"threads\": " + std::to_string(a.threads) + ", \"streams\": " + std::to_string(a.streams);
        j += (profile.empty() ? "" : ", \"profile\": " + profile) + "}";
        write_json(a.json, j);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    try {
        return run(argc, argv);
    } catch (const Failure& f) {
        std::cerr << "mnv3-infer-cpp: error: " << f.what() << "\n";
        return f.code;
    } catch (const ov::Exception& e) {
        std::cerr << "mnv3-infer-cpp: OpenVINO error (a bug or an unsupported setup; please report): " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "mnv3-infer-cpp: internal error (please report): " << e.what() << "\n";
        return 1;
    }
}
