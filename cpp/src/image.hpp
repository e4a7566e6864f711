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
    // px may hold only part of the decoded image: columns [x0, x0 + w) and rows [y0, y0 + h)
    // of a full_w x full_h source (decode_memory with a Preprocessor decodes only what the
    // resize reads). A whole image: x0 = y0 = 0, full_w = w, full_h = h.
    int x0 = 0, y0 = 0, full_w = 0, full_h = 0;
};

// Source pixels [x0, x1) x [y0, y1).
struct Rect {
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

class Preprocessor;

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
// The file's bytes into data (reused): only a regular file under the image size cap.
void read_file(const std::string& path, std::vector<uint8_t>* data);
// Bytes -> out (its buffer reused). With `need`, a JPEG is decoded only around the pixels that
// pre's resize reads (libjpeg-turbo's jpeg_crop_scanline / jpeg_skip_scanlines, with an iMCU
// of margin so the chroma upsampling at the edges is the full decode's): the same pixels
// there, fewer IDCTs. The whole file is still entropy-decoded, so truncation is still caught.
void decode_memory(const uint8_t* data, size_t size, Rgb* out, const Preprocessor* need = nullptr);
inline void decode_memory(const std::vector<uint8_t>& data, Rgb* out, const Preprocessor* need = nullptr) {
    decode_memory(data.data(), data.size(), out, need);
}

class Preprocessor {
public:
    explicit Preprocessor(const PreprocessCfg& cfg);
    // RGB -> float32 [3, crop, crop] written to out (channel order per cfg).
    void run(const Rgb& img, float* out) const;
    // Resize short side + center crop into out (buffers reused): crop x crop RGB.
    void resize_and_crop(const Rgb& img, Rgb* out, std::vector<uint8_t>* scratch) const;
    // The crop's RGB -> float32 [3, crop, crop] through the normalisation table.
    void normalize(const Rgb& cropped, float* out) const;
    // The source pixels resize_and_crop reads from a w x h image; false where it would refuse
    // the image (too thin a strip: it says so itself once decoded).
    bool needed(int w, int h, Rect* r) const;
    const PreprocessCfg& cfg() const { return cfg_; }

private:
    PreprocessCfg cfg_;
    float table_[3][256];
};

// Encoders for --save-images copies.
void write_jpeg(const std::string& path, const Rgb& img, int quality);
void write_png(const std::string& path, const Rgb& img);

}  // namespace mnv3
