#include "output.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common.hpp"
#include "font_data.h"
#include "image.hpp"

namespace fs = std::filesystem;

namespace mnv3 {
namespace {

const char* RESULT_FILES[] = {"eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt",
                              "results.jsonl", "skipped.txt", "eval_result.txt"};

Failure write_error(const std::string& what, int err) {
    return usage_error("cannot write " + what + " (" + std::strerror(err) +
                       "); free space or choose another --output-dir");
}

void draw_label(Rgb& img, const std::string& text) {
    // inference/annotate.py: a black box at the top-left corner, the text in yellow, font
    // size max(12, width / 25) px; here Pillow's bitmap font scaled by a whole factor.
    const int size = std::max(12, img.w / 25);
    const int scale = std::max(1, static_cast<int>(std::lround(size / double(font::HEIGHT))));
    int text_w = 0;
    for (char c : text) {
        int i = (c >= 32 && c < 127) ? c - 32 : '?' - 32;
        text_w += font::GLYPHS[i].width * scale;
    }
    const int box_w = std::min(img.w, text_w + 8), box_h = std::min(img.h, font::HEIGHT * scale + 8);
    for (int y = 0; y < box_h; ++y) std::memset(&img.px[static_cast<size_t>(y) * img.w * 3], 0, static_cast<size_t>(box_w) * 3);
    int x0 = 4;
    for (char c : text) {
        const auto& g = font::GLYPHS[(c >= 32 && c < 127) ? c - 32 : '?' - 32];
        for (int gy = 0; gy < font::HEIGHT; ++gy)
            for (int gx = 0; gx < g.width && gx < 32; ++gx) {
                if (!(g.rows[gy] >> gx & 1)) continue;
                for (int dy = 0; dy < scale; ++dy)
                    for (int dx = 0; dx < scale; ++dx) {
                        int x = x0 + gx * scale + dx, y = 4 + gy * scale + dy;
                        if (x >= img.w || y >= img.h) continue;
                        uint8_t* p = &img.px[(static_cast<size_t>(y) * img.w + x) * 3];
                        p[0] = 255; p[1] = 255; p[2] = 0;
                    }
            }
        x0 += g.width * scale;
    }
}

std::string lower_ext(const std::string& name) {
    std::string e = fs::path(name).extension().string();
    for (auto& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return e;
}

}  // namespace

// ------------------------------------------------------------------------- JSON / floats
std::string json_string(const std::string& s) {
    std::string out = "\"";
    char buf[16];
    for (size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        unsigned cp = c;
        size_t n = 1;
        if (c >= 0x80) {  // decode UTF-8; a stray byte is escaped as itself
            int extra = (c >= 0xF0) ? 3 : (c >= 0xE0) ? 2 : (c >= 0xC0) ? 1 : 0;
            if (extra && i + extra < s.size()) {
                cp = c & (0x3F >> extra);
                for (int k = 1; k <= extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
                n = extra + 1;
            }
        }
        i += n;
        switch (cp) {
            case '"': out += "\\\""; continue;
            case '\\': out += "\\\\"; continue;
            case '\n': out += "\\n"; continue;
            case '\r': out += "\\r"; continue;
            case '\t': out += "\\t"; continue;
            case '\b': out += "\\b"; continue;
            case '\f': out += "\\f"; continue;
            default: break;
        }
        if (cp < 0x20 || cp >= 0x7F) {
            if (cp >= 0x10000) {
                unsigned v = cp - 0x10000;
                std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else {
                std::snprintf(buf, sizeof buf, "\\u%04x", cp);
            }
            out += buf;
        } else {
            out += static_cast<char>(cp);
        }
    }
    return out + "\"";
}

std::string python_float(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest digits
    std::string sci(buf, r.ptr);
    std::string sign;
    if (sci[0] == '-') { sign = "-"; sci.erase(0, 1); }
    size_t e = sci.find('e');
    int exp = std::atoi(sci.c_str() + e + 1);
    std::string digits;
    for (size_t i = 0; i < e; ++i) if (sci[i] != '.') digits += sci[i];
    if (exp >= -4 && exp < 16) {  // repr: fixed notation for 1e-4 <= |v| < 1e16
        std::string s;
        if (exp < 0) {
            s = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
        } else if (static_cast<int>(digits.size()) <= exp + 1) {
            s = digits + std::string(static_cast<size_t>(exp + 1 - static_cast<int>(digits.size())), '0') + ".0";
        } else {
            s = digits.substr(0, static_cast<size_t>(exp + 1)) + "." + digits.substr(static_cast<size_t>(exp + 1));
        }
        return sign + s;
    }
    std::string mant = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return sign + mant + eb;
}

double round6(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6f", v);
    return std::strtod(buf, nullptr);
}

// -------------------------------------------------------------------------- ResultWriter
ResultWriter::ResultWriter(const std::string& out_dir, bool save_images) : out_(out_dir) {
    for (fs::path p = fs::absolute(out_dir); !p.empty() && !fs::exists(p); p = p.parent_path()) {
        created_.push_back(p.string());
        if (p == p.parent_path()) break;
    }
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec || !fs::is_directory(out_dir))
        throw usage_error("cannot create output folder " + out_dir + " (" + (ec ? ec.message() : "not a folder") +
                          "); choose a writable --output-dir");
    std::string probe = (fs::path(out_dir) / ".mnv3-write-test-XXXXXX").string();
    int fd = mkstemp(probe.data());
    if (fd < 0) {
        int err = errno;
        abort();
        throw usage_error("cannot write into output folder " + out_dir + " (" + std::strerror(err) + "); choose a writable --output-dir");
    }
    close(fd);
    unlink(probe.c_str());
    labels_ = open_tmp("eval_labels.txt");
    top1_ = open_tmp("eval_result_1.txt");
    top5_ = open_tmp("eval_result_5.txt");
    jsonl_ = open_tmp("results.jsonl");
    skipped_ = open_tmp("skipped.txt");
    if (save_images) {
        std::string tmpl = (fs::path(out_dir) / ".images.partial-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw write_error(out_dir, errno);
        staging_ = tmpl;
    }
}

ResultWriter::~ResultWriter() {
    if (!done_) abort();
}

ResultWriter::Tmp ResultWriter::open_tmp(const std::string& name) {
    Tmp t;
    t.final_name = name;
    std::string tmpl = (fs::path(out_) / ("." + name + ".XXXXXX.tmp")).string();
    int fd = mkstemps(tmpl.data(), 4);
    if (fd < 0) throw write_error(out_ + "/" + name, errno);
    t.path = tmpl;
    t.f = fdopen(fd, "w");
    return t;
}

void ResultWriter::write(Tmp& t, const std::string& line) {
    if (std::fputs(line.c_str(), t.f) < 0 || std::fputc('\n', t.f) < 0) throw write_error(out_ + "/" + t.final_name, errno);
}

void ResultWriter::add(const std::string& name, int label, const int top5[5], const double probs5[5],
                       const std::vector<std::string>& class_names) {
    write(top1_, name + " " + std::to_string(top5[0]));
    for (int k = 0; k < 5; ++k) write(top5_, name + " " + std::to_string(top5[k]));
    if (label >= 0) {
        ++sum_.labeled;
        write(labels_, name + " " + std::to_string(label));
        sum_.correct1 += top5[0] == label;
        for (int k = 0; k < 5; ++k) if (top5[k] == label) { ++sum_.correct5; break; }
    }
    std::string j = "{\"file\": " + json_string(name) + ", \"label\": " + (label >= 0 ? std::to_string(label) : "null") + ", \"top5\": [";
    for (int k = 0; k < 5; ++k) j += (k ? ", " : "") + std::to_string(top5[k]);
    j += "], \"names\": [";
    for (int k = 0; k < 5; ++k) {
        size_t c = static_cast<size_t>(top5[k]);
        j += (k ? ", " : "") + json_string(c < class_names.size() ? class_names[c] : std::to_string(top5[k]));
    }
    j += "], \"probs\": [";
    for (int k = 0; k < 5; ++k) j += (k ? ", " : "") + python_float(round6(probs5[k]));
    write(jsonl_, j + "]}");
    ++sum_.processed;
}

void ResultWriter::skip(const std::string& name, const std::string& reason) {
    write(skipped_, name + "\t" + reason);
    ++sum_.skipped;
}

void ResultWriter::commit() {
    auto target = [&](const char* n) { return (fs::path(out_) / n).string(); };
    unlink(target("eval_result.txt").c_str());
    unlink(target("skipped.txt").c_str());
    for (Tmp* t : {&labels_, &top1_, &top5_, &jsonl_, &skipped_}) {
        if (std::fflush(t->f) != 0 || fsync(fileno(t->f)) != 0 || std::fclose(t->f) != 0) {
            t->f = nullptr;
            throw write_error(target(t->final_name.c_str()), errno);
        }
        t->f = nullptr;
    }
    auto publish = [&](Tmp& t, bool keep) {
        if (!keep) { unlink(t.path.c_str()); unlink(target(t.final_name.c_str()).c_str()); return; }
        chmod(t.path.c_str(), 0644);
        if (std::rename(t.path.c_str(), target(t.final_name.c_str()).c_str()) != 0) throw write_error(target(t.final_name.c_str()), errno);
    };
    publish(labels_, sum_.labeled > 0);
    publish(top1_, true);
    publish(top5_, true);
    publish(jsonl_, true);
    publish(skipped_, sum_.skipped > 0);
    if (!staging_.empty()) {  // annotated copies: moved in only now (same filesystem: renames)
        std::error_code ec;
        for (auto it = fs::recursive_directory_iterator(staging_, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
            if (!it->is_regular_file()) continue;
            fs::path dest = fs::path(out_) / "images" / fs::relative(it->path(), staging_);
            fs::create_directories(dest.parent_path(), ec);
            if (ec || std::rename(it->path().c_str(), dest.c_str()) != 0) throw write_error(dest.string(), ec ? ec.value() : errno);
        }
        fs::remove_all(staging_, ec);
        staging_.clear();
    }
    if (sum_.labeled > 0) {
        char text[128];
        std::snprintf(text, sizeof text, "top1 accuracy: %f\ntop5 accuracy: %f\n",
                      double(sum_.correct1) / sum_.labeled, double(sum_.correct5) / sum_.labeled);
        Tmp t = open_tmp("eval_result.txt");
        if (std::fputs(text, t.f) < 0 || std::fclose(t.f) != 0) { unlink(t.path.c_str()); throw write_error(target("eval_result.txt"), errno); }
        t.f = nullptr;
        chmod(t.path.c_str(), 0644);
        if (std::rename(t.path.c_str(), target("eval_result.txt").c_str()) != 0) throw write_error(target("eval_result.txt"), errno);
    }
    done_ = true;
}

void ResultWriter::abort() {
    done_ = true;
    for (Tmp* t : {&labels_, &top1_, &top5_, &jsonl_, &skipped_}) {
        if (t->f) std::fclose(t->f);
        t->f = nullptr;
        if (!t->path.empty()) unlink(t->path.c_str());
    }
    std::error_code ec;
    if (!staging_.empty()) fs::remove_all(staging_, ec);
    if (created_.empty()) return;  // the folder existed: its earlier results are the user's
    for (const char* n : RESULT_FILES) unlink((fs::path(out_) / n).c_str());
    fs::remove_all(fs::path(out_) / "images", ec);
    for (const auto& d : created_)
        if (rmdir(d.c_str()) != 0) return;  // something else appeared in it: not ours to delete
}

// ---------------------------------------------------------------------------- ImageSaver
ImageSaver::ImageSaver(std::string staging_dir) : dir_(std::move(staging_dir)), thread_([this] { loop(); }) {}

ImageSaver::~ImageSaver() {
    {
        std::lock_guard<std::mutex> lk(m_);
        closing_ = true;
        jobs_.clear();
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void ImageSaver::submit(const std::string& src, const std::string& name, const std::string& text) {
    std::unique_lock<std::mutex> lk(m_);
    cv_.wait(lk, [&] { return jobs_.size() < 64 || !error_.empty(); });
    if (!error_.empty()) throw usage_error(error_);
    jobs_.push_back({src, name, text});
    cv_.notify_all();
}

void ImageSaver::finish() {
    {
        std::lock_guard<std::mutex> lk(m_);
        closing_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (!error_.empty()) throw usage_error(error_);
}

void ImageSaver::loop() {
    for (;;) {
        Job job;
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_.wait(lk, [&] { return !jobs_.empty() || closing_; });
            if (jobs_.empty()) return;
            job = std::move(jobs_.front());
            jobs_.pop_front();
        }
        cv_.notify_all();
        try {
            Rgb img = decode_file(job.src);
            draw_label(img, job.text);
            fs::path dest = fs::path(dir_) / job.name;
            fs::create_directories(dest.parent_path());
            std::string ext = lower_ext(job.name);
            if (ext == ".jpg" || ext == ".jpeg") write_jpeg(dest.string(), img, 90);
            else write_png(dest.string(), img);
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> lk(m_);
            if (error_.empty()) error_ = std::string("cannot save the annotated copy of ") + job.name + ": " + e.what();
            cv_.notify_all();
            return;
        }
    }
}

}  // namespace mnv3
