// Decoding and the encoders of image.hpp (the resize is resize.cpp). Every choice here mirrors
// a line of src/mnv3/data/preprocess.py or of Pillow's C code it calls (JpegDecode.c,
// AlphaComposite.c, Convert.c), so that the tensor the engine sees is the one Python builds;
// tests/test_cpp.py measures that it is.
#include "image.hpp"

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

// The part of a w x h JPEG to decode for `need`: the pixels its resize reads, widened by one
// iMCU each side but the bottom. Fancy upsampling replicates chroma at a cropped edge, so the
// edge columns of a cropped decode differ from the full decode's, and the rows just after a
// skip are where the skip's context bookkeeping would show; the margins are decoded and
// discarded by the resize, so the pixels it reads are the full decode's (tests/test_cpp.py and
// benchmarks/cpp_vs_python.py compare every tensor with Python's).
Rect jpeg_region(const Preprocessor* need, int w, int h, int imcu_w, int imcu_h) {
    Rect r{0, 0, w, h};
    if (!need || !need->needed(w, h, &r)) return Rect{0, 0, w, h};
    r.x0 = std::max(0, r.x0 - imcu_w);
    r.x1 = std::min(w, r.x1 + imcu_w);
    r.y0 = std::max(0, r.y0 - imcu_h);
    return r;
}

// Past the last row needed: decode the rest of the entropy data without the IDCTs, so that a
// file cut short there is still reported as Pillow reports it. jpeg_skip_scanlines to the very
// end would decode nothing (it just marks the end reached), so skip to the last row and read
// it; and start the skip at a row-group boundary (a skip from inside one mis-tracks the
// upsampler, libjpeg-turbo issue 915).
void drain_jpeg(jpeg_decompress_struct* cinfo, uint8_t* scratch_row) {
    JSAMPROW rows[1] = {scratch_row};
    const JDIMENSION group = static_cast<JDIMENSION>(cinfo->max_v_samp_factor);
    while (cinfo->output_scanline < cinfo->output_height && cinfo->output_scanline % group != 0)
        jpeg_read_scanlines(cinfo, rows, 1);
    const JDIMENSION left = cinfo->output_height - cinfo->output_scanline;
    if (left > 1) jpeg_skip_scanlines(cinfo, left - 1);
    while (cinfo->output_scanline < cinfo->output_height) jpeg_read_scanlines(cinfo, rows, 1);
}

// Returns an empty string on success, else the reason. No C++ object with a destructor is
// created between setjmp and the end of the function, so longjmp skips nothing.
std::string decode_jpeg(const uint8_t* data, size_t size, Rgb* out, std::vector<uint8_t>* row,
                        const Preprocessor* need) {
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
    jpeg_mem_src(&cinfo, const_cast<unsigned char*>(data), static_cast<unsigned long>(size));
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
    const int full_w = static_cast<int>(cinfo.output_width), full_h = static_cast<int>(cinfo.output_height);
    const Rect r = jpeg_region(need, full_w, full_h, cinfo.max_h_samp_factor * DCTSIZE,
                               cinfo.max_v_samp_factor * DCTSIZE);
    JDIMENSION xoff = 0, width = cinfo.output_width;
    if (r.x0 > 0 || r.x1 < full_w) {
        xoff = static_cast<JDIMENSION>(r.x0);  // rounded down to an iMCU boundary by libjpeg
        width = static_cast<JDIMENSION>(r.x1 - r.x0);
        jpeg_crop_scanline(&cinfo, &xoff, &width);
    }
    if (r.y0 > 0) jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(r.y0));
    out->full_w = full_w;
    out->full_h = full_h;
    out->x0 = static_cast<int>(xoff);
    out->y0 = static_cast<int>(cinfo.output_scanline);
    out->w = static_cast<int>(cinfo.output_width);
    out->h = r.y1 - out->y0;
    out->px.resize(static_cast<size_t>(out->w) * out->h * 3);
    row->resize(static_cast<size_t>(out->w) * 4);  // CMYK rows, and rows read to be dropped
    while (cinfo.output_scanline < static_cast<JDIMENSION>(r.y1)) {
        uint8_t* dst = out->px.data() + static_cast<size_t>(cinfo.output_scanline - out->y0) * out->w * 3;
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
    drain_jpeg(&cinfo, row->data());
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

std::string decode_png(const uint8_t* data, size_t size, Rgb* out, std::vector<uint8_t>* buf,
                       std::vector<png_bytep>* rows) {
    char message[200] = "PNG decoder error";
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, message, png_on_error, png_on_warning);
    if (!png) return "out of memory";
    png_infop info = png_create_info_struct(png);
    PngSrc src{data, size, 0};
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

}  // namespace

// ------------------------------------------------------------------------------ public API
void decode_memory(const uint8_t* data, size_t size, Rgb* out, const Preprocessor* need) {
    std::string err;
    out->x0 = out->y0 = 0;
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        thread_local std::vector<uint8_t> row;
        err = decode_jpeg(data, size, out, &row, need);
    } else if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
        thread_local std::vector<uint8_t> buf;
        thread_local std::vector<png_bytep> rows;
        err = decode_png(data, size, out, &buf, &rows);
        out->full_w = out->w;
        out->full_h = out->h;
    } else if (size == 0) {
        err = "the file is empty";
    } else {
        err = "not a JPEG or PNG file (mnv3-infer-cpp decodes only these; convert the image, "
              "or run it with the Python engine)";
    }
    if (!err.empty()) throw ImageError(err);
    check_size(out->full_w, out->full_h);
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
void read_file(const std::string& path, std::vector<uint8_t>* data) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw ImageError(std::string("cannot read the file: ") + std::strerror(errno));
    std::string why = problem(st);
    if (!why.empty()) throw FileProblem(why);
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) throw ImageError(std::string("cannot open the file: ") + std::strerror(errno));
    if (::fstat(fd, &st) != 0 || !(why = problem(st)).empty()) {
        ::close(fd);
        if (why.empty()) throw ImageError("cannot read the file");
        throw FileProblem(why);
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    data->resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < data->size()) {
        ssize_t n = ::read(fd, data->data() + got, data->size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    ::close(fd);
    data->resize(got);
}

Rgb decode_file(const std::string& path) {
    std::vector<uint8_t> data;
    read_file(path, &data);
    Rgb out;
    decode_memory(data, &out);
    return out;
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
