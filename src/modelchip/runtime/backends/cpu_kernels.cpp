// The cpu backend's fused kernels: one call each where eager PyTorch runs 4-12 small ops at decode sizes.
//
// At decode a step of a small model is mostly per-op dispatch: SmolLM2's RMSNorm is nine eager ops of ~2 us on
// 576 numbers. Each kernel here reproduces the reference backend's roundings (every intermediate the reference
// keeps in the activation dtype is rounded to it here too), so results stay within the conformance tolerances
// and greedy text does not drift. Float32 accumulation everywhere. Built once per machine by cpu_kernels.py,
// together with the bfloat16 and float32 matmuls (cpu_linear_bf16.cpp, cpu_linear_f32.cpp) and the quantized
// one (cpu_linear_quant.cpp), which register into the same module.
//
// This file checks arguments and allocates; the loops are in cpu_kernels_isa.h, compiled here once per
// instruction set with function-level targets (no -march flag), and one copy is chosen by CPUID when the
// module loads: the build is the same on every x86 CPU, and runs the widest vectors each one has.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define MC_X86 1
#endif

// One copy of the loops per target. GCC's target pragma covers every function defined in the region, lambdas
// and template instantiations included; clang takes the same through `attribute push`.
#define MC_STR(x) #x
#if MC_X86 && defined(__clang__)
#define MC_TARGET_BEGIN(isa) _Pragma(MC_STR(clang attribute push(__attribute__((target(isa))), apply_to = function)))
#define MC_TARGET_END _Pragma("clang attribute pop")
#elif MC_X86
#define MC_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(MC_STR(GCC target(isa)))
#define MC_TARGET_END _Pragma("GCC pop_options")
#endif

#if MC_X86
MC_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,bmi2")
namespace mc_avx512 {
#include "cpu_kernels_isa.h"
}  // namespace mc_avx512
MC_TARGET_END
MC_TARGET_BEGIN("avx2,fma,f16c,bmi2")
namespace mc_avx2 {
#include "cpu_kernels_isa.h"
}  // namespace mc_avx2
MC_TARGET_END
#endif
namespace mc_base {
#include "cpu_kernels_isa.h"
}  // namespace mc_base

namespace {

// Which copy of the loops runs: the widest this CPU and its OS support (__builtin_cpu_supports reads CPUID and
// checks that the OS saves the wide registers), unless set_isa narrowed it (tests run every copy that way).
enum class Isa { base, avx2, avx512 };

Isa detect_isa() {
#if MC_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return Isa::avx2;
#endif
  return Isa::base;
}

const Isa kBestIsa = detect_isa();
Isa chosen_isa = kBestIsa;

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "baseline"; }

std::string isa() { return isa_name(chosen_isa); }

void set_isa(const std::string& name) {
  const Isa want = name == "avx512" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : name == "baseline" ? Isa::base
                                                                                                   : kBestIsa;
  TORCH_CHECK(name == isa_name(want), "set_isa: unknown instruction set '", name,
              "'; choose avx512, avx2 or baseline");
  TORCH_CHECK(want <= kBestIsa, "set_isa: this CPU runs ", isa_name(kBestIsa), " at most, not ", name);
  chosen_isa = want;
}

#if MC_X86
#define MC_ISA_CALL(fn, ...)                                             \
  switch (chosen_isa) {                                                  \
    case Isa::avx512: mc_avx512::fn(__VA_ARGS__); break;                 \
    case Isa::avx2: mc_avx2::fn(__VA_ARGS__); break;                     \
    default: mc_base::fn(__VA_ARGS__); break;                            \
  }
#else
#define MC_ISA_CALL(fn, ...) mc_base::fn(__VA_ARGS__)
#endif


// Every kernel below reads raw pointers, so each argument is checked before any memory is touched: a wrong
// shape or index must come back to Python as an error naming it, never as a crash or as garbage.
void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is missing");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(), "; these kernels run on the CPU");
}

void check_float(const char* op, const char* name, const at::Tensor& t) {
  check_cpu(op, name, t);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, not ", t.scalar_type());
}

void check_index(const char* op, const char* name, const at::Tensor& t, int64_t dims) {
  check_cpu(op, name, t);
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must hold integers, not ", t.scalar_type());
  TORCH_CHECK(t.dim() == dims, op, ": ", name, " must be ", dims, "-D, got ", t.dim(), "-D");
}

}  // namespace

namespace mc_ops {

at::Tensor in_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t(2) << 20, kPage = 4096;
  const size_t bytes = t.nbytes();
  static const bool wanted = [] {  // MODELCHIP_HUGE_PAGES=0: ordinary pages (to measure what huge ones change)
    const char* v = std::getenv("MODELCHIP_HUGE_PAGES");
    return v == nullptr || std::string(v) != "0";
  }();
  if (!wanted || bytes < kHuge || !t.is_contiguous() || !t.device().is_cpu()) return t;
  // map 2 MB more than needed, then unmap the slack on both sides: the mapping starts on a 2 MB boundary and
  // ends at the last 4 KB page the weight uses, so no huge page is made for memory the weight does not fill
  const size_t length = (bytes + kPage - 1) / kPage * kPage;
  void* raw = mmap(nullptr, length + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return t;
  char* const start = static_cast<char*>(raw);
  char* const aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(start) + kHuge - 1) & ~(kHuge - 1));
  const size_t lead = aligned - start;  // < 2 MB, so the tail's slack, 2 MB - lead, is never empty
  if (lead) munmap(start, lead);
  munmap(aligned + length, kHuge - lead);
  madvise(aligned, length, MADV_HUGEPAGE);  // a request: where THP is off, ordinary pages
  std::memcpy(aligned, t.data_ptr(), bytes);
  return at::from_blob(aligned, t.sizes(), t.strides(), [length](void* p) { munmap(p, length); }, t.options());
#else
  return t;
#endif
}

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  check_float("rms_norm", "x", x_in);
  check_float("rms_norm", "weight", w_in);
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, "rms_norm: x must have rows of at least one element");
  TORCH_CHECK(x_in.size(-1) == w_in.numel(), "rms_norm: weight has ", w_in.numel(), " elements for rows of ",
              x_in.size(-1));
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_in.to(x.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(x);
  MC_ISA_CALL(rms_norm_run, x, w, eps, out);
  return out;
}

at::Tensor rotary(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  check_float("rotary", "x", x_in);
  check_float("rotary", "cos", cos_in);
  check_float("rotary", "sin", sin_in);
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(2) % 2 == 0, "rotary: x must be [T, heads, even d], got ", x_in.sizes());
  for (const at::Tensor* t : {&cos_in, &sin_in})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == x_in.size(0) && t->size(1) * 2 == x_in.size(2),
                "rotary: cos and sin must be [T, d/2] = [", x_in.size(0), ", ", x_in.size(2) / 2, "], got ",
                t->sizes());
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();  // rows may stay strided (a q/k/v split)
  const at::Tensor cos = cos_in.to(at::kFloat).contiguous(), sin = sin_in.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  MC_ISA_CALL(rotary_run, x, cos, sin, out);
  return out;
}

at::Tensor silu_and_mul(const at::Tensor& gu_in) {
  check_float("silu_and_mul", "gate_up", gu_in);
  TORCH_CHECK(gu_in.dim() >= 1 && gu_in.size(-1) > 0 && gu_in.size(-1) % 2 == 0,
              "silu_and_mul: last dim must be even and positive, got ", gu_in.sizes());
  const at::Tensor gu = gu_in.contiguous();
  auto sizes = gu.sizes().vec();
  sizes.back() /= 2;
  at::Tensor out = at::empty(sizes, gu.options());
  MC_ISA_CALL(silu_and_mul_run, gu, out);
  return out;
}

// Store each new token's row at its flat cache slot (a row may be a strided view: a q/k/v split)
void write_kv(at::Tensor& cache, const at::Tensor& values, const at::Tensor& slots_in) {
  check_cpu("write_kv", "cache", cache);
  check_cpu("write_kv", "values", values);
  check_index("write_kv", "slot_mapping", slots_in, 1);
  TORCH_CHECK(cache.dim() >= 3 && cache.size(0) > 0 && cache.size(1) > 0,
              "write_kv: cache must be [blocks, block_size, ...] with at least one slot, got ", cache.sizes());
  TORCH_CHECK(cache.is_contiguous(), "write_kv: cache must be contiguous");
  TORCH_CHECK(values.scalar_type() == cache.scalar_type(), "write_kv: values are ", values.scalar_type(),
              ", the cache ", cache.scalar_type());
  const int64_t row = cache.numel() / (cache.size(0) * cache.size(1)), capacity = cache.size(0) * cache.size(1);
  TORCH_CHECK(values.dim() >= 1 && values.numel() == values.size(0) * row, "write_kv: values ", values.sizes(),
              " do not split into rows of the cache's ", row, " elements");
  TORCH_CHECK(slots_in.size(0) == values.size(0), "write_kv: ", slots_in.size(0), " slots for ", values.size(0),
              " rows");
  const at::Tensor v = values.reshape({values.size(0), row});
  TORCH_CHECK(v.stride(1) == 1, "write_kv: values rows must be contiguous");
  const at::Tensor slots = slots_in.to(at::kLong).contiguous();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t bytes = row * cache.element_size();
  char* dst = static_cast<char*>(cache.data_ptr());
  const char* src = static_cast<const char*>(v.data_ptr());
  for (int64_t t = 0; t < v.size(0); ++t) {
    TORCH_CHECK(sp[t] >= 0 && sp[t] < capacity, "write_kv: slot ", sp[t], " outside the cache");
    std::memcpy(dst + sp[t] * bytes, src + t * v.stride(0) * cache.element_size(), bytes);
  }
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k_cache, const c10::optional<at::Tensor>& v_cache,
                            int64_t v_dim, const at::Tensor& block_tables, const at::Tensor& context_lens,
                            double scale, int64_t window) {
  check_float("decode_attention", "q", q_in);
  check_float("decode_attention", "k_cache", k_cache);
  check_index("decode_attention", "block_tables", block_tables, 2);
  check_index("decode_attention", "context_lens", context_lens, 1);
  TORCH_CHECK(q_in.dim() == 3 && k_cache.dim() == 4, "decode_attention: q must be [S, heads, d] and k_cache "
              "[blocks, block_size, groups, d], got ", q_in.sizes(), " and ", k_cache.sizes());
  const int64_t seqs = q_in.size(0), num_blocks = k_cache.size(0), bs = k_cache.size(1);
  TORCH_CHECK(k_cache.size(2) > 0 && q_in.size(1) % k_cache.size(2) == 0, "decode_attention: ", q_in.size(1),
              " query heads are not a multiple of ", k_cache.size(2), " K/V groups");
  TORCH_CHECK(q_in.size(2) == k_cache.size(3), "decode_attention: queries are ", q_in.size(2),
              " wide but cache rows ", k_cache.size(3));
  TORCH_CHECK(k_cache.stride(3) == 1, "decode_attention: cache rows must be contiguous");
  TORCH_CHECK(q_in.scalar_type() == k_cache.scalar_type(), "decode_attention: q is ", q_in.scalar_type(),
              ", the cache ", k_cache.scalar_type());
  TORCH_CHECK(block_tables.size(0) == seqs && context_lens.size(0) == seqs, "decode_attention: ", seqs,
              " queries, ", block_tables.size(0), " block table rows and ", context_lens.size(0),
              " context lengths (one each per sequence)");
  TORCH_CHECK(window >= 0, "decode_attention: window must be >= 0, got ", window);
  const bool separate = v_cache.has_value();
  const at::Tensor& vc = separate ? *v_cache : k_cache;
  if (separate) {
    check_float("decode_attention", "v_cache", vc);
    TORCH_CHECK(vc.dim() == 4 && vc.size(0) == num_blocks && vc.size(1) == bs && vc.size(2) == k_cache.size(2),
                "decode_attention: v_cache ", vc.sizes(), " does not match k_cache ", k_cache.sizes());
    TORCH_CHECK(vc.scalar_type() == k_cache.scalar_type(), "decode_attention: v_cache is ", vc.scalar_type(),
                ", k_cache ", k_cache.scalar_type());
  }
  TORCH_CHECK(vc.stride(3) == 1, "decode_attention: cache rows must be contiguous");
  const int64_t dv = separate ? vc.size(3) : v_dim;
  TORCH_CHECK(dv > 0 && dv <= vc.size(3), "decode_attention: value width ", dv, " outside the cache row of ",
              vc.size(3));
  const at::Tensor q = q_in.contiguous();
  const at::Tensor tables = block_tables.to(at::kLong).contiguous(), lens = context_lens.to(at::kLong).contiguous();
  // every length and every block a query will read, checked before the kernel reads any of them
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  const int64_t width = tables.size(1);
  for (int64_t s = 0; s < seqs; ++s) {
    TORCH_CHECK(lp[s] >= 1, "decode_attention: sequence ", s, " has context length ", lp[s], "; need >= 1");
    TORCH_CHECK(lp[s] <= width * bs, "decode_attention: sequence ", s, " has context length ", lp[s],
                " but its block table holds ", width, " blocks of ", bs, " tokens");
    const int64_t first = window > 0 ? std::max<int64_t>(0, lp[s] - window) : 0;
    for (int64_t b = first / bs; b <= (lp[s] - 1) / bs; ++b)
      TORCH_CHECK(tp[s * width + b] >= 0 && tp[s * width + b] < num_blocks, "decode_attention: sequence ", s,
                  " reads block ", tp[s * width + b], " (table entry ", b, ") but the cache has ", num_blocks,
                  " blocks");
  }
  const int64_t vstr[3] = {vc.stride(0), vc.stride(1), vc.stride(2)};
  at::Tensor out = at::empty({q.size(0), q.size(1), dv}, q.options());
  MC_ISA_CALL(decode_attention_run, q, k_cache, vc, dv, vstr, tables, lens, scale, window, out);
  return out;
}

}  // namespace mc_ops

void register_linear_bf16(pybind11::module& m);  // cpu_linear_bf16.cpp
void register_linear_quant(pybind11::module& m);  // cpu_linear_quant.cpp
void register_linear_f32(pybind11::module& m);  // cpu_linear_f32.cpp
void register_decoder_layers(pybind11::module& m);  // cpu_decoder_layers.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_linear_bf16(m);
  register_linear_quant(m);
  register_linear_f32(m);
  register_decoder_layers(m);
  m.def("rms_norm", &mc_ops::rms_norm, "RMSNorm with the reference's roundings");
  m.def("rotary", &mc_ops::rotary, "half-split rotary embedding with the reference's roundings");
  m.def("silu_and_mul", &mc_ops::silu_and_mul, "silu(gate) * up");
  m.def("write_kv", &mc_ops::write_kv, "store rows at flat cache slots, in place");
  m.def("decode_attention", &mc_ops::decode_attention, "decode attention over the paged KV cache");
  m.def("isa", &isa, "the instruction set whose copy of the loops runs: avx512, avx2 or baseline");
  m.def("set_isa", &set_isa, "run another copy of the loops (one this CPU supports); for tests and benchmarks");
  m.attr("best_isa") = isa_name(kBestIsa);
}
