// A whole decoder stack (GQA attention + gated MLP per layer) in one call from Python.
//
// At batch 1 a SmolLM2-135M step is ~8-12 ms of matmuls and ~1-1.5 ms of Python between them: ~16 op calls and
// 5 module calls per layer, 30 layers (BENCHMARKS.md, "where a batch-1 step goes"). llama.cpp runs its step as
// one C graph. Here the layer loop runs in C++ over the same checked kernel entry points Python calls
// (cpu_ops.h), in the same order with the same arguments, so a fused step gives exactly the bits of the unfused
// one; only the interpreter between the calls is gone. The stack holds the backend's prepared weights (pair-
// blocked bfloat16, blocked float32 or packed GGUF blocks), built once after loading (CPUBackend.
// fuse_decoder_layers); anything it does not cover (MLA, MFA, MoE, tensor parallel) runs unfused.

#include <torch/extension.h>

#include <string>
#include <vector>

#include "cpu_ops.h"

namespace {

// One prepared linear weight and the matmul that reads it (chosen once, when the stack is built).
struct Linear {
  enum class Kind { bf16_pairs, f32_blocks, packed } kind;
  std::string format;  // the packed GGUF block format (q8_0, q4_0, q4_1)
  at::Tensor packed;
  int64_t out_features = 0;
  c10::optional<at::Tensor> bias;

  at::Tensor operator()(const at::Tensor& x) const {
    switch (kind) {
      case Kind::bf16_pairs: return mc_ops::linear_bf16(x, packed, out_features, bias);
      case Kind::f32_blocks: return mc_ops::linear_f32(x, packed, out_features, bias);
      default: return mc_ops::linear_quant(x, packed, format, out_features, bias);
    }
  }
};

// layout: "bf16-pairs", "f32-blocks", or a packed format (q8_0, q4_0, q4_1)
Linear make_linear(const std::string& layout, const at::Tensor& packed, int64_t out_features,
                   const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(out_features > 0, "decoder stack: a linear weight has ", out_features, " outputs");
  const bool packed_format = layout == "q8_0" || layout == "q4_0" || layout == "q4_1";
  TORCH_CHECK(layout == "bf16-pairs" || layout == "f32-blocks" || packed_format, "decoder stack: no matmul reads a '",
              layout, "' weight (bf16-pairs, f32-blocks, q8_0, q4_0, q4_1)");
  const Linear::Kind kind = layout == "bf16-pairs"   ? Linear::Kind::bf16_pairs
                            : layout == "f32-blocks" ? Linear::Kind::f32_blocks
                                                     : Linear::Kind::packed;
  return Linear{kind, layout, packed, out_features, bias};
}

struct Layer {
  at::Tensor input_norm, post_norm;
  double eps;
  Linear qkv, o, gate_up, down;
  c10::optional<at::Tensor> q_norm, k_norm;
  int64_t heads, kv_heads, head_dim;
  double scale;
  int64_t window;
};

class DecoderLayers {
 public:
  explicit DecoderLayers(int64_t hidden) : hidden_(hidden) {
    TORCH_CHECK(hidden > 0, "decoder stack: hidden size must be positive, got ", hidden);
  }

  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, double eps, const Linear& qkv,
                 const Linear& o, const Linear& gate_up, const Linear& down, const c10::optional<at::Tensor>& q_norm,
                 const c10::optional<at::Tensor>& k_norm, int64_t heads, int64_t kv_heads, int64_t head_dim,
                 double scale, int64_t window) {
    const int64_t i = static_cast<int64_t>(layers_.size());
    TORCH_CHECK(heads > 0 && kv_heads > 0 && head_dim > 0 && heads % kv_heads == 0, "decoder stack: layer ", i,
                " has ", heads, " query heads, ", kv_heads, " K/V heads of ", head_dim);
    TORCH_CHECK(input_norm.numel() == hidden_ && post_norm.numel() == hidden_, "decoder stack: layer ", i,
                "'s norms do not have ", hidden_, " weights");
    TORCH_CHECK(qkv.out_features == (heads + 2 * kv_heads) * head_dim, "decoder stack: layer ", i, "'s qkv gives ",
                qkv.out_features, " outputs for ", heads, " + 2 x ", kv_heads, " heads of ", head_dim);
    TORCH_CHECK(o.out_features == hidden_ && down.out_features == hidden_ && gate_up.out_features % 2 == 0,
                "decoder stack: layer ", i, "'s o, gate_up or down projection does not fit hidden size ", hidden_);
    TORCH_CHECK(q_norm.has_value() == k_norm.has_value(), "decoder stack: layer ", i, " has only one of q/k norm");
    layers_.push_back(Layer{input_norm, post_norm, eps, qkv, o, gate_up, down, q_norm, k_norm, heads, kv_heads,
                            head_dim, scale, window});
  }

  int64_t size() const { return static_cast<int64_t>(layers_.size()); }

  // h [T, H] -> h after every layer (before the final norm). Each layer: norm, qkv, (q/k norm), rotary, cache
  // writes, attention, o (+ residual), norm, gate_up, SiLU-and-mul, down (+ residual): DecoderLayer.forward's
  // ops in its order.
  at::Tensor forward(const at::Tensor& h_in, const at::Tensor& cos, const at::Tensor& sin,
                     std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches, const at::Tensor& slot_mapping,
                     const at::Tensor& block_tables, const at::Tensor& context_lens) {
    TORCH_CHECK(h_in.dim() == 2 && h_in.size(1) == hidden_, "decoder stack: hidden states must be [T, ", hidden_,
                "], got ", h_in.sizes());
    TORCH_CHECK(static_cast<int64_t>(k_caches.size()) == size() && static_cast<int64_t>(v_caches.size()) == size(),
                "decoder stack: ", k_caches.size(), " K and ", v_caches.size(), " V caches for ", size(), " layers");
    const int64_t t = h_in.size(0);
    if (t == 0) return h_in;
    at::Tensor h = h_in;
    for (int64_t i = 0; i < size(); ++i) {
      const Layer& l = layers_[i];
      TORCH_CHECK(k_caches[i].scalar_type() == h.scalar_type() && v_caches[i].scalar_type() == h.scalar_type(),
                  "decoder stack: layer ", i, "'s cache is ", k_caches[i].scalar_type(), ", activations ",
                  h.scalar_type());
      const at::Tensor x = mc_ops::rms_norm(h, l.input_norm, l.eps);
      const at::Tensor qkv = l.qkv(x);
      const int64_t dq = l.heads * l.head_dim, dkv = l.kv_heads * l.head_dim;
      at::Tensor q = qkv.narrow(1, 0, dq).view({t, l.heads, l.head_dim});
      at::Tensor k = qkv.narrow(1, dq, dkv).view({t, l.kv_heads, l.head_dim});
      const at::Tensor v = qkv.narrow(1, dq + dkv, dkv).view({t, l.kv_heads, l.head_dim});
      if (l.q_norm.has_value()) {
        q = mc_ops::rms_norm(q, *l.q_norm, l.eps);
        k = mc_ops::rms_norm(k, *l.k_norm, l.eps);
      }
      q = mc_ops::rotary(q, cos, sin);
      k = mc_ops::rotary(k, cos, sin);
      mc_ops::write_kv(k_caches[i], k, slot_mapping);
      mc_ops::write_kv(v_caches[i], v, slot_mapping);
      const at::Tensor o = mc_ops::decode_attention(q, k_caches[i], v_caches[i], 0, block_tables, context_lens,
                                                    l.scale, l.window);
      h = h + l.o(o.reshape({t, dq}));  // a new tensor: the caller's h is left as it was
      const at::Tensor gate_up = l.gate_up(mc_ops::rms_norm(h, l.post_norm, l.eps));
      h.add_(l.down(mc_ops::silu_and_mul(gate_up)));  // same rounding as h + down(...)
    }
    return h;
  }

 private:
  int64_t hidden_;
  std::vector<Layer> layers_;
};

}  // namespace

void register_decoder_layers(pybind11::module& m) {
  namespace py = pybind11;
  py::class_<Linear>(m, "FusedLinear", "a prepared linear weight for DecoderLayers");
  m.def("fused_linear", &make_linear, "a prepared weight (layout, packed tensor, outputs, bias) for DecoderLayers",
        py::arg("layout"), py::arg("packed"), py::arg("out_features"), py::arg("bias") = py::none());
  py::class_<DecoderLayers>(m, "DecoderLayers", "GQA + gated-MLP decoder layers run in one call")
      .def(py::init<int64_t>(), py::arg("hidden"))
      .def("add_layer", &DecoderLayers::add_layer, py::arg("input_norm"), py::arg("post_norm"), py::arg("eps"),
           py::arg("qkv"), py::arg("o"), py::arg("gate_up"), py::arg("down"), py::arg("q_norm"), py::arg("k_norm"),
           py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("scale"), py::arg("window"))
      .def("__len__", &DecoderLayers::size)
      .def("forward", &DecoderLayers::forward, py::arg("h"), py::arg("cos"), py::arg("sin"), py::arg("k_caches"),
           py::arg("v_caches"), py::arg("slot_mapping"), py::arg("block_tables"), py::arg("context_lens"));
}
