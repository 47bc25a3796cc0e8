// The kernels' entry points, as the fused decoder stack (cpu_decoder_layers.cpp) calls them: the same checked
// functions Python calls one by one, so a fused step computes exactly the bits the unfused one does.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
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

// How the blocked matmuls (bf16 pairs, float32 blocks) split a [m rows] x [blocks_n blocks of outputs] product
// over threads: work items are (row chunk, output block). Rows stay one chunk (each weight line read once per
// tile of `row_tile` rows) unless there are too few output blocks to keep every thread busy; tiny products stay
// on the calling thread. Calls fn(first row, rows, first block, end block) for each run of one chunk's blocks.
template <typename Fn>
void parallel_row_blocks(int64_t m, int64_t blocks_n, int64_t row_tile, int64_t madds_per_row_block, const Fn& fn) {
  const int64_t threads = at::get_num_threads();
  int64_t chunk = m;
  if (blocks_n < 4 * threads && m > row_tile) {
    const int64_t splits = std::min((4 * threads + blocks_n - 1) / blocks_n, (m + row_tile - 1) / row_tile);
    chunk = ((m + splits - 1) / splits + row_tile - 1) / row_tile * row_tile;
  }
  const int64_t chunks = (m + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / (std::min(chunk, m) * madds_per_row_block));
  at::parallel_for(0, chunks * blocks_n, grain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t c = begin / blocks_n, b = begin % blocks_n;
      const int64_t e = std::min(blocks_n, b + (end - begin));
      const int64_t r0 = c * chunk;
      fn(r0, std::min(chunk, m - r0), b, e);
      begin += e - b;
    }
  });
}

}  // namespace mc_ops
