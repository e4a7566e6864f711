#include "bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>


#include "output.hpp"
#include "profile.hpp"

namespace mnv3 {
namespace {
using Clock = std::chrono::steady_clock;

// Fixed pseudo-random values in [-1, 1): the values do not change the work of a float model.
void prefill(ov::Tensor t) {
    float* p = t.data<float>();
    uint32_t x = 12345;
    for (size_t i = 0; i < t.get_size(); ++i) {
        x = x * 1664525u + 1013904223u;
        p[i] = static_cast<float>(x >> 8) / static_cast<float>(1u << 23) - 1.0f;
    }
}

// numpy.percentile's default (linear between closest ranks), as mnv3.bench.percentile.
double percentile(const std::vector<double>& sorted, double p) {
    const double rank = (sorted.size() - 1) * p / 100.0;
    const size_t k = static_cast<size_t>(rank);
    if (k + 1 >= sorted.size()) return sorted.back();
    return sorted[k] + (rank - k) * (sorted[k + 1] - sorted[k]);
}
}  // namespace

BenchRun bench_engine(ov::CompiledModel& compiled, int streams, int warmup, double seconds) {
    std::vector<ov::InferRequest> reqs;
    for (int s = 0; s < streams; ++s) {
        reqs.push_back(compiled.create_infer_request());
        prefill(reqs.back().get_input_tensor());
    }
    BenchRun r;
    auto t0 = Clock::now();
    reqs[0].infer();  // the cold first run, reported apart
    r.first_run_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    for (auto& q : reqs)
        for (int i = 0; i < warmup; ++i) q.infer();
    std::vector<std::vector<double>> lat(streams);
    const double cpu0 = process_cpu_seconds();
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
    std::vector<std::thread> threads;
    for (int s = 0; s < streams; ++s)
        threads.emplace_back([&, s] {
            for (auto now = Clock::now(); now < deadline;) {
                reqs[s].infer();
                auto done = Clock::now();
                lat[s].push_back(std::chrono::duration<double>(done - now).count());
                now = done;
            }
        });
    for (auto& t : threads) t.join();
    r.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    r.cpu_s = process_cpu_seconds() - cpu0;
    for (auto& l : lat) r.latencies_s.insert(r.latencies_s.end(), l.begin(), l.end());
    return r;
}

std::string bench_text(const BenchRun& r, int batch, int threads, int streams, double load_ms) {
    std::vector<double> ms;
    for (double s : r.latencies_s) ms.push_back(s * 1e3);
    std::sort(ms.begin(), ms.end());
    double sum = 0;
    for (double v : ms) sum += v;
    const double n = static_cast<double>(ms.size());
    char buf[700];
    std::snprintf(buf, sizeof buf,
                  "mnv3-infer-cpp --bench: batch %d, %d thread(s) in %d stream(s), %zu queries "
                  "in %.2f s\n  throughput: %.1f images/s (%.1f queries/s)\n"
                  "  latency (ms): min %.3f avg %.3f p50 %.3f p90 %.3f p95 %.3f p99 %.3f max %.3f\n"
                  "  load %.1f ms, first run %.2f ms; %.2f CPU ms per image\n",
                  batch, threads, streams, ms.size(), r.wall_s, n * batch / r.wall_s, n / r.wall_s,
                  ms.front(), sum / n, percentile(ms, 50), percentile(ms, 90), percentile(ms, 95),
                  percentile(ms, 99), ms.back(), load_ms, r.first_run_ms, 1e3 * r.cpu_s / (n * batch));
    return buf;
}

std::string bench_json(const BenchRun& r, int batch, int threads, int streams, int warmup,
                       double seconds, double load_ms) {
    std::string j = "{\"engine\": \"cpp\", \"bench\": true, \"batch_size\": " + std::to_string(batch) +
                    ", \"threads\": " + std::to_string(threads) + ", \"streams\": " + std::to_string(streams) +
                    ", \"warmup\": " + std::to_string(warmup) + ", \"duration\": " + python_float(seconds) +
                    ", \"load_ms\": " + python_float(load_ms) + ", \"first_run_ms\": " + python_float(r.first_run_ms) +
                    ", \"wall_s\": " + python_float(r.wall_s) + ", \"cpu_s\": " + python_float(r.cpu_s) +
                    ", \"latencies_s\": [";
    for (size_t i = 0; i < r.latencies_s.size(); ++i) j += (i ? ", " : "") + python_float(r.latencies_s[i]);
    return j + "]}";
}

}  // namespace mnv3
