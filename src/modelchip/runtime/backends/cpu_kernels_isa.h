// The fused kernels' loops, compiled once per instruction set: cpu_kernels.cpp includes this file inside one
// namespace per target (AVX-512, AVX2 + FMA, the baseline) under a target pragma, and picks a copy by CPUID
// at run time, so one build runs on any x86 CPU and uses what it finds. No include guard: it is meant to be
// included several times. Arguments arrive checked (cpu_kernels.cpp); nothing here validates.

constexpr int kLanes = 16;  // floats per vfloat below

template <typename T>
inline float f32(T v) { return static_cast<float>(v); }

// a product or sum as eager PyTorch gives it in dtype T: computed in float, rounded to T
template <typename T>
inline float rnd(float v) { return static_cast<float>(static_cast<T>(v)); }

// 16 floats in one register (GCC/Clang vector extension: AVX-512 on x86 where built for it, two or four
// narrower registers elsewhere), so dot products and sums stay in SIMD without intrinsics
typedef float vfloat __attribute__((vector_size(64)));
typedef uint16_t vhalf __attribute__((vector_size(32)));
typedef uint32_t vuint __attribute__((vector_size(64)));
typedef int32_t vint __attribute__((vector_size(64)));

template <typename T>
inline vfloat load16(const T* p) {
  vfloat v;
  for (int l = 0; l < kLanes; ++l) v[l] = f32(p[l]);
  return v;
}

template <>
inline vfloat load16<float>(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <>
inline vfloat load16<c10::BFloat16>(const c10::BFloat16* p) {  // bfloat16 is float32's top half
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  vuint w = __builtin_convertvector(h, vuint) << 16;
  vfloat v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

template <typename T>
inline vfloat loadn(const T* p, int64_t n) {  // a row's last, partial chunk reads as zeros past its end
  if (n >= kLanes) return load16(p);
  vfloat v = {};
  for (int64_t l = 0; l < n; ++l) v[l] = f32(p[l]);
  return v;
}

inline float hsum(vfloat v) {  // four shuffle-and-add steps in registers, not sixteen dependent scalar adds
#if defined(__clang__)
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
#else
  v += __builtin_shuffle(v, vint{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, vint{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, vint{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
  v += __builtin_shuffle(v, vint{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
#endif
  return v[0];
}

// exp for softmax without a libm call (std::exp was most of a decode attention's time), for one float or 16
// lanes (the scalar loop over it does not vectorize, so the register kernel calls the vector form).
// 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-7 Taylor: relative error < 2e-7.
inline float pow2i(float n) {  // 2^n for an integral n in the normal range, built in the exponent bits
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale;
}

inline vfloat pow2i(vfloat n) {
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale;
}

template <typename V>
inline V exp_clamped(V x) {  // x in [-87.3, 88.3]
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const V n = (x * 1.44269504f + shifter) - shifter;
  const V r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  V p = r * (1.0f / 5040) + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * pow2i(n);
}

inline float fast_exp(float x) { return exp_clamped(std::min(88.3f, std::max(-87.3f, x))); }

inline vfloat fast_exp16(vfloat x) {
  const vfloat lo = vfloat{} - 87.3f, hi = vfloat{} + 88.3f;
  x = x < lo ? lo : x;
  return exp_clamped(x > hi ? hi : x);
}

// softmax's numerator in place, in float32 as the eager path computes it: row[i] = exp(row[i] - max);
// returns the sum, which the caller divides by
inline float exp_shifted(float* row, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, row[i]);
  float sum = 0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vfloat e;
    std::memcpy(&e, row + i, sizeof e);
    e = fast_exp16(e - mx);
    std::memcpy(row + i, &e, sizeof e);
    sum += hsum(e);
  }
  for (; i < n; ++i) {
    row[i] = fast_exp(row[i] - mx);
    sum += row[i];
  }
  return sum;
}

// rows whose work is below this run on the calling thread: waking the pool costs more than they do
int64_t grain(int64_t work_per_item, int64_t threshold = 1 << 15) {
  return std::max<int64_t>(1, threshold / std::max<int64_t>(1, work_per_item));
}

template <typename T>
void rms_norm_impl(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& out) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* x = xp + r * d;
      vfloat squares = {};
      for (int64_t c = 0; c < d; c += kLanes) {
        const vfloat v = loadn(x + c, d - c);
        squares += v * v;
      }
      const float inv = 1.0f / std::sqrt(hsum(squares) / static_cast<float>(d) + static_cast<float>(eps));
      // Llama's order: normalise in float32, round to the activation dtype, then multiply by the weight
      for (int64_t i = 0; i < d; ++i) op[r * d + i] = static_cast<T>(f32(wp[i]) * rnd<T>(f32(x[i]) * inv));
    }
  });
}

// half-split rotary: out = x1 c - x2 s | x2 c + x1 s, each product and the sum rounded as eager does them
template <typename T>
void rotary_impl(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  const int64_t t_n = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const T* xp = x.data_ptr<T>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, t_n, grain(heads * d), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cp + t * half;
      const float* s = sp + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        const T* xr = xp + t * xs0 + h * xs1;
        T* o = op + (t * heads + h) * d;
        for (int64_t i = 0; i < half; ++i) {
          const float ci = rnd<T>(c[i]), si = rnd<T>(s[i]);
          const float x1 = f32(xr[i]), x2 = f32(xr[i + half]);
          o[i] = static_cast<T>(rnd<T>(x1 * ci) - rnd<T>(x2 * si));
          o[i + half] = static_cast<T>(rnd<T>(x2 * ci) + rnd<T>(x1 * si));
        }
      }
    }
  });
}

// silu(gate) * up, rounded as eager's two ops round; the exp is fast_exp so the loop vectorizes
template <typename T>
void silu_and_mul_impl(const at::Tensor& gu, at::Tensor& out) {
  const int64_t width = out.size(-1), rows = out.numel() / width;
  const T* gp = gu.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = gp + r * 2 * width;
      const T* u = g + width;
      T* o = op + r * width;
      for (int64_t i = 0; i < width; ++i) {
        const float gi = f32(g[i]);
        o[i] = static_cast<T>(rnd<T>(gi / (1.0f + fast_exp(-gi))) * f32(u[i]));
      }
    }
  });
}

#ifndef MC_SHUFFLE2
#if defined(__clang__)
#define MC_SHUFFLE2(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
#else
#define MC_SHUFFLE2(x, y, ...) __builtin_shuffle(x, y, vint{__VA_ARGS__})
#endif
#endif

// out[t] = sum of a[t]'s lanes for 16 vectors at once: four rounds of pairing halves (30 shuffles, 15 adds)
// where sixteen separate hsums would take 64 of each
inline vfloat hsum16(const vfloat* a) {
  vfloat t[8], u[4], v[2];
  for (int k = 0; k < 8; ++k)  // [x 8 partials | y 8 partials]
    t[k] = MC_SHUFFLE2(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           MC_SHUFFLE2(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int k = 0; k < 4; ++k)  // four tokens x 4 partials
    u[k] = MC_SHUFFLE2(t[2 * k], t[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           MC_SHUFFLE2(t[2 * k], t[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int k = 0; k < 2; ++k)  // eight tokens x 2 partials
    v[k] = MC_SHUFFLE2(u[2 * k], u[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           MC_SHUFFLE2(u[2 * k], u[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return MC_SHUFFLE2(v[0], v[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         MC_SHUFFLE2(v[0], v[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// One sequence's K/V group when key and value widths are CH and VCH whole 16-lane chunks (64 or 128 for most
// models): rows, partial sums and accumulators then live in registers. Heads run one after another over row
// pointers found once per item (each row stays in L1 for the next head), so no per-token division either.
template <typename T, int CH, int VCH>
void attend_group(const T* q, int64_t per_group, const T* const* krows, const T* const* vrows, int64_t n,
                  float sc, float* scores, T* out) {
  for (int64_t j = 0; j < per_group; ++j) {
    vfloat qv[CH];
    for (int c = 0; c < CH; ++c) qv[c] = load16(q + j * CH * kLanes + c * kLanes);
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {  // sixteen keys, their sums reduced together
      vfloat dots[kLanes];
      for (int t = 0; t < kLanes; ++t) {
        dots[t] = qv[0] * load16(krows[i + t]);
        for (int c = 1; c < CH; ++c) dots[t] += qv[c] * load16(krows[i + t] + c * kLanes);
      }
      const vfloat r = sc * hsum16(dots);
      std::memcpy(scores + i, &r, sizeof r);
    }
    for (; i < n; ++i) {
      vfloat dot = qv[0] * load16(krows[i]);
      for (int c = 1; c < CH; ++c) dot += qv[c] * load16(krows[i] + c * kLanes);
      scores[i] = sc * hsum(dot);
    }
    const float inv = 1.0f / exp_shifted(scores, n);
    vfloat acc[VCH] = {};
    for (int64_t i = 0; i < n; ++i) {
      const float w = scores[i] * inv;
      for (int c = 0; c < VCH; ++c) acc[c] += w * load16(vrows[i] + c * kLanes);
    }
    T* o = out + j * VCH * kLanes;
    for (int c = 0; c < VCH; ++c)
      for (int l = 0; l < kLanes; ++l) o[c * kLanes + l] = static_cast<T>(acc[c][l]);
  }
}

template <typename T>
using GroupKernel = void (*)(const T*, int64_t, const T* const*, const T* const*, int64_t, float, float*, T*);

template <typename T, int CH>
GroupKernel<T> group_kernel_v(int64_t vch) {
  switch (vch) {
    case 4: return attend_group<T, CH, 4>;
    case 8: return attend_group<T, CH, 8>;
    default: return nullptr;
  }
}

// the register kernel for these widths, or nullptr (MLA's 576-wide latent rows, odd widths: the loop below)
template <typename T>
GroupKernel<T> group_kernel(int64_t dk, int64_t dv) {
  if (dk % kLanes || dv % kLanes) return nullptr;
  switch (dk / kLanes) {
    case 4: return group_kernel_v<T, 4>(dv / kLanes);
    case 8: return group_kernel_v<T, 8>(dv / kLanes);
    default: return nullptr;
  }
}

// Decode attention read straight from the paged cache: no gathered copy of K/V, no padding, no mask tensor.
// One work item is one sequence's K/V group: its h/g query heads share every K and V row they read.
// Scratch vectors for the general loop, 64-byte aligned by hand. Not std::vector<vfloat>: the vector type is
// one type in every copy of this file, its alignment differs between the copies' targets, and the one
// std::vector instantiation they share allocated at 16 bytes where the AVX-512 copy's stores need 64.
struct Lanes {
  explicit Lanes(size_t n) : p(static_cast<vfloat*>(std::aligned_alloc(64, std::max<size_t>(1, n) * 64))) {
    TORCH_CHECK(p != nullptr, "decode_attention: out of memory for scratch");
  }
  ~Lanes() { std::free(p); }
  Lanes(const Lanes&) = delete;
  Lanes& operator=(const Lanes&) = delete;
  vfloat& operator[](size_t i) { return p[i]; }
  vfloat* p;
};

template <typename T>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& kc, const T* vbase, int64_t dv,
                           const int64_t* vstr, const at::Tensor& tables, const at::Tensor& lens, double scale,
                           int64_t window, at::Tensor& out) {
  const int64_t seqs = q.size(0), heads = q.size(1), dk = q.size(2);
  const int64_t groups = kc.size(2), per_group = heads / groups, bs = kc.size(1);
  const int64_t ks0 = kc.stride(0), ks1 = kc.stride(1), ks2 = kc.stride(2);
  const T* qp = q.data_ptr<T>();
  const T* kp = kc.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  const int64_t tstride = tables.size(1);
  int64_t longest = 0;
  for (int64_t s = 0; s < seqs; ++s) longest = std::max(longest, lp[s]);
  T* op = out.data_ptr<T>();
  const float sc = static_cast<float>(scale);
  const GroupKernel<T> fast = group_kernel<T>(dk, dv);
  at::parallel_for(0, seqs * groups, grain(longest * per_group * (dk + dv)), [&](int64_t begin, int64_t end) {
    const int64_t chunks = (dk + kLanes - 1) / kLanes, vchunks = (dv + kLanes - 1) / kLanes;
    Lanes qv(per_group * chunks), dots(per_group), acc(per_group * vchunks);
    std::vector<float> scores;
    std::vector<const T*> krows, vrows;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / groups, g = item % groups, ctx = lp[s];
      const int64_t first = window > 0 ? std::max<int64_t>(0, ctx - window) : 0, n = ctx - first;
      if (fast != nullptr) {
        krows.resize(n);
        vrows.resize(n);
        for (int64_t p = first; p < ctx;) {  // block by block: one table lookup per block, not per token
          const int64_t block = tp[s * tstride + p / bs], end_p = std::min(ctx, (p / bs + 1) * bs);
          const T* k0 = kp + block * ks0 + g * ks2;
          const T* v0 = vbase + block * vstr[0] + g * vstr[2];
          for (; p < end_p; ++p) {
            krows[p - first] = k0 + (p % bs) * ks1;
            vrows[p - first] = v0 + (p % bs) * vstr[1];
          }
        }
        scores.resize(n);
        fast(qp + (s * heads + g * per_group) * dk, per_group, krows.data(), vrows.data(), n, sc, scores.data(),
             op + (s * heads + g * per_group) * dv);
        continue;
      }
      for (int64_t j = 0; j < per_group; ++j)
        for (int64_t c = 0; c < chunks; ++c)
          qv[j * chunks + c] = loadn(qp + (s * heads + g * per_group + j) * dk + c * kLanes, dk - c * kLanes);
      scores.assign(per_group * n, 0.0f);
      for (int64_t p = first; p < ctx; ++p) {  // every head of the group against one key row, read once
        const T* row = kp + tp[s * tstride + p / bs] * ks0 + (p % bs) * ks1 + g * ks2;
        for (int64_t j = 0; j < per_group; ++j) dots[j] = vfloat{};
        for (int64_t c = 0; c < chunks; ++c) {
          const vfloat kv = loadn(row + c * kLanes, dk - c * kLanes);
          for (int64_t j = 0; j < per_group; ++j) dots[j] += qv[j * chunks + c] * kv;
        }
        for (int64_t j = 0; j < per_group; ++j) scores[j * n + p - first] = sc * hsum(dots[j]);
      }
      for (int64_t j = 0; j < per_group; ++j) {  // softmax per head
        float* row = scores.data() + j * n;
        const float inv = 1.0f / exp_shifted(row, n);
        for (int64_t i = 0; i < n; ++i) row[i] *= inv;
      }
      for (int64_t i = 0; i < per_group * vchunks; ++i) acc[i] = vfloat{};
      for (int64_t p = first; p < ctx; ++p) {
        const T* row = vbase + tp[s * tstride + p / bs] * vstr[0] + (p % bs) * vstr[1] + g * vstr[2];
        for (int64_t c = 0; c < vchunks; ++c) {
          const vfloat vv = loadn(row + c * kLanes, dv - c * kLanes);
          for (int64_t j = 0; j < per_group; ++j) acc[j * vchunks + c] += scores[j * n + p - first] * vv;
        }
      }
      for (int64_t j = 0; j < per_group; ++j) {
        T* o = op + (s * heads + g * per_group + j) * dv;
        for (int64_t i = 0; i < dv; ++i) o[i] = static_cast<T>(acc[j * vchunks + i / kLanes][i % kLanes]);
      }
    }
  });
}

// Entry points, one per kernel, for the file that includes this one: dtype dispatch happens here so that the
// dtype-specialised loops are compiled for this copy's instruction set.
void rms_norm_run(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm",
                                  [&] { rms_norm_impl<scalar_t>(x, w, eps, out); });
}

void rotary_run(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary",
                                  [&] { rotary_impl<scalar_t>(x, cos, sin, out); });
}

void silu_and_mul_run(const at::Tensor& gu, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gu.scalar_type(), "silu_and_mul",
                                  [&] { silu_and_mul_impl<scalar_t>(gu, out); });
}

void decode_attention_run(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, int64_t dv,
                          const int64_t* vstr, const at::Tensor& tables, const at::Tensor& lens, double scale,
                          int64_t window, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    decode_attention_impl<scalar_t>(q, kc, vc.data_ptr<scalar_t>(), dv, vstr, tables, lens, scale, window, out);
  });
}
