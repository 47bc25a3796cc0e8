// Linear layers over GGUF Q8_0, Q4_0 and Q4_1 weights, streamed as packed bytes (8.5 and 4.5-5 bits a weight)
// where a dequantized bfloat16 copy would move 16: at decode a small model's step is bound by the bytes read.
//
// prepare: the file's blocks are regrouped once, at the same bit width, 16 output rows at a time:
//
//   group g, block b:  [16 x fp16 d] ([16 x fp16 m] for Q4_1) [quants: chunk c of 4 bytes, 16 rows, 4 bytes each]
//
// so one 64-byte line holds 4 bytes of each of 16 rows: one vpdpbusd (4 u8 x s8 products summed per 32-bit
// lane) with the activations' 4 bytes broadcast adds them into 16 row accumulators. No horizontal sums; the 16
// row scales are one 32-byte load. Q8_0 keeps its 32 quants per row in 8 chunks, sign bit flipped (w + 128,
// the unsigned operand vpdpbusd wants; 128 * sum(x) comes off, below); Q4 keeps ggml's 16
// nibble bytes per row (byte j: element j low, j + 16 high) in 4 chunks, whose low and high nibbles pair with
// activation chunks c and c + 4. Rows past out_features are zero blocks (d = 0).
//
// linear: activations (float32 or bfloat16) are quantized per 32-block to int8 as llama.cpp's q8_0/q8_1 do
// (d = amax / 127, q = round(x / d), ties to even here), with each block's quant sum kept for the formats'
// offsets: Q4_0's -8, Q4_1's min, and on VNNI Q8_0's +128. Integer dot products per block are
// exact; each block's is scaled by d_w * d_x in float32 and accumulated by FMA, rounded once to the output.
//
// Three copies, picked by CPUID once (set_quant_isa narrows it, so every copy is tested on one machine):
// AVX512-VNNI (vpdpbusd, 16 rows a register), AVX2 (vpmaddubsw, |w| x sign(x, w) so no pair sum saturates,
// 8 rows a register) and plain C++. Each row's arithmetic is the same whatever batch it comes in. AMX-INT8 is
// not here: no machine this was written on has it, and a path nobody ran does not ship.

#include <torch/extension.h>

#include "cpu_ops.h"
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define MC_QX86 1
#include <immintrin.h>
#define MC_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define MC_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace {

constexpr int64_t kRows = 16;  // output rows per group
constexpr int64_t kQK = 32;    // weights per block

enum class Fmt { q8_0, q4_0, q4_1 };

// bytes per row in one block of the file: scales, then quants
constexpr int64_t scale_bytes(Fmt f) { return f == Fmt::q4_1 ? 4 : 2; }
constexpr int64_t quant_bytes(Fmt f) { return f == Fmt::q8_0 ? 32 : 16; }
constexpr int64_t block_bytes(Fmt f) { return scale_bytes(f) + quant_bytes(f); }
constexpr int64_t group_bytes(Fmt f) { return kRows * block_bytes(f); }  // one block of 16 rows, repacked
constexpr int chunks(Fmt f) { return static_cast<int>(quant_bytes(f) / 4); }

Fmt parse_format(const std::string& name) {
  if (name == "q8_0") return Fmt::q8_0;
  if (name == "q4_0") return Fmt::q4_0;
  if (name == "q4_1") return Fmt::q4_1;
  TORCH_CHECK(false, "quantized linear: no kernel for format '", name, "'; these kernels run q8_0, q4_0 and q4_1");
  return Fmt::q8_0;
}

enum class QIsa { base, avx2, vnni };

QIsa detect() {
#if MC_QX86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return QIsa::vnni;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return QIsa::avx2;
#endif
  return QIsa::base;
}

const QIsa kBest = detect();
QIsa chosen = kBest;

const char* name_of(QIsa i) { return i == QIsa::vnni ? "avx512_vnni" : i == QIsa::avx2 ? "avx2" : "baseline"; }

std::string quant_isa() { return name_of(chosen); }

void set_quant_isa(const std::string& name) {
  const QIsa want = name == "avx512_vnni" ? QIsa::vnni : name == "avx2" ? QIsa::avx2 : QIsa::base;
  TORCH_CHECK(name == name_of(want), "set_quant_isa: unknown instruction set '", name,
              "'; choose avx512_vnni, avx2 or baseline");
  TORCH_CHECK(want <= kBest, "set_quant_isa: this CPU runs ", name_of(kBest), " at most, not ", name);
  chosen = want;
}

// Activations quantized per row and 32-block. Rows are padded to a multiple of 64 bytes apart, so every
// row's quants start on a cache line.
struct Act {
  const int8_t* q;    // [m, kp]
  const float* d;     // [m, nb] scale
  const int32_t* s;   // [m, nb] sum of the block's quants
  const float* ds;    // [m, nb] d * s (Q4_1's min term)
  int64_t kp, nb;
};

struct Out {
  void* y;              // [m, n] float32 or bfloat16
  bool bf16;
  int64_t n;
  const float* bias;    // [groups * 16] or null
};

inline uint16_t bf16_bits(float v) {  // round to nearest even, as c10::BFloat16 does (NaN stays a quiet NaN)
  return c10::BFloat16(v).x;
}

// ---- plain C++: any CPU; the reference the other copies are checked against in tests ----

// A block holding an infinity or NaN has no int8 scale: its quants become 0 and its scale NaN, so every output
// of the row comes out NaN (as float math on it would give NaN or infinity), never a finite number
inline void nonfinite_block(int8_t* q, float* d, int32_t* s, float* ds) {
  std::memset(q, 0, kQK);
  *d = *ds = std::numeric_limits<float>::quiet_NaN();
  *s = 0;
}

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

template <typename T>
void quantize_row_base(const T* x, int64_t nb, int8_t* q, float* d, int32_t* s, float* ds) {
  for (int64_t b = 0; b < nb; ++b) {
    float xb[kQK];
    for (int j = 0; j < kQK; ++j) xb[j] = to_float(x[b * kQK + j]);
    float amax = 0;
    bool finite = true;
    for (int j = 0; j < kQK; ++j) {
      finite &= std::fabs(xb[j]) <= std::numeric_limits<float>::max();  // false for NaN too
      amax = std::max(amax, std::fabs(xb[j]));
    }
    if (!finite) {
      nonfinite_block(q + b * kQK, d + b, s + b, ds + b);
      continue;
    }
    const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(xb[j] * id));
      q[b * kQK + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = db;
    s[b] = sum;
    ds[b] = db * static_cast<float>(sum);
  }
}

template <Fmt F>
void group_base(const Act& a, int64_t i, const uint8_t* w, float* acc /*[16]*/) {
  for (int r = 0; r < kRows; ++r) acc[r] = 0;
  const int8_t* xq = a.q + i * a.kp;
  for (int64_t b = 0; b < a.nb; ++b) {
    const uint8_t* blk = w + b * group_bytes(F);
    const uint8_t* qs = blk + kRows * scale_bytes(F);
    const int8_t* xb = xq + b * kQK;
    int32_t dot[kRows] = {};
    for (int c = 0; c < chunks(F); ++c)
      for (int r = 0; r < kRows; ++r)
        for (int j = 0; j < 4; ++j) {
          const uint8_t byte = qs[(c * kRows + r) * 4 + j];
          if (F == Fmt::q8_0) {
            dot[r] += static_cast<int8_t>(byte ^ 0x80) * xb[4 * c + j];
          } else {
            dot[r] += (byte & 15) * xb[4 * c + j] + (byte >> 4) * xb[16 + 4 * c + j];
          }
        }
    const float dx = a.d[i * a.nb + b];
    for (int r = 0; r < kRows; ++r) {
      c10::Half dh, mh;
      std::memcpy(&dh, blk + 2 * r, 2);
      int32_t v = dot[r];
      if (F == Fmt::q4_0) v -= 8 * a.s[i * a.nb + b];
      acc[r] = std::fma(static_cast<float>(v), static_cast<float>(dh) * dx, acc[r]);
      if (F == Fmt::q4_1) {
        std::memcpy(&mh, blk + 2 * kRows + 2 * r, 2);
        acc[r] = std::fma(static_cast<float>(mh), a.ds[i * a.nb + b], acc[r]);
      }
    }
  }
}

void store_base(const Out& o, int64_t i, int64_t g, float* acc) {
  const int64_t col = g * kRows, width = std::min<int64_t>(kRows, o.n - col);
  for (int r = 0; r < width; ++r) {
    const float v = o.bias ? acc[r] + o.bias[col + r] : acc[r];
    if (o.bf16) {
      static_cast<uint16_t*>(o.y)[i * o.n + col + r] = bf16_bits(v);
    } else {
      static_cast<float*>(o.y)[i * o.n + col + r] = v;
    }
  }
}

template <Fmt F>
void groups_base(const Act& a, int64_t m, const uint8_t* w, int64_t g0, int64_t g1, const Out& o) {
  float acc[kRows];
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t i = 0; i < m; ++i) {
      group_base<F>(a, i, w + g * a.nb * group_bytes(F), acc);
      store_base(o, i, g, acc);
    }
}

#if MC_QX86

// ---- AVX512-VNNI: MT activation rows x R groups of 16 output rows per micro-kernel ----

// Blocks ahead a one-row tile prefetches in each of its streams: 4 took SmolLM2's Q4_0 weights from 27.7 to
// 30.2 GB/s at batch 1 (2 threads, Zen 4; 0, 4 and 6 interleaved, median of 21) and left Q8_0 as it was
constexpr int64_t kAhead = 4;

MC_VNNI inline __m512 load16_vnni(const float* p) { return _mm512_loadu_ps(p); }
MC_VNNI inline __m512 load16_vnni(const c10::BFloat16* p) {  // bfloat16 is float32's top half
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T>
MC_VNNI void quantize_row_vnni(const T* x, int64_t nb, int8_t* q, float* d, int32_t* s, float* ds) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = load16_vnni(x + b * kQK), v1 = load16_vnni(x + b * kQK + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    if (_mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q) ||
        !(amax <= std::numeric_limits<float>::max())) {
      nonfinite_block(q + b * kQK, d + b, s + b, ds + b);
      continue;
    }
    const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
    const __m512 idv = _mm512_set1_ps(id);
    // cvtps rounds by MXCSR: to nearest, ties to even, as std::nearbyint in the plain copy
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQK), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQK + 16), _mm512_cvtsepi32_epi8(q1));
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    d[b] = db;
    s[b] = sum;
    ds[b] = db * static_cast<float>(sum);
  }
}

template <Fmt F, int MT, int R>
MC_VNNI void tile_vnni(const Act& a, int64_t i0, const uint8_t* w, int64_t g0, const Out& o) {
  constexpr int64_t GB = group_bytes(F), SB = kRows * scale_bytes(F);
  const int64_t nb = a.nb, stride = nb * GB;  // bytes from one group to the next
  const uint8_t* wg = w + g0 * stride;
  __m512 acc[MT][R];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    __m512i dot[MT][R];
    for (int i = 0; i < MT; ++i) {
      const int32_t sb = a.s[(i0 + i) * nb + b];
      // the offsets the unsigned operand brings: Q8_0 stored as w + 128, Q4_0 as w + 8
      const __m512i init = _mm512_set1_epi32(F == Fmt::q8_0 ? -128 * sb : F == Fmt::q4_0 ? -8 * sb : 0);
      for (int r = 0; r < R; ++r) dot[i][r] = init;
    }
    const uint8_t* blk = wg + b * GB;
    if (MT == 1 && b + kAhead < nb)  // decode: each of the R streams asks for its block kAhead on
      for (int r = 0; r < R; ++r)
        for (int64_t off = 0; off < GB; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(blk + r * stride + kAhead * GB + off), _MM_HINT_T0);
    for (int c = 0; c < chunks(F); ++c) {
      __m512i lo[R], hi[R];
      for (int r = 0; r < R; ++r) {
        const __m512i v = _mm512_loadu_si512(blk + r * stride + SB + c * 64);
        if (F == Fmt::q8_0) {
          lo[r] = v;
        } else {
          lo[r] = _mm512_and_si512(v, low);
          hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
      }
      for (int i = 0; i < MT; ++i) {
        const int8_t* xb = a.q + (i0 + i) * a.kp + b * kQK + 4 * c;
        int32_t x4;
        std::memcpy(&x4, xb, 4);
        const __m512i xv = _mm512_set1_epi32(x4);
        for (int r = 0; r < R; ++r) dot[i][r] = _mm512_dpbusd_epi32(dot[i][r], lo[r], xv);
        if (F != Fmt::q8_0) {
          std::memcpy(&x4, xb + 16, 4);
          const __m512i xh = _mm512_set1_epi32(x4);
          for (int r = 0; r < R; ++r) dot[i][r] = _mm512_dpbusd_epi32(dot[i][r], hi[r], xh);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* sc = blk + r * stride;
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
      __m512 mw = _mm512_setzero_ps();
      if (F == Fmt::q4_1) mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32)));
      for (int i = 0; i < MT; ++i) {
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d[(i0 + i) * nb + b]));
        acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][r]), scale, acc[i][r]);
        if (F == Fmt::q4_1) acc[i][r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(a.ds[(i0 + i) * nb + b]), acc[i][r]);
      }
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      const int64_t col = (g0 + r) * kRows, width = std::min<int64_t>(kRows, o.n - col);
      const __mmask16 keep = width >= kRows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << width) - 1);
      __m512 v = acc[i][r];
      if (o.bias) v = _mm512_add_ps(v, _mm512_loadu_ps(o.bias + col));
      if (o.bf16) {  // round to nearest even in integer ops (AVX512-BF16 is not assumed), NaN kept quiet
        __m512i bits = _mm512_castps_si512(v);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        h = _mm256_mask_mov_epi16(h, nan, _mm256_set1_epi16(0x7FC0));
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(o.y) + (i0 + i) * o.n + col, keep, h);
      } else {
        _mm512_mask_storeu_ps(static_cast<float*>(o.y) + (i0 + i) * o.n + col, keep, v);
      }
    }
}

// ---- AVX2: 8 rows a register, a 64-byte line in two halves ----

MC_AVX2 inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

MC_AVX2 inline int32_t hsum8i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

MC_AVX2 inline __m256 load8_avx2(const float* p) { return _mm256_loadu_ps(p); }
MC_AVX2 inline __m256 load8_avx2(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename T>
MC_AVX2 void quantize_row_avx2(const T* x, int64_t nb, int8_t* q, float* d, int32_t* s, float* ds) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    __m256 v[4], m = _mm256_setzero_ps();
    int nan = 0;
    for (int k = 0; k < 4; ++k) {
      v[k] = load8_avx2(x + b * kQK + 8 * k);
      m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
      nan |= _mm256_movemask_ps(_mm256_cmp_ps(v[k], v[k], _CMP_UNORD_Q));
    }
    const float amax = hmax8(m);
    if (nan || !(amax <= std::numeric_limits<float>::max())) {
      nonfinite_block(q + b * kQK, d + b, s + b, ds + b);
      continue;
    }
    const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i qi[4], sum = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], idv));
      sum = _mm256_add_epi32(sum, qi[k]);
    }
    // pack 32 int32 to 32 int8: the packs interleave 128-bit lanes, the permute puts them back in order
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b),
                                                   _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kQK), p8);
    const int32_t total = hsum8i(sum);
    d[b] = db;
    s[b] = total;
    ds[b] = db * static_cast<float>(total);
  }
}

template <Fmt F, int MT, int R>
MC_AVX2 void tile_avx2(const Act& a, int64_t i0, const uint8_t* w, int64_t g0, const Out& o) {
  constexpr int64_t GB = group_bytes(F), SB = kRows * scale_bytes(F);
  const int64_t nb = a.nb, stride = nb * GB;
  const uint8_t* wg = w + g0 * stride;
  __m256 acc[MT][R][2];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) acc[i][r][0] = acc[i][r][1] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < nb; ++b) {
    __m256i dot[MT][R][2];
    for (int i = 0; i < MT; ++i)
      for (int r = 0; r < R; ++r)
        dot[i][r][0] = dot[i][r][1] = _mm256_set1_epi32(F == Fmt::q4_0 ? -8 * a.s[(i0 + i) * nb + b] : 0);
    const uint8_t* blk = wg + b * GB;
    for (int c = 0; c < chunks(F); ++c) {
      for (int i = 0; i < MT; ++i) {
        const int8_t* xb = a.q + (i0 + i) * a.kp + b * kQK + 4 * c;
        int32_t x4;
        std::memcpy(&x4, xb, 4);
        const __m256i xv = _mm256_set1_epi32(x4);
        std::memcpy(&x4, xb + 16, 4);
        const __m256i xh = _mm256_set1_epi32(x4);
        for (int r = 0; r < R; ++r)
          for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + r * stride + SB + c * 64 + 32 * h));
            __m256i p;
            if (F == Fmt::q8_0) {  // |w| (128 fits unsigned) x sign(x, w) (x is never -128): no pair sum saturates
              const __m256i ws = _mm256_xor_si256(v, flip);  // the signed quants again
              p = _mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(xv, ws));
            } else {  // nibbles 0..15 are the unsigned operand as they stand
              p = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, low), xv),
                                   _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), xh));
            }
            dot[i][r][h] = _mm256_add_epi32(dot[i][r][h], _mm256_madd_epi16(p, ones));
          }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < 2; ++h) {
        const uint8_t* sc = blk + r * stride + 16 * h;
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
        __m256 mw = _mm256_setzero_ps();
        if (F == Fmt::q4_1) mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 32)));
        for (int i = 0; i < MT; ++i) {
          const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d[(i0 + i) * nb + b]));
          acc[i][r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i][r][h]), scale, acc[i][r][h]);
          if (F == Fmt::q4_1)
            acc[i][r][h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.ds[(i0 + i) * nb + b]), acc[i][r][h]);
        }
      }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      float lanes[kRows];
      _mm256_storeu_ps(lanes, acc[i][r][0]);
      _mm256_storeu_ps(lanes + 8, acc[i][r][1]);
      store_base(o, i0 + i, g0 + r, lanes);
    }
}

#endif  // MC_QX86

using TileFn = void (*)(const Act&, int64_t, const uint8_t*, int64_t, const Out&);

// The micro-kernel for mt activation rows and r groups, mt <= MT and r <= R of the ISA's largest tile
template <template <Fmt, int, int> class K, Fmt F, int MT, int R>
struct Table {
  TileFn fn[MT][R];
  constexpr Table() : fn{} { fill<1, 1>(); }
  template <int I, int J>
  constexpr void fill() {
    fn[I - 1][J - 1] = &K<F, I, J>::run;
    if constexpr (J < R) fill<I, J + 1>();
    else if constexpr (I < MT) fill<I + 1, 1>();
  }
};

#if MC_QX86
template <Fmt F, int MT, int R>
struct Vnni {
  static void run(const Act& a, int64_t i0, const uint8_t* w, int64_t g0, const Out& o) {
    tile_vnni<F, MT, R>(a, i0, w, g0, o);
  }
};
template <Fmt F, int MT, int R>
struct Avx2 {
  static void run(const Act& a, int64_t i0, const uint8_t* w, int64_t g0, const Out& o) {
    tile_avx2<F, MT, R>(a, i0, w, g0, o);
  }
};

// groups [g0, g1) for all m rows: R groups at a time (each weight line read once per MT rows), rows in
// tiles of MT; a lone row (decode) takes R1 groups at a time, more streams in flight
template <template <Fmt, int, int> class K, Fmt F, int MT, int R, int R1>
void groups_simd(const Act& a, int64_t m, const uint8_t* w, int64_t g0, int64_t g1, const Out& o) {
  static constexpr Table<K, F, MT, R> table{};
  static constexpr Table<K, F, 1, R1> single{};
  if (m == 1) {
    for (int64_t g = g0; g < g1; g += R1) single.fn[0][std::min<int64_t>(R1, g1 - g) - 1](a, 0, w, g, o);
    return;
  }
  for (int64_t g = g0; g < g1; g += R) {
    const int r = static_cast<int>(std::min<int64_t>(R, g1 - g));
    for (int64_t i = 0; i < m; i += MT) table.fn[std::min<int64_t>(MT, m - i) - 1][r - 1](a, i, w, g, o);
  }
}
#endif

template <Fmt F>
void groups_run(QIsa isa, const Act& a, int64_t m, const uint8_t* w, int64_t g0, int64_t g1, const Out& o) {
#if MC_QX86
  // accumulators, int32 and float32: 8 + 8 of 32 registers (VNNI), 4 + 4 of 16 (AVX2), the rest for weights
  if (isa == QIsa::vnni) return groups_simd<Vnni, F, 4, 2, 4>(a, m, w, g0, g1, o);
  if (isa == QIsa::avx2) return groups_simd<Avx2, F, 2, 1, 2>(a, m, w, g0, g1, o);
#endif
  groups_base<F>(a, m, w, g0, g1, o);
}

template <typename T>
void quantize_row(QIsa isa, const T* x, int64_t nb, int8_t* q, float* d, int32_t* s, float* ds) {
#if MC_QX86
  if (isa == QIsa::vnni) return quantize_row_vnni(x, nb, q, d, s, ds);
  if (isa == QIsa::avx2) return quantize_row_avx2(x, nb, q, d, s, ds);
#endif
  quantize_row_base(x, nb, q, d, s, ds);
}

// ---- entry points: every argument checked before any byte is read ----

void check_weight(const at::Tensor& data, Fmt f, int64_t out_features, int64_t in_features) {
  TORCH_CHECK(data.device().is_cpu(), "prepare_linear_quant: data is on ", data.device(), ", not the CPU");
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 2, "prepare_linear_quant: data must be the file's "
              "bytes, uint8 [out, in / 32 * bytes per block], got ", data.scalar_type(), " ", data.sizes());
  TORCH_CHECK(out_features > 0 && in_features > 0 && in_features % kQK == 0, "prepare_linear_quant: ",
              out_features, " x ", in_features, " weight: in_features must be a positive multiple of 32");
  TORCH_CHECK(data.size(0) == out_features && data.size(1) == in_features / kQK * block_bytes(f),
              "prepare_linear_quant: data is ", data.sizes(), " but a ", out_features, " x ", in_features,
              " weight in this format takes [", out_features, ", ", in_features / kQK * block_bytes(f), "]");
}

at::Tensor prepare_linear_quant(const at::Tensor& data_in, const std::string& format, int64_t out_features,
                                int64_t in_features) {
  const Fmt f = parse_format(format);
  check_weight(data_in, f, out_features, in_features);
  const at::Tensor data = data_in.contiguous();
  const int64_t nb = in_features / kQK, groups = (out_features + kRows - 1) / kRows, bb = block_bytes(f);
  at::Tensor packed = at::zeros({groups, nb, group_bytes(f)}, data.options());
  const uint8_t* src = data.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* blk = dst + (g * nb + b) * group_bytes(f);
        for (int64_t r = 0; r < kRows && g * kRows + r < out_features; ++r) {
          const uint8_t* in = src + (g * kRows + r) * nb * bb + b * bb;
          std::memcpy(blk + 2 * r, in, 2);                                     // d
          if (f == Fmt::q4_1) std::memcpy(blk + 2 * kRows + 2 * r, in + 2, 2);  // m
          const uint8_t* qs = in + scale_bytes(f);
          uint8_t* out = blk + kRows * scale_bytes(f) + r * 4;
          for (int c = 0; c < chunks(f); ++c)
            for (int j = 0; j < 4; ++j)  // Q8_0 stored as w + 128: vpdpbusd's unsigned operand as it stands
              out[c * kRows * 4 + j] = f == Fmt::q8_0 ? qs[4 * c + j] ^ 0x80 : qs[4 * c + j];
        }
      }
  });
  return mc_ops::in_huge_pages(packed);
}

at::Tensor linear_quant(const at::Tensor& x_in, const at::Tensor& packed, const std::string& format,
                        int64_t out_features, const c10::optional<at::Tensor>& bias_in) {
  const Fmt f = parse_format(format);
  TORCH_CHECK(x_in.device().is_cpu() && packed.device().is_cpu(), "linear_quant: x and weight must be on the CPU");
  TORCH_CHECK(x_in.dim() == 2 && (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16),
              "linear_quant: x must be [rows, in] float32 or bfloat16, got ", x_in.scalar_type(), " ", x_in.sizes());
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
              packed.size(2) == group_bytes(f),
              "linear_quant: weight must come from prepare_linear_quant for ", format, ", got ", packed.scalar_type(),
              " ", packed.sizes());
  const int64_t groups = packed.size(0), nb = packed.size(1), k = nb * kQK, m = x_in.size(0);
  TORCH_CHECK(out_features > (groups - 1) * kRows && out_features <= groups * kRows, "linear_quant: ", out_features,
              " outputs do not match the packed weight's ", groups, " groups of ", kRows);
  TORCH_CHECK(x_in.size(1) == k, "linear_quant: x has ", x_in.size(1), " input features, the weight ", k);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->device().is_cpu(), "linear_quant: bias must be on the CPU");
    TORCH_CHECK(bias_in->numel() == out_features, "linear_quant: bias has ", bias_in->numel(), " elements for ",
                out_features, " outputs");
    bias = at::zeros({groups * kRows}, x_in.options().dtype(at::kFloat));
    bias.narrow(0, 0, out_features).copy_(bias_in->reshape({-1}));
  }
  at::Tensor out = at::empty({m, out_features}, x_in.options());
  if (m == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const QIsa isa = chosen;

  // quantized activations in one buffer: rows of quants padded to 64 bytes, then scales, sums, d * sum
  const int64_t kp = (k + 63) / 64 * 64;
  at::Tensor scratch = at::empty({m * kp + m * nb * 12}, x.options().dtype(at::kByte));
  auto* base = scratch.data_ptr<uint8_t>();
  int8_t* q = reinterpret_cast<int8_t*>(base);
  float* d = reinterpret_cast<float*>(base + m * kp);
  int32_t* s = reinterpret_cast<int32_t*>(base + m * kp + m * nb * 4);
  float* ds = reinterpret_cast<float*>(base + m * kp + m * nb * 8);
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / k), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (x.scalar_type() == at::kBFloat16) {
        quantize_row(isa, x.data_ptr<c10::BFloat16>() + i * k, nb, q + i * kp, d + i * nb, s + i * nb, ds + i * nb);
      } else {
        quantize_row(isa, x.data_ptr<float>() + i * k, nb, q + i * kp, d + i * nb, s + i * nb, ds + i * nb);
      }
    }
  });
  const Act a{q, d, s, ds, kp, nb};
  const Out o{out.data_ptr(), out.scalar_type() == at::kBFloat16, out_features,
              bias.defined() ? bias.data_ptr<float>() : nullptr};
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / (m * k * kRows));  // tiny matmuls stay on one thread
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    switch (f) {
      case Fmt::q8_0: groups_run<Fmt::q8_0>(isa, a, m, w, g0, g1, o); break;
      case Fmt::q4_0: groups_run<Fmt::q4_0>(isa, a, m, w, g0, g1, o); break;
      case Fmt::q4_1: groups_run<Fmt::q4_1>(isa, a, m, w, g0, g1, o); break;
    }
  });
  return out;
}

}  // namespace

// for the fused decoder stack (cpu_ops.h)
at::Tensor mc_ops::linear_quant(const at::Tensor& x, const at::Tensor& packed, const std::string& format, int64_t out_features,
                                const c10::optional<at::Tensor>& bias) {
  return ::linear_quant(x, packed, format, out_features, bias);
}

void register_linear_quant(pybind11::module& m) {
  m.def("prepare_linear_quant", &prepare_linear_quant,
        "regroup a GGUF q8_0/q4_0/q4_1 weight's blocks 16 rows at a time for linear_quant",
        pybind11::arg("data"), pybind11::arg("format"), pybind11::arg("out_features"), pybind11::arg("in_features"));
  m.def("linear_quant", &linear_quant, "x @ weight.T (+ bias) over a prepared q8_0/q4_0/q4_1 weight",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("format"), pybind11::arg("out_features"),
        pybind11::arg("bias") = pybind11::none());
  m.def("quant_isa", &quant_isa, "which copy of the quantized matmul runs: avx512_vnni, avx2 or baseline");
  m.def("set_quant_isa", &set_quant_isa, "run another copy of the quantized matmul (one this CPU supports)");
  m.attr("best_quant_isa") = name_of(kBest);
}
