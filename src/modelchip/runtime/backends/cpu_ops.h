// The kernels' entry points, as the fused decoder stack (cpu_decoder_layers.cpp) calls them: the same checked
// functions Python calls one by one, so a fused step computes exactly the bits the unfused one does.
#pragma once

#include <torch/extension.h>

#include <string>

namespace mc_ops {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor silu_and_mul(const at::Tensor& gate_up);
void write_kv(at::Tensor& cache, const at::Tensor& values, const at::Tensor& slot_mapping);
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const c10::optional<at::Tensor>& v_cache,
                            int64_t v_dim, const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                            int64_t window);
// A contiguous copy of a packed weight in memory the kernel may back with 2 MB pages (transparent huge pages,
// where the OS allows them): a decode step streams every weight once, and 4 KB pages cost a TLB miss per 4 KB.
// Weights under 2 MB, other OSes, and MODELCHIP_HUGE_PAGES=0 (read once a process) leave the tensor as it is.
at::Tensor in_huge_pages(const at::Tensor& t);
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& blocked, int64_t n, const c10::optional<at::Tensor>& bias);
at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& blocked, int64_t n, const c10::optional<at::Tensor>& bias);
at::Tensor linear_quant(const at::Tensor& x, const at::Tensor& packed, const std::string& format, int64_t out_features,
                        const c10::optional<at::Tensor>& bias);

}  // namespace mc_ops
