// See image.hpp. Every choice here mirrors a line of src/mnv3/data/preprocess.py or of Pillow's
// C code it calls (libImaging/Resample.c, AlphaComposite.c, Convert.c), so that the tensor the
// engine sees is the one Python builds; tests/test_cpp.py measures that it is.
#include "image.hpp"

#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mnv3 {
namespace {

// Pillow's Image.MAX_IMAGE_PIXELS; Python turns its DecompressionBombWarning into an error.
constexpr long long MAX_PIXELS = 89478485;
constexpr int MAX_ASPECT = 64;  // preprocess.MAX_ASPECT

void check_size(long long w, long long h) {
    if (w <= 0 || h <= 0) throw ImageError("image has no pixels");
    if (w * h > MAX_PIXELS)
        throw ImageError("image has " + std::to_string(w * h) + " pixels, more than the " +
                         std::to_string(MAX_PIXELS) + " Pillow allows (decompression bomb); "
                         "replace or remove the file");
}

// ----------------------------------------------------------------------------------- JPEG
struct JpegErr {
    jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated;
};

void jpeg_on_error(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

void jpeg_on_message(j_common_ptr cinfo, int level) {
    // Warnings (-1) are ignored as Pillow ignores them, except premature end of data, which
    // Pillow reports as "image file is truncated".
    auto* err = reinterpret_cast<JpegErr*>(cinfo->err);
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) err->truncated = true;
}

inline uint8_t clip8(int v) { return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v); }
inline int muldiv255(int a, int b) { int t = a * b + 128; return ((t >> 8) + t) >> 8; }

// Returns an empty string on success, else the reason. No C++ object with a destructor is
// created between setjmp and the end of the function, so longjmp skips nothing.
std::string decode_jpeg(const std::vector<uint8_t>& data, Rgb* out, std::vector<uint8_t>* row) {
    jpeg_decompress_struct cinfo;
    JpegErr err;
    err.truncated = false;
    err.message[0] = 0;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_on_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return err.message[0] ? err.message : "JPEG decoder error";
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, const_cast<unsigned char*>(data.data()), static_cast<unsigned long>(data.size()));
    jpeg_read_header(&cinfo, TRUE);
    const long long iw = cinfo.image_width, ih = cinfo.image_height;
    if (iw * ih > MAX_PIXELS) {
        jpeg_destroy_decompress(&cinfo);
        check_size(iw, ih);  // throws the decompression-bomb error
    }
    bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    // Greyscale is expanded to RGB by replication, exactly what PIL's convert("RGB") does.
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    // Pillow's defaults: islow DCT, fancy upsampling, no scaling (no draft mode).
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    out->w = static_cast<int>(cinfo.output_width);
    out->h = static_cast<int>(cinfo.output_height);
    out->px.resize(static_cast<size_t>(out->w) * out->h * 3);
    if (cmyk) row->resize(static_cast<size_t>(out->w) * 4);
    while (cinfo.output_scanline < cinfo.output_height) {
        uint8_t* dst = out->px.data() + static_cast<size_t>(cinfo.output_scanline) * out->w * 3;
        JSAMPROW rows[1] = {cmyk ? row->data() : dst};
        jpeg_read_scanlines(&cinfo, rows, 1);
        if (cmyk) {
            // Pillow reads CMYK JPEGs as "CMYK;I" (Adobe's inverted convention) and converts
            // with cmyk2rgb (libImaging/Convert.c): no colour management.
            const uint8_t* s = row->data();
            for (int x = 0; x < out->w; ++x, s += 4) {
                int nk = s[3];  // 255 - inverted k
                dst[3 * x + 0] = clip8(nk - muldiv255(255 - s[0], nk));
                dst[3 * x + 1] = clip8(nk - muldiv255(255 - s[1], nk));
                dst[3 * x + 2] = clip8(nk - muldiv255(255 - s[2], nk));
            }
        }
    }
    if (err.truncated) {
        jpeg_destroy_decompress(&cinfo);
        return "image file is truncated";
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return "";
}

// ------------------------------------------------------------------------------------ PNG
struct PngSrc {
    const uint8_t* data;
    size_t size, pos;
};

void png_read_mem(png_structp png, png_bytep dst, png_size_t n) {
    auto* src = static_cast<PngSrc*>(png_get_io_ptr(png));
    if (src->pos + n > src->size) png_error(png, "image file is truncated");
    std::memcpy(dst, src->data + src->pos, n);
    src->pos += n;
}

void png_on_error(png_structp png, png_const_charp msg) {
    auto* buf = static_cast<char*>(png_get_error_ptr(png));
    std::snprintf(buf, 200, "%s", msg);
    png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}

// Pillow's alpha_composite(white, rgba) (libImaging/AlphaComposite.c) with an opaque white dst.
inline void over_white(const uint8_t* s, uint8_t* d) {
    const uint32_t a = s[3];
    if (a == 0) { d[0] = d[1] = d[2] = 255; return; }
    const uint32_t blend = 255 * (255 - a);
    const uint32_t outa255 = a * 255 + blend;
    const uint32_t coef1 = a * 255 * 255 * (1u << 7) / outa255;
    const uint32_t coef2 = 255 * (1u << 7) - coef1;
    for (int c = 0; c < 3; ++c) {
        uint32_t t = s[c] * coef1 + 255u * coef2 + (0x80u << 7);
        d[c] = static_cast<uint8_t>((((t >> 8) + t) >> 8) >> 7);
    }
}

std::string decode_png(const std::vector<uint8_t>& data, Rgb* out, std::vector<uint8_t>* buf,
                       std::vector<png_bytep>* rows) {
    char message[200] = "PNG decoder error";
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, message, png_on_error, png_on_warning);
    if (!png) return "out of memory";
    png_infop info = png_create_info_struct(png);
    PngSrc src{data.data(), data.size(), 0};
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        return message;
    }
    if (!info) png_error(png, "out of memory");
    png_set_read_fn(png, &src, png_read_mem);
    // Python checks nothing beyond what Pillow's decoder checks; keep libpng's CRC checks.
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, nullptr, nullptr);
    if (static_cast<long long>(w) * h > MAX_PIXELS) {
        png_destroy_read_struct(&png, &info, nullptr);
        check_size(w, h);  // throws the decompression-bomb error
    }
    const bool gray16 = (color == PNG_COLOR_TYPE_GRAY) && depth == 16;
    bool alpha = (color & PNG_COLOR_MASK_ALPHA) != 0;
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
        // A palette with transparency becomes RGBA (Python: P with transparency -> RGBA);
        // greyscale / RGB with a tRNS colour stay opaque, as convert("RGB") ignores it.
        if (png_get_valid(png, info, PNG_INFO_tRNS)) { png_set_tRNS_to_alpha(png); alpha = true; }
    }
    if ((color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);  // 1-bit -> 0/255, 2-bit x85, 4-bit x17, as Pillow
    if (depth == 16 && !gray16) png_set_strip_16(png);  // Pillow's ";16B" modes keep the high byte
    if (depth == 16 && gray16) png_set_swap(png) /* read native-endian uint16 */;
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    const int channels = png_get_channels(png, info);
    buf->resize(rowbytes * h);
    rows->resize(h);
    for (png_uint_32 y = 0; y < h; ++y) (*rows)[y] = buf->data() + y * rowbytes;
    png_read_image(png, rows->data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);

    out->w = static_cast<int>(w);
    out->h = static_cast<int>(h);
    out->px.resize(static_cast<size_t>(w) * h * 3);
    uint8_t* d = out->px.data();
    for (png_uint_32 y = 0; y < h; ++y) {
        const uint8_t* s = (*rows)[y];
        for (png_uint_32 x = 0; x < w; ++x, d += 3) {
            if (gray16) {
                uint16_t v;
                std::memcpy(&v, s + 2 * x, 2);
                // Python: clip(v / 257.0 + 0.5, 0, 255).astype(uint8), then L -> RGB
                double f = std::min(255.0, std::max(0.0, v / 257.0 + 0.5));
                d[0] = d[1] = d[2] = static_cast<uint8_t>(f);
            } else if (channels == 1) {
                d[0] = d[1] = d[2] = s[x];
            } else if (channels == 2) {  // LA -> RGBA -> over white
                uint8_t rgba[4] = {s[2 * x], s[2 * x], s[2 * x], s[2 * x + 1]};
                over_white(rgba, d);
            } else if (channels == 3) {
                d[0] = s[3 * x]; d[1] = s[3 * x + 1]; d[2] = s[3 * x + 2];
            } else {
                over_white(s + 4 * x, d);
            }
        }
    }
    (void)alpha;
    return "";
}

// --------------------------------------------------------------------------------- resize
// Pillow's libImaging/Resample.c for 8-bit images: coefficients in double, normalised to
// 22-bit fixed point, accumulated from 1 << 21 and clipped to 0..255 after each pass.
constexpr int PRECISION_BITS = 32 - 8 - 2;

double bilinear(double x) { x = std::fabs(x); return x < 1.0 ? 1.0 - x : 0.0; }
double bicubic(double x) {
    const double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;  // per output pixel: first input pixel, tap count
    std::vector<int32_t> k;
};

Coeffs precompute(int in_size, int out_size, bool cubic) {
    double (*filter)(double) = cubic ? bicubic : bilinear;
    const double base_support = cubic ? 2.0 : 1.0;
    const float in0 = 0.0f, in1 = static_cast<float>(in_size);
    double scale = static_cast<double>(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = base_support * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(static_cast<size_t>(out_size) * 2);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> kk(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; ++x) {
            double w = filter((x + xmin - center + 0.5) * ss);
            kk[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x) {
            if (ww != 0.0) kk[x] /= ww;
            double v = kk[x];
            c.k[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(
                v < 0 ? (-0.5 + v * (1 << PRECISION_BITS)) : (0.5 + v * (1 << PRECISION_BITS)));
        }
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    return c;
}

inline uint8_t clip_acc(int32_t v) {
    v >>= PRECISION_BITS;
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over rows [0, rows) of src (sw pixels wide): output columns [x0, x1).
void hpass(const uint8_t* src, int sw, int rows, const Coeffs& c, int x0, int x1, uint8_t* out) {
    const int ow = x1 - x0;
    for (int y = 0; y < rows; ++y) {
        const uint8_t* s = src + static_cast<size_t>(y) * sw * 3;
        uint8_t* d = out + static_cast<size_t>(y) * ow * 3;
        for (int xx = x0; xx < x1; ++xx, d += 3) {
            const int xmin = c.bounds[2 * xx], n = c.bounds[2 * xx + 1];
            const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            const uint8_t* p = s + static_cast<size_t>(xmin) * 3;
            for (int x = 0; x < n; ++x, p += 3) {
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            d[0] = clip_acc(s0); d[1] = clip_acc(s1); d[2] = clip_acc(s2);
        }
    }
}

// Vertical pass: output rows [y0, y1); src holds input rows from src_row0 on, sw pixels wide.
void vpass(const uint8_t* src, int sw, int src_row0, const Coeffs& c, int y0, int y1, uint8_t* out) {
    const size_t n3 = static_cast<size_t>(sw) * 3;
    std::vector<int32_t> acc(n3);
    for (int yy = y0; yy < y1; ++yy) {
        const int ymin = c.bounds[2 * yy], n = c.bounds[2 * yy + 1];
        const int32_t* k = &c.k[static_cast<size_t>(yy) * c.ksize];
        std::fill(acc.begin(), acc.end(), 1 << (PRECISION_BITS - 1));
        for (int y = 0; y < n; ++y) {  // same order as Pillow: the integer sums are identical
            const uint8_t* s = src + static_cast<size_t>(ymin + y - src_row0) * n3;
            const int32_t ky = k[y];
            for (size_t i = 0; i < n3; ++i) acc[i] += s[i] * ky;
        }
        uint8_t* d = out + static_cast<size_t>(yy - y0) * n3;
        for (size_t i = 0; i < n3; ++i) d[i] = clip_acc(acc[i]);
    }
}

Rgb crop(const Rgb& img, int left, int top, int right, int bottom) {
    Rgb out;
    out.w = right - left;
    out.h = bottom - top;
    out.px.resize(static_cast<size_t>(out.w) * out.h * 3);
    for (int y = 0; y < out.h; ++y)
        std::memcpy(&out.px[static_cast<size_t>(y) * out.w * 3],
                    &img.px[(static_cast<size_t>(top + y) * img.w + left) * 3], static_cast<size_t>(out.w) * 3);
    return out;
}

// Python's round() on a multiple of 0.5: halves go to the even neighbour.
int round_half_even_div2(int d) {
    if (d % 2 == 0) return d / 2;
    int lo = d / 2, hi = lo + 1;  // d >= 0 here
    return lo % 2 == 0 ? lo : hi;
}

}  // namespace

// ------------------------------------------------------------------------------ public API
Rgb decode_memory(const std::vector<uint8_t>& data) {
    Rgb out;
    std::string err;
    if (data.size() >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        std::vector<uint8_t> row;
        err = decode_jpeg(data, &out, &row);
    } else if (data.size() >= 8 && std::memcmp(data.data(), "\x89PNG\r\n\x1a\n", 8) == 0) {
        std::vector<uint8_t> buf;
        std::vector<png_bytep> rows;
        err = decode_png(data, &out, &buf, &rows);
    } else if (data.empty()) {
        err = "the file is empty";
    } else {
        err = "not a JPEG or PNG file (mnv3-infer-cpp decodes only these; convert the image, "
              "or run it with the Python engine)";
    }
    if (!err.empty()) throw ImageError(err);
    check_size(out.w, out.h);
    return out;
}

namespace {
// What a non-regular file is, in the words of mnv3.data.files.file_kind.
const char* file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a folder";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    return "not a regular file";
}

constexpr off_t MAX_IMAGE_BYTES = off_t(256) << 20;  // mnv3.data.files.MAX_BYTES["image"]

std::string problem(const struct stat& st) {
    if (!S_ISREG(st.st_mode)) return std::string("is ") + file_kind(st.st_mode) + ", not a regular file";
    if (st.st_size > MAX_IMAGE_BYTES)
        return "is " + std::to_string(st.st_size >> 20) + " MiB, more than the 256.0 MiB an image may be";
    return "";
}
}  // namespace

// Only a regular file under the cap is read (mnv3.data.files.open_regular): a FIFO named
// fifo.jpg would otherwise block the program forever. O_NONBLOCK until the descriptor itself is
// checked, so a file swapped for a FIFO after the stat is still caught.
Rgb decode_file(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw ImageError(std::string("cannot read the file: ") + std::strerror(errno));
    std::string why = problem(st);
    if (!why.empty()) throw FileProblem(why);
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) throw ImageError(std::string("cannot open the file: ") + std::strerror(errno));
    std::vector<uint8_t> data;
    if (::fstat(fd, &st) != 0 || !(why = problem(st)).empty()) {
        ::close(fd);
        if (why.empty()) throw ImageError("cannot read the file");
        throw FileProblem(why);
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    data.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < data.size()) {
        ssize_t n = ::read(fd, data.data() + got, data.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    ::close(fd);
    data.resize(got);
    return decode_memory(data);
}

Preprocessor::Preprocessor(const PreprocessCfg& cfg) : cfg_(cfg) {
    if (cfg.interpolation != "bilinear" && cfg.interpolation != "bicubic")
        throw std::invalid_argument("interpolation '" + cfg.interpolation +
                                    "' is not supported by mnv3-infer-cpp (bilinear, bicubic)");
    // preprocess._lookup_table: (float32(v) / 255 - mean) / std, all in float32.
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v) {
            volatile float x = static_cast<float>(v) / 255.0f;
            volatile float y = x - cfg.mean[c];
            table_[c][v] = y / cfg.std[c];
        }
}

Rgb Preprocessor::resize_and_crop(const Rgb& img) const {
    // preprocess.resize_and_crop + _resize_cropped, including Pillow's pass order.
    const int w = img.w, h = img.h;
    const int s = std::min(w, h), l = std::max(w, h);
    if (l > MAX_ASPECT * s)
        throw ImageError("image is " + std::to_string(w) + "x" + std::to_string(h) + ", more than " +
                         std::to_string(MAX_ASPECT) + " times longer than wide; crop it to the subject first");
    const int new_short = cfg_.resize;
    const int new_long = static_cast<int>(static_cast<double>(static_cast<long long>(cfg_.resize) * l) / s);
    const int new_w = w <= h ? new_short : new_long, new_h = w <= h ? new_long : new_short;
    const int top = round_half_even_div2(new_h - cfg_.crop), left = round_half_even_div2(new_w - cfg_.crop);
    const int right = left + cfg_.crop, bottom = top + cfg_.crop;
    if (new_w == w && new_h == h) return crop(img, left, top, right, bottom);
    const bool cubic = cfg_.interpolation == "bicubic";
    Rgb out;
    out.w = out.h = cfg_.crop;
    out.px.resize(static_cast<size_t>(cfg_.crop) * cfg_.crop * 3);
    if ((h - new_h) > 0 && (h - new_h) > 2 * (w - new_w)) {
        // vertical first (only the kept rows), then horizontal (only the kept columns)
        Coeffs cv = precompute(h, new_h, cubic);
        std::vector<uint8_t> tmp(static_cast<size_t>(w) * (bottom - top) * 3);
        vpass(img.px.data(), w, 0, cv, top, bottom, tmp.data());
        if (new_w != w) {
            Coeffs ch = precompute(w, new_w, cubic);
            hpass(tmp.data(), w, bottom - top, ch, left, right, out.px.data());
        } else {
            Rgb t{w, bottom - top, std::move(tmp)};
            return crop(t, left, 0, right, bottom - top);
        }
        return out;
    }
    // horizontal first (only the kept columns, only the rows the vertical pass reads)
    if (new_h == h) {
        Coeffs ch = precompute(w, new_w, cubic);
        Rgb rows = crop(img, 0, top, w, bottom);
        hpass(rows.px.data(), w, rows.h, ch, left, right, out.px.data());
        return out;
    }
    Coeffs cv = precompute(h, new_h, cubic);
    const int r0 = cv.bounds[2 * top];
    const int r1 = cv.bounds[2 * (bottom - 1)] + cv.bounds[2 * (bottom - 1) + 1];
    const int cw = right - left;
    std::vector<uint8_t> tmp(static_cast<size_t>(cw) * (r1 - r0) * 3);
    if (new_w != w) {
        Coeffs ch = precompute(w, new_w, cubic);
        hpass(img.px.data() + static_cast<size_t>(r0) * w * 3, w, r1 - r0, ch, left, right, tmp.data());
    } else {
        Rgb part = crop(img, left, r0, right, r1);
        tmp = std::move(part.px);
    }
    vpass(tmp.data(), cw, r0, cv, top, bottom, out.px.data());
    return out;
}

void Preprocessor::run(const Rgb& img, float* out) const {
    Rgb c = resize_and_crop(img);
    const size_t plane = static_cast<size_t>(cfg_.crop) * cfg_.crop;
    for (int ch = 0; ch < 3; ++ch) {
        const int src = cfg_.bgr ? 2 - ch : ch;
        const float* t = table_[ch];
        float* o = out + ch * plane;
        const uint8_t* p = c.px.data() + src;
        for (size_t i = 0; i < plane; ++i, p += 3) o[i] = t[*p];
    }
}

// ------------------------------------------------------------------------------- encoders
void write_jpeg(const std::string& path, const Rgb& img, int quality) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
    jpeg_compress_struct cinfo;
    JpegErr err;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.message[0] = 0;
    if (setjmp(err.jump)) {
        jpeg_destroy_compress(&cinfo);
        std::fclose(f);
        throw std::runtime_error("cannot write " + path + ": " + err.message);
    }
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = static_cast<JDIMENSION>(img.w);
    cinfo.image_height = static_cast<JDIMENSION>(img.h);
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = const_cast<JSAMPROW>(&img.px[static_cast<size_t>(cinfo.next_scanline) * img.w * 3]);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

void write_png(const std::string& path, const Rgb& img) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
    char message[200] = "PNG encoder error";
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, message, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        std::fclose(f);
        throw std::runtime_error("cannot write " + path + ": " + message);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, static_cast<png_uint_32>(img.w), static_cast<png_uint_32>(img.h), 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < img.h; ++y)
        png_write_row(png, const_cast<png_bytep>(&img.px[static_cast<size_t>(y) * img.w * 3]));
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

}  // namespace mnv3
