// Decoding and preprocessing, pixel for pixel as mnv3's Python pipeline (src/mnv3/data/preprocess.py):
// PIL's RGB conversion, Pillow's antialiased resize (same filter support scaling, same 22-bit
// fixed-point coefficients, same pass order and 8-bit rounding between passes), torchvision's
// crop arithmetic, and the float32 table for ToTensor + Normalize.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mnv3 {

// An image that cannot be decoded or preprocessed: the file's fault (skipped, or --strict error).
struct ImageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The file is not one to read at all (a FIFO, a folder, too large): worded as Python's
// mnv3.data.files.open_regular words it ("image PATH is a FIFO ...").
struct FileProblem : ImageError {
    using ImageError::ImageError;
};

struct Rgb {  // 8-bit RGB, rows packed (3 bytes per pixel)
    int w = 0, h = 0;
    std::vector<uint8_t> px;
};

struct PreprocessCfg {
    int resize = 256;
    int crop = 224;
    std::string interpolation = "bilinear";  // bilinear | bicubic
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
    bool bgr = false;  // channel_order "BGR"
};

// Whole file -> RGB. JPEG (libjpeg-turbo) and PNG (libpng); anything else is an ImageError.
// Transparent PNGs are composited over white, 16-bit greyscale scaled to 8 bits, as in Python.
Rgb decode_file(const std::string& path);
Rgb decode_memory(const std::vector<uint8_t>& data);

class Preprocessor {
public:
    explicit Preprocessor(const PreprocessCfg& cfg);
    // RGB -> float32 [3, crop, crop] written to out (channel order per cfg).
    void run(const Rgb& img, float* out) const;
    // Resize short side + center crop only (exposed for tests / --dump).
    Rgb resize_and_crop(const Rgb& img) const;
    const PreprocessCfg& cfg() const { return cfg_; }

private:
    PreprocessCfg cfg_;
    float table_[3][256];
};

// Encoders for --save-images copies.
void write_jpeg(const std::string& path, const Rgb& img, int quality);
void write_png(const std::string& path, const Rgb& img);

}  // namespace mnv3
