// The Preprocessor of image.hpp: Pillow's antialiased resize (libImaging/Resample.c for 8-bit
// images: coefficients in double, normalised to 22-bit fixed point, accumulated from 1 << 21 and
// clipped to 0..255 after each pass, the same pass order), torchvision's crop arithmetic, and
// the float32 table of preprocess._lookup_table. Like preprocess._resize_cropped it computes
// only what the crop keeps: each output column of the vertical pass depends only on its column,
// each output row of the horizontal pass only on its row, so dropping the others before (or
// instead of) computing them changes no pixel. The sums are integers: any evaluation order
// (vectorised or not) gives Pillow's exact values.
#include <algorithm>
#include <cmath>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MNV3_X86 1
#endif
#include <cstring>
#include <stdexcept>

#include "image.hpp"

namespace mnv3 {
namespace {

constexpr int MAX_ASPECT = 64;  // preprocess.MAX_ASPECT
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
    int first(int o) const { return bounds[2 * o]; }
    int end(int o) const { return bounds[2 * o] + bounds[2 * o + 1]; }
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

// The two hot loops are compiled for AVX2 as well as the baseline; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MNV3_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MNV3_CLONES
#endif

// Horizontal pass: `rows` rows, `sstride` bytes apart; src points at input column src_col0 of
// the first; output columns [x0, x1), packed.
void hpass_scalar(const uint8_t* src, size_t sstride, int src_col0, int rows, const Coeffs& c, int x0,
           int x1, uint8_t* out) {
    const int ow = x1 - x0;
    for (int y = 0; y < rows; ++y) {
        const uint8_t* s = src + static_cast<size_t>(y) * sstride;
        uint8_t* d = out + static_cast<size_t>(y) * ow * 3;
        for (int xx = x0; xx < x1; ++xx, d += 3) {
            const int xmin = c.bounds[2 * xx], n = c.bounds[2 * xx + 1];
            const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            const uint8_t* p = s + static_cast<size_t>(xmin - src_col0) * 3;
            for (int x = 0; x < n; ++x, p += 3) {
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            d[0] = clip_acc(s0); d[1] = clip_acc(s1); d[2] = clip_acc(s2);
        }
    }
}

#ifdef MNV3_X86
// The same sums with AVX2, two taps per step: the bytes of pixels x and x + 1 are widened to
// [R G B 0 R G B 0] int32 lanes and multiplied by [k k k k k' k' k' k'] (32-bit products, as
// Pillow's: exact). A step reads up to 5 bytes past the pixels it uses, so the last row of the
// buffer is left to the scalar code.
__attribute__((target("avx2")))
void hpass_avx2(const uint8_t* src, size_t sstride, int src_col0, int rows, const Coeffs& c,
                int x0, int x1, uint8_t* out) {
    const int ow = x1 - x0;
    const __m128i pick = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const __m128i half = _mm_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int y = 0; y < rows - 1; ++y) {
        const uint8_t* s = src + static_cast<size_t>(y) * sstride;
        uint8_t* d = out + static_cast<size_t>(y) * ow * 3;
        for (int xx = x0; xx < x1; ++xx, d += 3) {
            const int xmin = c.bounds[2 * xx], n = c.bounds[2 * xx + 1];
            const int32_t* k = &c.k[static_cast<size_t>(xx) * c.ksize];
            const uint8_t* p = s + static_cast<size_t>(xmin - src_col0) * 3;
            __m256i acc = _mm256_setzero_si256();
            int x = 0;
            for (; x + 1 < n; x += 2, p += 6) {
                __m128i px = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), pick);
                __m256i kk = _mm256_permutevar8x32_epi32(
                    _mm256_castsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(k + x))), spread);
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px), kk));
            }
            __m128i sum = _mm_add_epi32(_mm_add_epi32(_mm256_castsi256_si128(acc),
                                                      _mm256_extracti128_si256(acc, 1)), half);
            if (x < n) {
                int32_t one;
                std::memcpy(&one, p, 4);
                __m128i px = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(one));
                sum = _mm_add_epi32(sum, _mm_mullo_epi32(px, _mm_set1_epi32(k[x])));
            }
            // >> 22, then saturate to int16 and uint8: clip_acc's clamp to 0..255
            __m128i v = _mm_srai_epi32(sum, PRECISION_BITS);
            v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
            const int32_t rgb = _mm_cvtsi128_si32(v);
            std::memcpy(d, &rgb, 3);
        }
    }
    if (rows > 0)
        hpass_scalar(src + static_cast<size_t>(rows - 1) * sstride, sstride, src_col0, 1, c, x0, x1,
                     out + static_cast<size_t>(rows - 1) * ow * 3);
}
#endif

void hpass(const uint8_t* src, size_t sstride, int src_col0, int rows, const Coeffs& c, int x0,
           int x1, uint8_t* out) {
#ifdef MNV3_X86
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) return hpass_avx2(src, sstride, src_col0, rows, c, x0, x1, out);
#endif
    hpass_scalar(src, sstride, src_col0, rows, c, x0, x1, out);
}

// Vertical pass: output rows [y0, y1) of `width` pixels, packed; src points at input row
// src_row0, rows `sstride` bytes apart. acc: scratch of width * 3.
MNV3_CLONES
void vpass(const uint8_t* src, size_t sstride, int width, int src_row0, const Coeffs& c, int y0,
           int y1, uint8_t* out, int32_t* acc) {
    const size_t n3 = static_cast<size_t>(width) * 3;
    for (int yy = y0; yy < y1; ++yy) {
        const int ymin = c.bounds[2 * yy], n = c.bounds[2 * yy + 1];
        const int32_t* k = &c.k[static_cast<size_t>(yy) * c.ksize];
        for (size_t i = 0; i < n3; ++i) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < n; ++y) {
            const uint8_t* s = src + static_cast<size_t>(ymin + y - src_row0) * sstride;
            const int32_t ky = k[y];
            for (size_t i = 0; i < n3; ++i) acc[i] += s[i] * ky;
        }
        uint8_t* d = out + static_cast<size_t>(yy - y0) * n3;
        for (size_t i = 0; i < n3; ++i) d[i] = clip_acc(acc[i]);
    }
}

// Python's round() on a multiple of 0.5: halves go to the even neighbour.
int round_half_even_div2(int d) {
    if (d % 2 == 0) return d / 2;
    int lo = d / 2, hi = lo + 1;  // d >= 0 here
    return lo % 2 == 0 ? lo : hi;
}

// One image's geometry: preprocess._geometry, Pillow's pass order, the source pixels read.
struct Plan {
    int new_w = 0, new_h = 0, left = 0, top = 0, right = 0, bottom = 0;
    bool hres = false, vres = false, vfirst = false;
    Coeffs ch, cv;
    Rect src;
};

Plan make_plan(const PreprocessCfg& cfg, int w, int h) {
    const int s = std::min(w, h), l = std::max(w, h);
    if (l > MAX_ASPECT * s)
        throw ImageError("image is " + std::to_string(w) + "x" + std::to_string(h) +
                         ", more than " + std::to_string(MAX_ASPECT) +
                         " times longer than wide; crop it to the subject first");
    Plan p;
    const int new_long = static_cast<int>(static_cast<double>(static_cast<long long>(cfg.resize) * l) / s);
    p.new_w = w <= h ? cfg.resize : new_long;
    p.new_h = w <= h ? new_long : cfg.resize;
    p.top = round_half_even_div2(p.new_h - cfg.crop);
    p.left = round_half_even_div2(p.new_w - cfg.crop);
    p.right = p.left + cfg.crop;
    p.bottom = p.top + cfg.crop;
    p.hres = p.new_w != w;
    p.vres = p.new_h != h;
    // Pillow >= 11 (libImaging/Resample.c): vertical first when the height shrinks by more
    // than twice as many pixels as the width does.
    p.vfirst = (h - p.new_h) > 0 && (h - p.new_h) > 2 * (w - p.new_w);
    const bool cubic = cfg.interpolation == "bicubic";
    p.src = Rect{p.left, p.top, p.right, p.bottom};
    if (p.hres) {
        p.ch = precompute(w, p.new_w, cubic);
        p.src.x0 = p.ch.first(p.left);
        p.src.x1 = p.ch.end(p.right - 1);
    }
    if (p.vres) {
        p.cv = precompute(h, p.new_h, cubic);
        p.src.y0 = p.cv.first(p.top);
        p.src.y1 = p.cv.end(p.bottom - 1);
    }
    return p;
}

}  // namespace

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

bool Preprocessor::needed(int w, int h, Rect* r) const {
    try {
        *r = make_plan(cfg_, w, h).src;
        return true;
    } catch (const ImageError&) {
        return false;
    }
}

void Preprocessor::resize_and_crop(const Rgb& img, Rgb* out, std::vector<uint8_t>* scratch) const {
    const int fw = img.full_w ? img.full_w : img.w, fh = img.full_h ? img.full_h : img.h;
    const Plan p = make_plan(cfg_, fw, fh);
    if (p.src.x0 < img.x0 || p.src.y0 < img.y0 || p.src.x1 > img.x0 + img.w ||
        p.src.y1 > img.y0 + img.h)
        throw std::logic_error("decoded region does not cover the resize's input");
    const int n = cfg_.crop;
    out->w = out->h = out->full_w = out->full_h = n;
    out->x0 = out->y0 = 0;
    out->px.resize(static_cast<size_t>(n) * n * 3);
    const size_t stride = static_cast<size_t>(img.w) * 3;
    auto at = [&](int x, int y) {  // source pixel (x, y) in full-image coordinates
        return img.px.data() + static_cast<size_t>(y - img.y0) * stride +
               static_cast<size_t>(x - img.x0) * 3;
    };
    uint8_t* dst = out->px.data();
    if (!p.hres && !p.vres) {
        for (int y = 0; y < n; ++y)
            std::memcpy(dst + static_cast<size_t>(y) * n * 3, at(p.left, p.top + y),
                        static_cast<size_t>(n) * 3);
        return;
    }
    std::vector<int32_t> acc;
    if (p.vfirst) {  // vertical over the columns the horizontal pass reads, kept rows only
        const int sx0 = p.src.x0, sw = p.src.x1 - p.src.x0;
        acc.resize(static_cast<size_t>(sw) * 3);
        if (!p.hres) {  // then [sx0, sx0 + sw) are the crop's columns
            vpass(at(sx0, img.y0), stride, sw, img.y0, p.cv, p.top, p.bottom, dst, acc.data());
            return;
        }
        scratch->resize(static_cast<size_t>(sw) * n * 3);
        vpass(at(sx0, img.y0), stride, sw, img.y0, p.cv, p.top, p.bottom, scratch->data(),
              acc.data());
        hpass(scratch->data(), static_cast<size_t>(sw) * 3, sx0, n, p.ch, p.left, p.right, dst);
        return;
    }
    // horizontal first (kept columns, only the rows the vertical pass reads), then vertical
    acc.resize(static_cast<size_t>(n) * 3);
    if (!p.hres) {
        vpass(at(p.left, img.y0), stride, n, img.y0, p.cv, p.top, p.bottom, dst, acc.data());
        return;
    }
    const int ry0 = p.src.y0, rows = p.src.y1 - p.src.y0;
    if (!p.vres) {
        hpass(at(img.x0, ry0), stride, img.x0, rows, p.ch, p.left, p.right, dst);
        return;
    }
    scratch->resize(static_cast<size_t>(n) * rows * 3);
    hpass(at(img.x0, ry0), stride, img.x0, rows, p.ch, p.left, p.right, scratch->data());
    vpass(scratch->data(), static_cast<size_t>(n) * 3, n, ry0, p.cv, p.top, p.bottom, dst,
          acc.data());
}

void Preprocessor::normalize(const Rgb& c, float* out) const {
    const size_t plane = static_cast<size_t>(cfg_.crop) * cfg_.crop;
    for (int ch = 0; ch < 3; ++ch) {
        const int src = cfg_.bgr ? 2 - ch : ch;
        const float* t = table_[ch];
        float* o = out + ch * plane;
        const uint8_t* p = c.px.data() + src;
        for (size_t i = 0; i < plane; ++i, p += 3) o[i] = t[*p];
    }
}

void Preprocessor::run(const Rgb& img, float* out) const {
    Rgb c;
    std::vector<uint8_t> scratch;
    resize_and_crop(img, &c, &scratch);
    normalize(c, out);
}

}  // namespace mnv3
