// --bench: the engine alone, measured by the program itself the way 'mnv3 bench' measures it
// (src/mnv3/bench.py): one pre-filled input, the cold first run apart, warm-up runs, then S
// threads each running its own infer request synchronously in a loop for the given time.
#pragma once
#include <openvino/openvino.hpp>

#include <string>
#include <vector>

namespace mnv3 {

struct BenchRun {
    double first_run_ms = 0, wall_s = 0;
    double cpu_s = 0;  // the process's CPU time in the measured phase (all threads)
    std::vector<double> latencies_s;  // one per query, all streams
};

BenchRun bench_engine(ov::CompiledModel& compiled, int streams, int warmup, double seconds);

// The summary line and the JSON ('mnv3 bench' computes its statistics from latencies_s).
std::string bench_text(const BenchRun& r, int batch, int threads, int streams, double load_ms);
std::string bench_json(const BenchRun& r, int batch, int threads, int streams, int warmup,
                       double seconds, double load_ms);

}  // namespace mnv3
