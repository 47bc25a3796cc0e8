// bfloat16 linear for CPUs with AVX512-BF16. Compiled on every x86 build with function-level targets (no -march
// flag) and used only where CPUID says the CPU has the instructions (has_linear_bf16), so AMX Xeons run and
// test it too; whether the backend prefers it to oneDNN's AMX tiles there is the backend's choice (cpu.py).
//
// oneDNN's packed bfloat16 matmul spends ~10 us per call outside the arithmetic: at decode a small model's step
// is ~120 calls on weights of 0.6-3.5 MB, so that is most of a millisecond, and its one-row matmuls stream
// weights at ~35 GB/s where the machine reads at ~50. This kernel keeps the weight in pair blocks,
//
//   blocked[n / 16][k / 2][n % 16][k % 2]   (out features padded to 16, in features to 2, with zeros)
//
// so one 64-byte line holds two input features' weights for 16 outputs: one vdpbf16ps with the input pair
// broadcast adds them into 16 float32 accumulators. No horizontal sums, every weight line is read once per
// tile of rows, and the same micro-kernel (6 rows x 64 outputs in 24 registers) serves decode and prefill.
// Accumulation is float32, rounded once to bfloat16 at the end (round-to-nearest-even), as oneDNN does.

#include <torch/extension.h>

#include "cpu_ops.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// GCC 10 and clang 9 are the first to know the AVX512-BF16 intrinsics
#if (defined(__x86_64__) || defined(_M_X64)) && \
    ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define MODELCHIP_LINEAR_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#define MC_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif
// AMX tiles need GCC 11 / clang 12 for the target names, and Linux for the tile-data permission
#if MODELCHIP_LINEAR_BF16 && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define MODELCHIP_LINEAR_AMX 1
#define MC_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

constexpr int64_t kBlock = 16;  // output features per block: one float32 accumulator register

#if MODELCHIP_LINEAR_BF16

// CPUID leaf 7 sub-leaf 1, EAX bit 5: AVX512_BF16; __builtin_cpu_supports("avx512f") also checks that the OS
// saves the 512-bit registers
bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx))
    return false;
  return (eax >> 5) & 1;
}

const bool kHasBf16 = cpu_has_avx512_bf16();

// AMX tiles (Sapphire Rapids on): CPUID leaf 7 EDX bits 22 (AMX-BF16) and 24 (AMX-TILE), and Linux's permission
// for this process to use the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, kernel 5.16 on), which also says the OS
// saves the tiles. oneDNN asks for the same permission; asking twice is harmless.
bool cpu_has_amx_bf16() {
#if !MODELCHIP_LINEAR_AMX
  return false;
#else
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!kHasBf16 || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!((edx >> 22) & 1) || !((edx >> 24) & 1)) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#endif
}

const bool kHasAmx = cpu_has_amx_bf16();
bool use_amx = kHasAmx;  // set_linear_bf16_amx: tests and benchmarks run both paths on an AMX CPU

constexpr int kRowTile = 6;    // rows per micro-kernel: 6 x 4 accumulators + 4 weight registers of 32
constexpr int kBlockTile = 4;  // output blocks per micro-kernel

// one output block's 16 float32 sums, rounded once to bfloat16 (round-to-nearest-even), into row y at `col`
MC_BF16_TARGET
inline void store_block(__m512 sums, uint16_t* y, int64_t n, int64_t col) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(sums);
  if (col + kBlock <= n) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + col), h);
  } else {  // the padded last block: keep only the real outputs
    alignas(32) uint16_t last[kBlock];
    _mm256_store_si256(reinterpret_cast<__m256i*>(last), h);
    std::memcpy(y + col, last, (n - col) * sizeof(uint16_t));
  }
}

// rows [0, MT) of x ([rows, 2 k2]) times output blocks [b0, b0 + R) of w -> y ([rows, n])
template <int MT, int R>
MC_BF16_TARGET
void tile(const uint16_t* x, int64_t k2, const uint16_t* w, const float* bias, uint16_t* y, int64_t n,
          int64_t b0) {
  __m512 acc[MT][R];
  for (int r = 0; r < R; ++r) {
    const __m512 init = bias ? _mm512_loadu_ps(bias + (b0 + r) * kBlock) : _mm512_setzero_ps();
    for (int i = 0; i < MT; ++i) acc[i][r] = init;
  }
  const uint16_t* wb = w + b0 * k2 * 2 * kBlock;
  for (int64_t p = 0; p < k2; ++p) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(wb + (r * k2 + p) * 2 * kBlock);
    for (int i = 0; i < MT; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + 2 * (i * k2 + p), sizeof pair);
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], wv[r], xb);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) store_block(acc[i][r], y + i * n, n, (b0 + r) * kBlock);
}

template <int R>
MC_BF16_TARGET
void rows(const uint16_t* x, int64_t m, int64_t k2, const uint16_t* w, const float* bias, uint16_t* y, int64_t n,
          int64_t b0) {
  int64_t i = 0;
  for (; i + kRowTile <= m; i += kRowTile) tile<kRowTile, R>(x + 2 * i * k2, k2, w, bias, y + i * n, n, b0);
  const uint16_t* xi = x + 2 * i * k2;
  uint16_t* yi = y + i * n;
  switch (m - i) {
    case 1: tile<1, R>(xi, k2, w, bias, yi, n, b0); break;
    case 2: tile<2, R>(xi, k2, w, bias, yi, n, b0); break;
    case 3: tile<3, R>(xi, k2, w, bias, yi, n, b0); break;
    case 4: tile<4, R>(xi, k2, w, bias, yi, n, b0); break;
    case 5: tile<5, R>(xi, k2, w, bias, yi, n, b0); break;
    default: break;
  }
}

// output blocks [b, e) for rows [0, m): in groups of kBlockTile, the last group narrower
MC_BF16_TARGET
void blocks(const uint16_t* x, int64_t m, int64_t k2, const uint16_t* w, const float* bias, uint16_t* y,
            int64_t n, int64_t b, int64_t e) {
  for (; b + kBlockTile <= e; b += kBlockTile) rows<kBlockTile>(x, m, k2, w, bias, y, n, b);
  switch (e - b) {
    case 1: rows<1>(x, m, k2, w, bias, y, n, b); break;
    case 2: rows<2>(x, m, k2, w, bias, y, n, b); break;
    case 3: rows<3>(x, m, k2, w, bias, y, n, b); break;
    default: break;
  }
}

#if MODELCHIP_LINEAR_AMX
// The same pair blocks through AMX tiles. One B tile is 16 consecutive pair lines of an output block (16 pairs =
// 32 input features for 16 outputs, 64 bytes a line): exactly the layout TDPBF16PS reads, so the weight is packed
// once for both paths. A micro-kernel holds up to 16 rows (one A tile) against 4 output blocks (4 C tiles), with
// two B tiles taking turns. Each row's sums run the pairs in order, bias first, as the vector path does, whatever
// the number of rows in its tile, so a row's result does not depend on its batch here either; pairs past the last
// whole 16 (an input width that is not a multiple of 32) are added afterwards with vdpbf16ps, in the same order.
constexpr int kAmxRows = 16;
constexpr int kAmxBlocks = 4;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// One configuration per row count, built once in static memory: GCC's _tile_loadconfig tells the compiler it
// reads 8 bytes, so a configuration filled on the stack just before can lose its other stores (llama.cpp's AMX
// matmul crashed at ldtilecfg that way, llama.cpp PR #26954).
struct TileConfigs {
  TileConfig by_rows[kAmxRows + 1];
  TileConfigs() {
    for (int mt = 1; mt <= kAmxRows; ++mt) {
      for (int t = 0; t < 7; ++t) {  // 0-3: C (mt x 16 float32), 4: A (mt x 32 bf16), 5-6: B (16 pair lines)
        by_rows[mt].colsb[t] = 64;
        by_rows[mt].rows[t] = static_cast<uint8_t>(t < 5 ? mt : 16);
      }
    }
  }
};
const TileConfigs kTileConfigs;

MC_AMX_TARGET
void amx_configure(int mt) { _tile_loadconfig(&kTileConfigs.by_rows[mt]); }

template <int R>
MC_AMX_TARGET
void amx_tile(const uint16_t* x, int mt, int64_t k2, const uint16_t* w, const float* bias, uint16_t* y, int64_t n,
              int64_t b0, float* acc /* [kAmxRows][kAmxBlocks * kBlock] */) {
  constexpr int64_t kStride = kAmxBlocks * kBlock * sizeof(float);
  if (bias) {  // every row starts from the bias: stride 0 reads the same line into each row
    if (R > 0) _tile_loadd(0, bias + (b0 + 0) * kBlock, 0);
    if (R > 1) _tile_loadd(1, bias + (b0 + 1) * kBlock, 0);
    if (R > 2) _tile_loadd(2, bias + (b0 + 2) * kBlock, 0);
    if (R > 3) _tile_loadd(3, bias + (b0 + 3) * kBlock, 0);
  } else {
    if (R > 0) _tile_zero(0);
    if (R > 1) _tile_zero(1);
    if (R > 2) _tile_zero(2);
    if (R > 3) _tile_zero(3);
  }
  const int64_t chunks = k2 / 16, line = 2 * kBlock;  // pair lines of 16 pairs; uint16 per pair line
  const uint16_t* wb = w + b0 * k2 * line;
  for (int64_t c = 0; c < chunks; ++c) {
    _tile_loadd(4, x + 32 * c, 4 * k2);
    if (R > 0) { _tile_loadd(5, wb + (0 * k2 + 16 * c) * line, 64); _tile_dpbf16ps(0, 4, 5); }
    if (R > 1) { _tile_loadd(6, wb + (1 * k2 + 16 * c) * line, 64); _tile_dpbf16ps(1, 4, 6); }
    if (R > 2) { _tile_loadd(5, wb + (2 * k2 + 16 * c) * line, 64); _tile_dpbf16ps(2, 4, 5); }
    if (R > 3) { _tile_loadd(6, wb + (3 * k2 + 16 * c) * line, 64); _tile_dpbf16ps(3, 4, 6); }
  }
  if (R > 0) _tile_stored(0, acc + 0 * kBlock, kStride);
  if (R > 1) _tile_stored(1, acc + 1 * kBlock, kStride);
  if (R > 2) _tile_stored(2, acc + 2 * kBlock, kStride);
  if (R > 3) _tile_stored(3, acc + 3 * kBlock, kStride);
  for (int i = 0; i < mt; ++i) {
    for (int r = 0; r < R; ++r) {
      float* a = acc + i * kAmxBlocks * kBlock + r * kBlock;
      __m512 sum = _mm512_loadu_ps(a);
      for (int64_t p = 16 * chunks; p < k2; ++p) {  // the pairs past the last whole tile
        int32_t pair;
        std::memcpy(&pair, x + 2 * (i * k2 + p), sizeof pair);
        sum = _mm512_dpbf16_ps(sum, (__m512bh)_mm512_loadu_si512(wb + (r * k2 + p) * line),
                               (__m512bh)_mm512_set1_epi32(pair));
      }
      store_block(sum, y + i * n, n, (b0 + r) * kBlock);
    }
  }
}

// output blocks [b, e) for rows [0, m) through AMX tiles; the tile configuration is per thread, so each call
// configures its own and releases it. Whole 16-row tiles first, block group by block group with every row tile
// inside, so a group's weights (4 x 16 outputs x k) stay in cache while the rows stream past them instead of the
// whole weight streaming again for every 16 rows; then the remainder rows under their own configuration.
MC_AMX_TARGET
void amx_blocks(const uint16_t* x, int64_t m, int64_t k2, const uint16_t* w, const float* bias, uint16_t* y,
                int64_t n, int64_t b, int64_t e) {
  alignas(64) float acc[kAmxRows * kAmxBlocks * kBlock];
  const int64_t whole = m / kAmxRows * kAmxRows;
  const auto pass = [&](int64_t r0, int64_t r1, int mt) {
    amx_configure(mt);
    for (int64_t bb = b; bb < e; bb += kAmxBlocks) {
      for (int64_t i = r0; i < r1; i += kAmxRows) {
        const uint16_t* xi = x + 2 * i * k2;
        uint16_t* yi = y + i * n;
        switch (std::min<int64_t>(kAmxBlocks, e - bb)) {
          case 4: amx_tile<4>(xi, mt, k2, w, bias, yi, n, bb, acc); break;
          case 3: amx_tile<3>(xi, mt, k2, w, bias, yi, n, bb, acc); break;
          case 2: amx_tile<2>(xi, mt, k2, w, bias, yi, n, bb, acc); break;
          default: amx_tile<1>(xi, mt, k2, w, bias, yi, n, bb, acc); break;
        }
      }
    }
  };
  if (whole > 0) pass(0, whole, kAmxRows);
  if (m > whole) pass(whole, m, static_cast<int>(m - whole));
  _tile_release();
}
#endif  // MODELCHIP_LINEAR_AMX

#endif  // MODELCHIP_LINEAR_BF16

at::Tensor pack_linear_bf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu(), "pack_linear_bf16: weight is on ", weight.device(), ", not the CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16,
              "pack_linear_bf16: weight must be a 2-D bfloat16 tensor [out, in]");
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t blocks_n = (n + kBlock - 1) / kBlock, k2 = (k + 1) / 2;
  at::Tensor padded = at::zeros({blocks_n * kBlock, k2 * 2}, weight.options());
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(weight);
  return mc_ops::in_huge_pages(padded.view({blocks_n, kBlock, k2, 2}).transpose(1, 2).contiguous());
}

at::Tensor linear_bf16(const at::Tensor& x_in, const at::Tensor& blocked, int64_t n,
                       const c10::optional<at::Tensor>& bias_in) {
#if MODELCHIP_LINEAR_BF16
  TORCH_CHECK(kHasBf16, "linear_bf16: this CPU has no AVX512-BF16 (see has_linear_bf16)");
  TORCH_CHECK(x_in.device().is_cpu() && blocked.device().is_cpu(), "linear_bf16: x and weight must be on the CPU");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kBFloat16, "linear_bf16: x must be [rows, in] bfloat16");
  TORCH_CHECK(blocked.dim() == 4 && blocked.size(2) == kBlock && blocked.size(3) == 2 &&
              blocked.scalar_type() == at::kBFloat16 && blocked.is_contiguous(),
              "linear_bf16: weight must come from pack_linear_bf16");
  const int64_t k2 = blocked.size(1), blocks_n = blocked.size(0), m = x_in.size(0);
  TORCH_CHECK(n > (blocks_n - 1) * kBlock && n <= blocks_n * kBlock, "linear_bf16: ", n,
              " outputs do not match the blocked weight");
  TORCH_CHECK(x_in.size(1) == 2 * k2 || x_in.size(1) == 2 * k2 - 1, "linear_bf16: x has ", x_in.size(1),
              " input features, the weight ", 2 * k2);
  at::Tensor x = x_in.contiguous();
  if (x.size(1) != 2 * k2) x = at::constant_pad_nd(x, {0, 1});  // an odd width: the padded weight column is 0
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->device().is_cpu(), "linear_bf16: bias must be on the CPU");
    TORCH_CHECK(bias_in->numel() == n, "linear_bf16: bias has ", bias_in->numel(), " elements for ", n, " outputs");
    bias = at::zeros({blocks_n * kBlock}, x.options().dtype(at::kFloat));
    bias.narrow(0, 0, n).copy_(*bias_in);
  }
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(blocked.data_ptr());
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  auto* yp = reinterpret_cast<uint16_t*>(out.data_ptr());

#if MODELCHIP_LINEAR_AMX
  if (use_amx) {
    mc_ops::parallel_row_blocks(m, blocks_n, kAmxRows, k2 * 2 * kBlock, [&](int64_t r0, int64_t rows, int64_t b,
                                                                            int64_t e) {
      amx_blocks(xp + r0 * 2 * k2, rows, k2, wp, bp, yp + r0 * n, n, b, e);
    });
  } else
#endif
  {
    mc_ops::parallel_row_blocks(m, blocks_n, kRowTile, k2 * 2 * kBlock, [&](int64_t r0, int64_t rows, int64_t b,
                                                                           int64_t e) {
      blocks(xp + r0 * 2 * k2, rows, k2, wp, bp, yp + r0 * n, n, b, e);
    });
  }
  return out;
#else
  TORCH_CHECK(false, "linear_bf16: this build has no AVX512-BF16 matmul (not x86-64, or a compiler older than "
              "GCC 10 / clang 9; see has_linear_bf16)");
  return x_in;
#endif
}

}  // namespace

// for the fused decoder stack (cpu_ops.h)
at::Tensor mc_ops::linear_bf16(const at::Tensor& x, const at::Tensor& blocked, int64_t n, const c10::optional<at::Tensor>& bias) {
  return ::linear_bf16(x, blocked, n, bias);
}

namespace {

bool linear_bf16_amx() {
#if MODELCHIP_LINEAR_BF16
  return use_amx;
#else
  return false;
#endif
}

void set_linear_bf16_amx(bool on) {
#if MODELCHIP_LINEAR_BF16
  TORCH_CHECK(!on || kHasAmx, "set_linear_bf16_amx: this CPU (or its OS) gives this process no AMX tiles");
  use_amx = on;
#else
  TORCH_CHECK(!on, "set_linear_bf16_amx: this build has no AVX512-BF16 matmul");
#endif
}

}  // namespace

void register_linear_bf16(pybind11::module& m) {
#if MODELCHIP_LINEAR_BF16
  m.attr("has_linear_bf16") = kHasBf16;
  m.attr("has_linear_bf16_amx") = kHasAmx;
#else
  m.attr("has_linear_bf16") = false;
  m.attr("has_linear_bf16_amx") = false;
#endif
  m.def("linear_bf16_amx", &linear_bf16_amx, "whether linear_bf16 runs its pairs through AMX tiles");
  m.def("set_linear_bf16_amx", &set_linear_bf16_amx, "run linear_bf16 through AMX tiles (where the CPU has them) "
        "or through vdpbf16ps; for tests and benchmarks");
  m.def("pack_linear_bf16", &pack_linear_bf16, "lay a bfloat16 [out, in] weight out in pair blocks");
  m.def("linear_bf16", &linear_bf16, "x @ weight.T (+ bias) over a pair-blocked bfloat16 weight",
        pybind11::arg("x"), pybind11::arg("blocked"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none());
}
