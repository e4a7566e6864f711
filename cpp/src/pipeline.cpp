#include "pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace mnv3 {
namespace {

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

}  // namespace

struct Pipeline::Request {
    ov::InferRequest req;
    float* input = nullptr;
    long batch = -1;          // the batch it holds or is being filled with
    int count = 0, filled = 0;
    bool started = false, done = false;
    std::exception_ptr error;
    std::vector<char> ok;
    std::vector<std::string> reason;
};

Pipeline::Pipeline(const Args& args, const ModelInfo& info, ov::CompiledModel& compiled, const std::vector<Sample>& samples,
                   int batch, ResultWriter& writer, const std::vector<std::string>& class_names,
                   const std::atomic<bool>& interrupted)
    : args_(args), info_(info), samples_(samples), batch_(batch), writer_(writer), names_(class_names),
      interrupted_(interrupted), pre_(info.preprocess) {
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

Pipeline::~Pipeline() { stop(); }

void Pipeline::run() {
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
                if (interrupted_) abort_ = true;
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
    if (interrupted_) throw Failure(EXIT_INTERRUPTED, "interrupted; nothing partial was left behind");
    if (error_) std::rethrow_exception(error_);
    if (saver) saver->finish();
}

void Pipeline::assign(Request& q, long b) {  // under m_ (or before the threads start)
    q.batch = b;
    q.count = static_cast<int>(std::min<long>(batch_, static_cast<long>(samples_.size()) - b * batch_));
    q.filled = 0;
    q.started = q.done = false;
    q.error = nullptr;
    if (q.count < batch_)  // the last batch is padded with zeros: fixed shapes
        std::memset(q.input + static_cast<size_t>(q.count) * plane_, 0, (batch_ - q.count) * plane_ * sizeof(float));
}

void Pipeline::fail(const Failure& f) {
    std::lock_guard<std::mutex> lk(m_);
    if (!error_) error_ = std::make_exception_ptr(f);
    abort_ = true;
    cv_.notify_all();
}

void Pipeline::decode_loop() {
    StageClock prof(args_.profile);
    StageTimes st;
    std::vector<uint8_t> data, scratch;  // reused from image to image
    Rgb img, cropped;
    try {
        for (;;) {
            long i = next_++;
            if (i >= static_cast<long>(samples_.size()) || interrupted_) break;
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

std::string Pipeline::decode_one(long i, std::vector<uint8_t>* data, Rgb* img, Rgb* cropped,
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

void Pipeline::dump(long i, const float* data) {
    std::ofstream f((fs::path(args_.dump_dir) / (std::to_string(i) + ".f32")).string(), std::ios::binary);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(plane_ * sizeof(float)));
    if (!f) throw usage_error("cannot write into --dump-tensors folder " + args_.dump_dir);
}

void Pipeline::stop() {
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

}  // namespace mnv3
