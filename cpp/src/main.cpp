// mnv3-infer-cpp: run a model built by 'mnv3 build --backend openvino' over an image folder and
// write the result files of 'mnv3 infer' (the seed's infer_cpp, on OpenVINO's C++ API).
//
// The top-level flow: the command line (args.cpp), the model (model.cpp), the samples
// (dataset.cpp), the pipeline that decodes them and runs the engine (pipeline.cpp) into the
// result files (output.cpp), then the summary (summary.cpp); or --bench, the engine alone
// (bench.cpp). Errors become one line on stderr and mnv3's exit code (common.hpp).
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "args.hpp"
#include "bench.hpp"
#include "common.hpp"
#include "dataset.hpp"
#include "model.hpp"
#include "output.hpp"
#include "pipeline.hpp"
#include "profile.hpp"
#include "summary.hpp"

namespace fs = std::filesystem;
using namespace mnv3;
using Clock = std::chrono::steady_clock;

namespace {

// Set on SIGINT / SIGTERM: the pipeline stops, removes what it wrote, and exits 130.
std::atomic<bool> g_interrupted{false};
extern "C" void on_signal(int) { g_interrupted = true; }

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
        Pipeline p(a, info, compiled, samples, batch, writer, class_names, g_interrupted);
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
