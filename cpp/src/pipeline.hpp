// The inference pipeline: W decode threads decode, resize and crop an image, then wait for the
// infer request its batch goes to and normalise it straight into that request's input tensor
// (R requests, R = streams + 1), so the next batch is decoded while the engine runs the previous
// ones; a full batch is started with start_async by the thread that completes it; the calling
// thread takes results in order, writes their lines, and hands the request back. Memory is R
// batches plus the decoders' reused buffers, whatever the number of images. --profile's counters
// say where the time went.
#pragma once
#include <openvino/openvino.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "args.hpp"
#include "common.hpp"
#include "dataset.hpp"
#include "image.hpp"
#include "model.hpp"
#include "output.hpp"
#include "profile.hpp"

namespace mnv3 {

class Pipeline {
public:
    // interrupted: set by the signal handler; run() then stops and throws exit 130.
    Pipeline(const Args& args, const ModelInfo& info, ov::CompiledModel& compiled, const std::vector<Sample>& samples,
             int batch, ResultWriter& writer, const std::vector<std::string>& class_names,
             const std::atomic<bool>& interrupted);
    ~Pipeline();

    double engine_seconds() const { return engine_s_; }
    const StageTimes& stages() const { return stages_; }
    double results_wait() const { return results_wait_; }
    int workers() const { return workers_; }

    // All samples through the engine, their lines written in order; throws the first Failure.
    void run();

private:
    using Clock = std::chrono::steady_clock;
    struct Request;  // one infer request and the batch it holds (pipeline.cpp)

    const Args& args_;
    const ModelInfo& info_;
    const std::vector<Sample>& samples_;
    int batch_;
    ResultWriter& writer_;
    const std::vector<std::string>& names_;
    const std::atomic<bool>& interrupted_;
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

    void assign(Request& q, long b);  // under m_ (or before the threads start)
    void fail(const Failure& f);
    void decode_loop();
    // Read, decode, resize and crop image i into cropped; "" or why it was skipped.
    std::string decode_one(long i, std::vector<uint8_t>* data, Rgb* img, Rgb* cropped,
                           std::vector<uint8_t>* scratch, StageClock& prof, StageTimes* st);
    void dump(long i, const float* data);
    void stop();
};

}  // namespace mnv3
