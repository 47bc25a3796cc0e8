// float32 linear over weights laid out once for streaming, with copies for AVX-512, AVX2 + FMA and plain C++
// picked by CPUID when the module loads (set_f32_isa narrows the choice, so tests run every copy on one machine).
//
// At decode a float32 step is the weights' bytes: SmolLM2-135M reads 538 MB a token, so the matmul has to read
// at memory bandwidth. oneDNN's packed float32 matmul read them at ~28 GB/s at one row on a Zen 4 EPYC that
// reads at ~45-50, plus its ~10 us a call outside the arithmetic (BENCHMARKS.md). Here the weight is kept as
//
//   blocked[n / 16][k][n % 16]   (out features padded to 16 with zero rows)
//
// so one 64-byte line is one input feature's weights for 16 outputs: one FMA with that input broadcast adds
// them into 16 float32 accumulators. No horizontal sums, each block of 16 outputs is one contiguous stream, and
// the same micro-kernel (rows x blocks of accumulators in registers) serves decode and prefill.
//
// Every output is one chain of fused multiply-adds over k in order, from the bias (or 0): the same bits from
// every copy (the scalar one uses std::fma) and whatever the row's batch or tile, so results are
// batch-invariant.

#include <torch/extension.h>

#include "cpu_ops.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define MC_F32X86 1
#include <immintrin.h>
#define MC_F32_512 __attribute__((target("avx512f,fma")))
#define MC_F32_256 __attribute__((target("avx2,fma")))
#endif

namespace {

constexpr int64_t kBlock = 16;  // outputs per block: one AVX-512 register of float32 accumulators
constexpr int64_t kChunkRows = 6;  // the AVX-512 tile's rows (blocks_run): threads split rows on whole tiles

enum class FIsa { base, avx2, avx512 };

FIsa detect() {
#if MC_F32X86
  __builtin_cpu_init();  // __builtin_cpu_supports also checks that the OS saves the wide registers
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return FIsa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FIsa::avx2;
#endif
  return FIsa::base;
}

const FIsa kBest = detect();
FIsa chosen = kBest;

const char* name_of(FIsa i) { return i == FIsa::avx512 ? "avx512" : i == FIsa::avx2 ? "avx2" : "baseline"; }

std::string f32_isa() { return name_of(chosen); }

void set_f32_isa(const std::string& name) {
  const FIsa want = name == "avx512" ? FIsa::avx512 : name == "avx2" ? FIsa::avx2 : FIsa::base;
  TORCH_CHECK(name == name_of(want), "set_f32_isa: unknown instruction set '", name,
              "'; choose avx512, avx2 or baseline");
  TORCH_CHECK(want <= kBest, "set_f32_isa: this CPU runs ", name_of(kBest), " at most, not ", name);
  chosen = want;
}

// What a tile writes: rows [0, MT) x blocks [b0, b0 + R) of y ([m, n]); the padded last block keeps only the
// real outputs
inline void store_block(const float* acc, float* y, int64_t n, int64_t col) {
  std::memcpy(y + col, acc, std::min(kBlock, n - col) * sizeof(float));
}

// ---- plain C++: any CPU, and the copy the others are checked against bit for bit ----

template <int MT, int R>
void tile_base(const float* x, int64_t k, const float* w, const float* bias, float* y, int64_t n, int64_t b0) {
  float acc[MT][R][kBlock];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MT; ++i)
      for (int l = 0; l < kBlock; ++l) acc[i][r][l] = bias ? bias[(b0 + r) * kBlock + l] : 0.0f;
  for (int64_t p = 0; p < k; ++p)
    for (int r = 0; r < R; ++r) {
      const float* wl = w + ((b0 + r) * k + p) * kBlock;
      for (int i = 0; i < MT; ++i) {
        const float xv = x[i * k + p];
        for (int l = 0; l < kBlock; ++l) acc[i][r][l] = std::fma(xv, wl[l], acc[i][r][l]);
      }
    }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) store_block(acc[i][r], y + i * n, n, (b0 + r) * kBlock);
}

#if MC_F32X86

// 16 outputs in one zmm: MT x R accumulators and R weight registers of 32
template <int MT, int R>
MC_F32_512 void tile_512(const float* x, int64_t k, const float* w, const float* bias, float* y, int64_t n,
                         int64_t b0) {
  __m512 acc[MT][R];
  for (int r = 0; r < R; ++r) {
    const __m512 init = bias ? _mm512_loadu_ps(bias + (b0 + r) * kBlock) : _mm512_setzero_ps();
    for (int i = 0; i < MT; ++i) acc[i][r] = init;
  }
  const float* wb = w + b0 * k * kBlock;
  for (int64_t p = 0; p < k; ++p) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(wb + (r * k + p) * kBlock);
    for (int i = 0; i < MT; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * k + p]);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_fmadd_ps(xb, wv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      alignas(64) float out[kBlock];
      _mm512_store_ps(out, acc[i][r]);
      store_block(out, y + i * n, n, (b0 + r) * kBlock);
    }
}

// 16 outputs in two ymm: 2 MT R accumulators and 2 R weight registers of 16
template <int MT, int R>
MC_F32_256 void tile_256(const float* x, int64_t k, const float* w, const float* bias, float* y, int64_t n,
                         int64_t b0) {
  __m256 acc[MT][R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) {
      const __m256 init = bias ? _mm256_loadu_ps(bias + (b0 + r) * kBlock + 8 * h) : _mm256_setzero_ps();
      for (int i = 0; i < MT; ++i) acc[i][r][h] = init;
    }
  const float* wb = w + b0 * k * kBlock;
  for (int64_t p = 0; p < k; ++p) {
    __m256 wv[R][2];
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < 2; ++h) wv[r][h] = _mm256_loadu_ps(wb + (r * k + p) * kBlock + 8 * h);
    for (int i = 0; i < MT; ++i) {
      const __m256 xb = _mm256_set1_ps(x[i * k + p]);
      for (int r = 0; r < R; ++r)
        for (int h = 0; h < 2; ++h) acc[i][r][h] = _mm256_fmadd_ps(xb, wv[r][h], acc[i][r][h]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      alignas(32) float out[kBlock];
      _mm256_store_ps(out, acc[i][r][0]);
      _mm256_store_ps(out + 8, acc[i][r][1]);
      store_block(out, y + i * n, n, (b0 + r) * kBlock);
    }
}

#endif  // MC_F32X86

using TileFn = void (*)(const float*, int64_t, const float*, const float*, float*, int64_t, int64_t);

// tiles[rows - 1][blocks - 1] for one copy, rows up to MT and blocks up to R
template <template <int, int> class T, int MT, int R>
struct Tiles {
  TileFn fn[MT][R];
  constexpr Tiles() : fn() { fill<1>(); }
  template <int I>
  constexpr void fill() {
    if constexpr (I <= MT) {
      fill_r<I, 1>();
      fill<I + 1>();
    }
  }
  template <int I, int J>
  constexpr void fill_r() {
    if constexpr (J <= R) {
      fn[I - 1][J - 1] = &T<I, J>::run;
      fill_r<I, J + 1>();
    }
  }
};

template <int MT, int R>
struct Base {
  static void run(const float* x, int64_t k, const float* w, const float* b, float* y, int64_t n, int64_t b0) {
    tile_base<MT, R>(x, k, w, b, y, n, b0);
  }
};
#if MC_F32X86
template <int MT, int R>
struct V512 {
  static void run(const float* x, int64_t k, const float* w, const float* b, float* y, int64_t n, int64_t b0) {
    tile_512<MT, R>(x, k, w, b, y, n, b0);
  }
};
template <int MT, int R>
struct V256 {
  static void run(const float* x, int64_t k, const float* w, const float* b, float* y, int64_t n, int64_t b0) {
    tile_256<MT, R>(x, k, w, b, y, n, b0);
  }
};
#endif

// Rows [0, m) x blocks [b, e) in tiles of up to MT rows and R blocks; a lone row (decode) takes up to R1 blocks
// at a time, more weight streams in flight. (Tiling changes only which outputs run together, never an output's
// own sum.)
template <template <int, int> class T, int MT, int R, int R1>
void run_blocks(const float* x, int64_t m, int64_t k, const float* w, const float* bias, float* y, int64_t n,
                int64_t b, int64_t e) {
  static constexpr Tiles<T, MT, R> tiles{};
  static constexpr Tiles<T, 1, R1> single{};
  if (m == 1) {
    for (; b < e; b += R1) single.fn[0][std::min<int64_t>(R1, e - b) - 1](x, k, w, bias, y, n, b);
    return;
  }
  for (; b < e; b += R) {
    const int64_t r = std::min<int64_t>(R, e - b);
    for (int64_t i = 0; i < m; i += MT)
      tiles.fn[std::min<int64_t>(MT, m - i) - 1][r - 1](x + i * k, k, w, bias, y + i * n, n, b);
  }
}

void blocks_run(FIsa isa, const float* x, int64_t m, int64_t k, const float* w, const float* bias, float* y,
                int64_t n, int64_t b, int64_t e) {
#if MC_F32X86
  if (isa == FIsa::avx512) return run_blocks<V512, 6, 4, 8>(x, m, k, w, bias, y, n, b, e);
  if (isa == FIsa::avx2) return run_blocks<V256, 3, 2, 4>(x, m, k, w, bias, y, n, b, e);
#endif
  run_blocks<Base, 4, 1, 2>(x, m, k, w, bias, y, n, b, e);
}

// ---- entry points: every argument checked before any byte is read ----

at::Tensor pack_linear_f32(const at::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu(), "pack_linear_f32: weight is on ", weight.device(), ", not the CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "pack_linear_f32: weight must be a 2-D float32 tensor [out, in], got ", weight.scalar_type(), " ",
              weight.sizes());
  const int64_t n = weight.size(0), k = weight.size(1), blocks_n = (n + kBlock - 1) / kBlock;
  at::Tensor padded = at::zeros({blocks_n * kBlock, k}, weight.options());
  padded.narrow(0, 0, n).copy_(weight);
  return mc_ops::in_huge_pages(padded.view({blocks_n, kBlock, k}).transpose(1, 2).contiguous());  // [blocks, k, 16]
}

at::Tensor linear_f32(const at::Tensor& x_in, const at::Tensor& blocked, int64_t n,
                      const c10::optional<at::Tensor>& bias_in) {
  TORCH_CHECK(x_in.device().is_cpu() && blocked.device().is_cpu(), "linear_f32: x and weight must be on the CPU");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "linear_f32: x must be [rows, in] float32, got ",
              x_in.scalar_type(), " ", x_in.sizes());
  TORCH_CHECK(blocked.dim() == 3 && blocked.size(2) == kBlock && blocked.scalar_type() == at::kFloat &&
              blocked.is_contiguous(), "linear_f32: weight must come from pack_linear_f32");
  const int64_t blocks_n = blocked.size(0), k = blocked.size(1), m = x_in.size(0);
  TORCH_CHECK(n > (blocks_n - 1) * kBlock && n <= blocks_n * kBlock, "linear_f32: ", n,
              " outputs do not match the blocked weight's ", blocks_n, " blocks of ", kBlock);
  TORCH_CHECK(x_in.size(1) == k, "linear_f32: x has ", x_in.size(1), " input features, the weight ", k);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->device().is_cpu(), "linear_f32: bias must be on the CPU");
    TORCH_CHECK(bias_in->numel() == n, "linear_f32: bias has ", bias_in->numel(), " elements for ", n, " outputs");
    bias = at::zeros({blocks_n * kBlock}, x_in.options());
    bias.narrow(0, 0, n).copy_(bias_in->reshape({-1}));
  }
  at::Tensor out = at::empty({m, n}, x_in.options());
  if (m == 0 || n == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* wp = blocked.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = out.data_ptr<float>();
  const FIsa isa = chosen;

  mc_ops::parallel_row_blocks(m, blocks_n, kChunkRows, k * kBlock, [&](int64_t r0, int64_t rows, int64_t b,
                                                                        int64_t e) {
    blocks_run(isa, xp + r0 * k, rows, k, wp, bp, yp + r0 * n, n, b, e);
  });
  return out;
}

}  // namespace

// for the fused decoder stack (cpu_ops.h)
at::Tensor mc_ops::linear_f32(const at::Tensor& x, const at::Tensor& blocked, int64_t n, const c10::optional<at::Tensor>& bias) {
  return ::linear_f32(x, blocked, n, bias);
}

void register_linear_f32(pybind11::module& m) {
  m.def("pack_linear_f32", &pack_linear_f32, "lay a float32 [out, in] weight out in blocks of 16 outputs");
  m.def("linear_f32", &linear_f32, "x @ weight.T (+ bias) over a blocked float32 weight", pybind11::arg("x"),
        pybind11::arg("blocked"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none());
  m.def("f32_isa", &f32_isa, "which copy of the float32 matmul runs: avx512, avx2 or baseline");
  m.def("set_f32_isa", &set_f32_isa, "run another copy of the float32 matmul (one this CPU supports)");
  m.attr("best_f32_isa") = name_of(kBest);
}
