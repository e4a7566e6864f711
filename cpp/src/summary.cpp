#include "summary.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "common.hpp"
#include "pipeline.hpp"
#include "profile.hpp"

namespace mnv3 {

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

}  // namespace mnv3
