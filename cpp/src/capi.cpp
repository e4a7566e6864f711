// libmnv3-preprocess: the C++ program's decode + preprocess (image.cpp, resize.cpp) as C calls,
// for Python's `--decode native` (src/mnv3/data/native_decode.py, through ctypes, which lets go
// of the GIL during each call). Same pixels as mnv3.data.preprocess, fewer CPU ms per image.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "image.hpp"

namespace {

void set_error(char* err, size_t err_len, const std::string& msg) {
    if (!err || err_len == 0) return;
    size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = 0;
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; Python refuses a library of another version.
int mnv3_native_abi(void) { return 1; }

// A preprocessor for one model's settings (meta.json's preprocess); nullptr with the reason in
// err where they are not ones this code reproduces (an interpolation other than bilinear or
// bicubic).
void* mnv3_pre_new(int resize, int crop, const char* interpolation, const float* mean,
                   const float* std, int bgr, char* err, size_t err_len) {
    try {
        mnv3::PreprocessCfg cfg;
        cfg.resize = resize;
        cfg.crop = crop;
        cfg.interpolation = interpolation;
        for (int c = 0; c < 3; ++c) {
            cfg.mean[c] = mean[c];
            cfg.std[c] = std[c];
        }
        cfg.bgr = bgr != 0;
        return new mnv3::Preprocessor(cfg);
    } catch (const std::exception& e) {
        set_error(err, err_len, e.what());
        return nullptr;
    }
}

void mnv3_pre_free(void* pre) { delete static_cast<mnv3::Preprocessor*>(pre); }

// An encoded image (JPEG or PNG bytes) -> float32 [3, crop, crop] into out. Returns 0 when done,
// 1 when this code does not decode the image (another format, a corrupt or truncated file, a
// strip too thin: the caller's own decoder then gives the verdict and its words), 2 when out of
// memory. Thread-safe: buffers are per thread and reused.
int mnv3_pre_run(const void* pre, const uint8_t* data, size_t size, float* out, char* err,
                 size_t err_len) {
    thread_local mnv3::Rgb img, cropped;
    thread_local std::vector<uint8_t> scratch;
    const auto* p = static_cast<const mnv3::Preprocessor*>(pre);
    try {
        mnv3::decode_memory(data, size, &img, p);
        p->resize_and_crop(img, &cropped, &scratch);
        p->normalize(cropped, out);
        return 0;
    } catch (const mnv3::ImageError& e) {
        set_error(err, err_len, e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        set_error(err, err_len, "out of memory");
        return 2;
    }
}

}  // extern "C"
