// The result files of 'mnv3 infer' (src/mnv3/inference.py), written the same way: lines are
// streamed into hidden temporary files (memory stays flat however many images), and every file
// is renamed into place only when the run succeeds, eval_result.txt last; a failed run removes
// an output folder it created and leaves an existing one's earlier results as they were.
#pragma once

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mnv3 {

struct Summary {
    long images = 0, processed = 0, skipped = 0, labeled = 0, correct1 = 0, correct5 = 0;
};

class ResultWriter {
public:
    ResultWriter(const std::string& out_dir, bool save_images);
    ~ResultWriter();  // not committed: abort()
    void add(const std::string& name, int label, const int top5[5], const double probs5[5],
             const std::vector<std::string>& class_names);
    void skip(const std::string& name, const std::string& reason);
    const Summary& summary() const { return sum_; }
    const std::string& staging() const { return staging_; }
    void commit();  // rename everything into place
    void abort();   // remove what this run wrote (and the folder, if this run created it)

private:
    struct Tmp { std::string final_name, path; FILE* f = nullptr; };
    std::string out_;
    std::vector<std::string> created_;
    Tmp labels_, top1_, top5_, jsonl_, skipped_;
    std::string staging_;
    Summary sum_;
    bool done_ = false;
    Tmp open_tmp(const std::string& name);
    void write(Tmp& t, const std::string& line);
};

// Annotated copies for --save-images, written by one background thread (bounded queue).
class ImageSaver {
public:
    explicit ImageSaver(std::string staging_dir);
    ~ImageSaver();
    void submit(const std::string& src, const std::string& name, const std::string& text);
    void finish();  // wait; throws the first failure

private:
    struct Job { std::string src, name, text; };
    std::string dir_;
    std::deque<Job> jobs_;
    std::mutex m_;
    std::condition_variable cv_;
    bool closing_ = false;
    std::string error_;
    std::thread thread_;
    void loop();
};

std::string json_string(const std::string& s);   // json.dumps(str), ensure_ascii
std::string python_float(double v);               // repr(float)
double round6(double v);                          // round(v, 6)

}  // namespace mnv3
