// nablagrad/kernels/attention.h - fused scaled dot-product attention on raw pointers.
//
// Overview
//   For one (batch b, head h) block with queries Q (L x D), keys K (S x D), values V (S x Dv):
//     forward    X = Q K^T * scale (+ float masks, -inf where a boolean mask forbids or the
//                causal rule j > i cuts), P = softmax_rows(X), Pd = P o keep / (1 - p)
//                (dropout; Pd = P without it), O = Pd V
//     backward   dPd = dO V^T (+ dW, the gradient of the returned weights Pd)
//                dP  = dPd o keep / (1 - p)
//                dX  = P o (dP - rowsum(dP o P))          (softmax backward)
//                dQ  = dX K * scale, dK = dX^T Q * scale, dV = Pd^T dO
//   The products are kernels::gemm's packed micro-kernels, called on the calling thread
//   (gemm_serial); the caller parallelises over blocks. Rows are processed in chunks of
//   `attention_row_chunk(S)` queries so a chunk's scores stay in L2, and with the causal
//   rule a chunk only computes the key columns it can see (half the work for L == S).
//
// Operands are "head views": element (b, h, i, j) at ptr[b*sb + h*sh + i*sr + j] (unit
// column stride), so (N, H, L, D) tensors and the head-interleaved (N, L, H*D) projections of
// MultiheadAttention are read in place, without copies. Masks are broadcast views with
// arbitrary strides (0 along broadcast axes): boolean (`masked_value` says which value
// forbids attention) or float (added to the scaled scores).
//
// Fully masked rows: P is 0 (PyTorch's scaled_dot_product_attention) or NaN (PyTorch's
// MultiheadAttention with need_weights=True, which divides 0 by 0) by `empty_rows_nan`.
//
// Determinism: a block's arithmetic never depends on the thread count: chunks are fixed by
// S, reductions run in a fixed order, and dK/dV accumulate chunk by chunk in order.
#ifndef NABLAGRAD_KERNELS_ATTENTION_H
#define NABLAGRAD_KERNELS_ATTENTION_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "nablagrad/kernels/gemm.h"
#include "nablagrad/kernels/simd.h"

namespace nablagrad {
namespace kernels {

/// A (B, H, rows, cols) operand with unit column stride: element (b, h, i, j) is
/// ptr[b*sb + h*sh + i*sr + j].
template <typename T>
struct HeadView {
  T* ptr = nullptr;
  int64_t sb = 0, sh = 0, sr = 0;
  T* block(int64_t b, int64_t h) const { return ptr + b * sb + h * sh; }
};

/// A mask broadcast to (B, H, L, S): element (b, h, i, j) at ptr[b*sb + h*sh + i*sr + j*sc].
/// Boolean (`is_bool`, one byte per element): attention is forbidden where the value equals
/// `masked_value`. Float (of the attention's T): added to the scaled scores.
struct MaskView {
  const void* ptr = nullptr;
  bool is_bool = false;
  bool masked_value = false;
  int64_t sb = 0, sh = 0, sr = 0, sc = 0;
};

/// Sizes and options of one attention call.
struct AttentionConfig {
  int64_t B = 0, H = 0, L = 0, S = 0, D = 0, Dv = 0;  // batch, heads, queries, keys, q/k and v widths
  double scale = 1.0;        // multiplies q.k
  bool causal = false;       // query i sees keys j <= i (top-left aligned, as PyTorch)
  bool empty_rows_nan = false;
  double dropout_p = 0.0;    // with `keep` masks: kept weights are scaled by 1 / (1 - p)
  const MaskView* masks = nullptr;
  int num_masks = 0;
};

/// Queries per chunk: a chunk's scores (rows x S) fill about 128 KiB. Depends on S only.
template <typename T>
inline int64_t attention_row_chunk(int64_t S) {
  const int64_t rows = (int64_t{1} << 17) / static_cast<int64_t>(sizeof(T) * std::max<int64_t>(S, 1));
  return std::max<int64_t>(16, std::min<int64_t>(256, rows / 8 * 8));
}

/// Keys visible to the query rows [r0, r1): all S, or min(S, r1) under the causal rule.
inline int64_t attention_visible_keys(const AttentionConfig& c, int64_t r1) {
  return c.causal ? std::min(c.S, r1) : c.S;
}

/// gemm on the calling thread (the attention kernels run inside parallel regions): the same
/// arithmetic as kernels::gemm, without its thread split.
template <typename T>
inline void gemm_serial(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
                        int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  if (saturating_mul(saturating_mul(M, N), K) <= kGemmDirectThreshold) {
    gemm_reference(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, accumulate);
    return;
  }
  gemm_detail::gemm_block(gemm_detail::gemm_config<T>(), 0, M, 0, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc,
                          accumulate, static_cast<const T*>(nullptr));
}

namespace attention_detail {

inline gemm_detail::AlignedBuffer& scratch_buffer(int which) {
  static thread_local gemm_detail::AlignedBuffer buffers[3];
  return buffers[which];
}

// ---------------------------------------------------------------------------------------
// Row kernels. Portable versions first; AVX2 float versions below, chosen at run time.
// ---------------------------------------------------------------------------------------

/// x[0:n] *= scale; returns the max (-inf for n == 0).
template <typename T>
inline T scale_max_portable(T* x, int64_t n, T scale) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    x[j] *= scale;
    m = std::max(m, x[j]);
  }
  return m;
}

/// x[j] = exp(x[j] - m); returns the sum (in order).
template <typename T>
inline T exp_sum_portable(T* x, int64_t n, T m) {
  T s = T(0);
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

/// sum_j a[j] * b[j], in order.
template <typename T>
inline T dot_portable(const T* a, const T* b, int64_t n) {
  T s = T(0);
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

#if NABLAGRAD_X86
/// exp of 8 floats (Cephes polynomial, ~2 ulp); exactly 0 below -87.33 and for -inf.
__attribute__((target("avx2,fma"))) inline __m256 exp256_ps(__m256 x) {
  const __m256 lo_ok = _mm256_cmp_ps(x, _mm256_set1_ps(-87.336544f), _CMP_GE_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.336544f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), lo_ok);
}

__attribute__((target("avx2,fma"))) inline float hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline float scale_max_avx2(float* x, int64_t n, float scale) {
  const __m256 sv = _mm256_set1_ps(scale);
  __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), sv);
    _mm256_storeu_ps(x + j, v);
    mv = _mm256_max_ps(mv, v);
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  float m = _mm_cvtss_f32(m4);
  for (; j < n; ++j) {
    x[j] *= scale;
    m = std::max(m, x[j]);
  }
  return m;
}

__attribute__((target("avx2,fma"))) inline float exp_sum_avx2(float* x, int64_t n, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sv = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    _mm256_storeu_ps(x + j, e);
    sv = _mm256_add_ps(sv, e);
  }
  if (j < n) {  // the tail through the same vector exp (masked load/store)
    alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t r = n - j;
    for (int64_t t = 0; t < 8; ++t) tail[t] = t < r ? x[j + t] : -std::numeric_limits<float>::infinity();
    const __m256 e = exp256_ps(_mm256_sub_ps(_mm256_load_ps(tail), mv));
    _mm256_store_ps(tail, e);
    for (int64_t t = 0; t < r; ++t) x[j + t] = tail[t];
    sv = _mm256_add_ps(sv, e);
  }
  return hsum256_ps(sv);
}

__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
  }
  for (; j + 8 <= n; j += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
  float s = hsum256_ps(_mm256_add_ps(s0, s1));
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

/// y[j] = p[j] * (y[j] - d) * scale.
__attribute__((target("avx2,fma"))) inline void softmax_grad_avx2(const float* p, float* y, int64_t n, float d,
                                                                  float scale) {
  const __m256 dv = _mm256_set1_ps(d), sv = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p + j), _mm256_sub_ps(_mm256_loadu_ps(y + j), dv)), sv);
    _mm256_storeu_ps(y + j, v);
  }
  for (; j < n; ++j) y[j] = p[j] * (y[j] - d) * scale;
}
#endif  // NABLAGRAD_X86

template <typename T>
inline T scale_max(T* x, int64_t n, T scale) {
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value)
    if (simd_at_least(SimdLevel::AVX2)) return scale_max_avx2(x, n, scale);
#endif
  return scale_max_portable(x, n, scale);
}

template <typename T>
inline T exp_sum(T* x, int64_t n, T m) {
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value)
    if (simd_at_least(SimdLevel::AVX2)) return exp_sum_avx2(x, n, m);
#endif
  return exp_sum_portable(x, n, m);
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value)
    if (simd_at_least(SimdLevel::AVX2)) return dot_avx2(a, b, n);
#endif
  return dot_portable(a, b, n);
}

template <typename T>
inline void softmax_grad(const T* p, T* y, int64_t n, T d, T scale) {
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value)
    if (simd_at_least(SimdLevel::AVX2)) {
      softmax_grad_avx2(p, y, n, d, scale);
      return;
    }
#endif
  for (int64_t j = 0; j < n; ++j) y[j] = p[j] * (y[j] - d) * scale;
}

/// Applies the masks to the scaled scores x[0:n] of query row i of block (b, h).
template <typename T>
inline void apply_masks(const AttentionConfig& c, int64_t b, int64_t h, int64_t i, T* x, int64_t n) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int k = 0; k < c.num_masks; ++k) {
    const MaskView& m = c.masks[k];
    const int64_t base = b * m.sb + h * m.sh + i * m.sr;
    if (m.is_bool) {
      const bool* pm = static_cast<const bool*>(m.ptr) + base;
      const bool bad = m.masked_value;
      for (int64_t j = 0; j < n; ++j)
        if (pm[j * m.sc] == bad) x[j] = neg_inf;
    } else {
      const T* pm = static_cast<const T*>(m.ptr) + base;
      for (int64_t j = 0; j < n; ++j) x[j] += pm[j * m.sc];
    }
  }
}

}  // namespace attention_detail

/// Forward of query rows [r0, r1) of block (b, h).
///   q, k, v, out : head views (out: rows of O, width Dv)
///   keep         : dropout keep flags of this block, (L, S) row-major, or nullptr
///   P, ldp       : where the softmax rows go (row i at P + (i - r0) * ldp), ldp >= visible keys;
///                  columns past the visible keys are zeroed up to `p_cols` (S when stored, so
///                  saved weights are full rows)
///   Pd, ldpd     : where the dropped weights go when dropout is on (may alias scratch)
template <typename T>
inline void attention_forward_rows(const AttentionConfig& c, int64_t b, int64_t h, int64_t r0, int64_t r1,
                                   const HeadView<const T>& q, const HeadView<const T>& k,
                                   const HeadView<const T>& v, const HeadView<T>& out, const bool* keep, T* P,
                                   int64_t ldp, int64_t p_cols, T* Pd, int64_t ldpd) {
  using namespace attention_detail;
  const int64_t R = r1 - r0, Sn = attention_visible_keys(c, r1);
  const T* qb = q.block(b, h) + r0 * q.sr;
  const T* kb = k.block(b, h);
  const T* vb = v.block(b, h);
  T* ob = out.block(b, h) + r0 * out.sr;
  // X = Q K^T (scaled in the row pass below).
  gemm_serial<T>(R, Sn, c.D, qb, q.sr, 1, kb, 1, k.sr, P, ldp, false);
  const T scale = static_cast<T>(c.scale);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inv_keep = c.dropout_p < 1.0 ? static_cast<T>(1.0 / (1.0 - c.dropout_p)) : T(0);
  const int64_t zero_to = std::max(Sn, p_cols);  // masked-out tail of each row, zeroed
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = r0 + r;
    T* x = P + r * ldp;
    const int64_t n = c.causal ? std::min(Sn, i + 1) : Sn;  // keys this query may see
    T m;
    if (c.num_masks == 0) {
      m = scale_max(x, n, scale);
    } else {
      for (int64_t j = 0; j < n; ++j) x[j] *= scale;
      apply_masks(c, b, h, i, x, n);
      m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
    }
    if (m == -std::numeric_limits<T>::infinity() || std::isnan(m)) {
      // No key allowed (or NaN scores): 0 (SDPA) or NaN (0/0, MultiheadAttention's weights path).
      const T fillv = (c.empty_rows_nan || std::isnan(m)) ? nan : T(0);
      std::fill(x, x + n, fillv);
    } else {
      const T s = exp_sum(x, n, m);
      const T inv = T(1) / s;
      for (int64_t j = 0; j < n; ++j) x[j] *= inv;
    }
    std::fill(x + n, x + zero_to, T(0));
    if (keep != nullptr) {
      const bool* kr = keep + i * c.S;
      T* y = Pd + r * ldpd;
      for (int64_t j = 0; j < n; ++j) y[j] = kr[j] ? x[j] * inv_keep : T(0);
      std::fill(y + n, y + zero_to, T(0));
    }
  }
  // O = Pd V
  const T* W = keep != nullptr ? Pd : P;
  const int64_t ldw = keep != nullptr ? ldpd : ldp;
  gemm_serial<T>(R, c.Dv, Sn, W, ldw, 1, vb, v.sr, 1, ob, out.sr, false);
}

/// Forward of a whole (b, h) block in row chunks.
///   P_block : (L, S) row-major storage for the softmax P (saved for backward), or nullptr
///   W_block : (L, S) storage for the returned weights Pd, or nullptr; when there is no
///             dropout and P_block is set, pass W_block == P_block (one buffer)
///   keep    : (L, S) dropout keep flags of this block, or nullptr
///   avg, avg_scale : when avg is set, avg[i, j] += Pd[i, j] * avg_scale (head-averaged weights;
///             the caller loops over heads in order, starting from zeros)
template <typename T>
void attention_forward_block(const AttentionConfig& c, int64_t b, int64_t h, int64_t r0, int64_t r1,
                             const HeadView<const T>& q, const HeadView<const T>& k, const HeadView<const T>& v,
                             const HeadView<T>& out, const bool* keep, T* P_block, T* W_block, T* avg,
                             T avg_scale) {
  using namespace attention_detail;
  const int64_t chunk = attention_row_chunk<T>(c.S);
  for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
    const int64_t c1 = std::min(r1, c0 + chunk);
    const int64_t R = c1 - c0, Sn = attention_visible_keys(c, c1);
    T* P;
    int64_t ldp, p_cols;
    if (P_block != nullptr) {
      P = P_block + c0 * c.S;
      ldp = c.S;
      p_cols = c.S;
    } else if (W_block != nullptr && keep == nullptr) {
      P = W_block + c0 * c.S;
      ldp = c.S;
      p_cols = c.S;
    } else {
      P = static_cast<T*>(scratch_buffer(0).get(sizeof(T) * static_cast<size_t>(std::max<int64_t>(1, R * Sn))));
      ldp = std::max<int64_t>(Sn, 1);
      p_cols = 0;
    }
    T* Pd = nullptr;
    int64_t ldpd = 0;
    if (keep != nullptr) {
      if (W_block != nullptr) {
        Pd = W_block + c0 * c.S;
        ldpd = c.S;
      } else {
        Pd = static_cast<T*>(scratch_buffer(1).get(sizeof(T) * static_cast<size_t>(std::max<int64_t>(1, R * Sn))));
        ldpd = std::max<int64_t>(Sn, 1);
      }
    }
    attention_forward_rows<T>(c, b, h, c0, c1, q, k, v, out, keep, P, ldp, p_cols, Pd, ldpd);
    if (avg != nullptr) {
      const T* W = keep != nullptr ? Pd : P;
      const int64_t ldw = keep != nullptr ? ldpd : ldp;
      for (int64_t r = 0; r < R; ++r) {
        T* a = avg + (c0 + r) * c.S;
        const T* w = W + r * ldw;
        for (int64_t j = 0; j < Sn; ++j) a[j] += w[j] * avg_scale;
      }
    }
  }
}

/// Backward of block (b, h).
///   P_block  : the saved softmax P (L, S)
///   keep     : dropout keep flags (L, S) or nullptr
///   dO       : head view of the output gradient
///   dW, dw_scale : gradient of the returned weights, (L, S) row-major for this block, scaled
///              by dw_scale (1 / H for head-averaged weights), or nullptr
///   dq, dk, dv : head views to write (each may be null: ptr == nullptr)
template <typename T>
void attention_backward_block(const AttentionConfig& c, int64_t b, int64_t h, const HeadView<const T>& q,
                              const HeadView<const T>& k, const HeadView<const T>& v, const T* P_block,
                              const bool* keep, const HeadView<const T>& dO, const T* dW, T dw_scale,
                              const HeadView<T>& dq, const HeadView<T>& dk, const HeadView<T>& dv) {
  using namespace attention_detail;
  const T* qb = q.block(b, h);
  const T* kb = k.block(b, h);
  const T* vb = v.block(b, h);
  const T* gob = dO.block(b, h);
  T* dqb = dq.ptr ? dq.block(b, h) : nullptr;
  T* dkb = dk.ptr ? dk.block(b, h) : nullptr;
  T* dvb = dv.ptr ? dv.block(b, h) : nullptr;
  // dK and dV accumulate over the row chunks: start from zero.
  if (dkb)
    for (int64_t j = 0; j < c.S; ++j) std::fill(dkb + j * dk.sr, dkb + j * dk.sr + c.D, T(0));
  if (dvb)
    for (int64_t j = 0; j < c.S; ++j) std::fill(dvb + j * dv.sr, dvb + j * dv.sr + c.Dv, T(0));
  const T scale = static_cast<T>(c.scale);
  const T inv_keep = c.dropout_p < 1.0 ? static_cast<T>(1.0 / (1.0 - c.dropout_p)) : T(0);
  const int64_t chunk = attention_row_chunk<T>(c.S);
  for (int64_t r0 = 0; r0 < c.L; r0 += chunk) {
    const int64_t r1 = std::min(c.L, r0 + chunk);
    const int64_t R = r1 - r0, Sn = attention_visible_keys(c, r1);
    if (Sn == 0) {
      if (dqb)
        for (int64_t r = r0; r < r1; ++r) std::fill(dqb + r * dq.sr, dqb + r * dq.sr + c.D, T(0));
      continue;
    }
    const int64_t ld = Sn;
    T* G = static_cast<T*>(scratch_buffer(0).get(sizeof(T) * static_cast<size_t>(R * Sn)));
    T* Pd = nullptr;
    const T* P = P_block + r0 * c.S;
    // dPd = dO V^T (+ dW)
    gemm_serial<T>(R, Sn, c.Dv, gob + r0 * dO.sr, dO.sr, 1, vb, 1, v.sr, G, ld, false);
    if (dW != nullptr)
      for (int64_t r = 0; r < R; ++r) {
        const T* w = dW + (r0 + r) * c.S;
        T* g = G + r * ld;
        for (int64_t j = 0; j < Sn; ++j) g[j] += w[j] * dw_scale;
      }
    if (keep != nullptr) {
      Pd = static_cast<T*>(scratch_buffer(1).get(sizeof(T) * static_cast<size_t>(R * Sn)));
      for (int64_t r = 0; r < R; ++r) {
        const bool* kr = keep + (r0 + r) * c.S;
        const T* p = P + r * c.S;
        T* g = G + r * ld;
        T* pd = Pd + r * ld;
        for (int64_t j = 0; j < Sn; ++j) {
          const T f = kr[j] ? inv_keep : T(0);
          g[j] *= f;
          pd[j] = p[j] * f;
        }
      }
    }
    // dX = P o (dP - rowsum(dP o P)), times scale (folded in here once for dQ and dK).
    for (int64_t r = 0; r < R; ++r) {
      const T* p = P + r * c.S;
      T* g = G + r * ld;
      const T d = dot(g, p, Sn);
      softmax_grad(p, g, Sn, d, scale);
    }
    if (dqb) gemm_serial<T>(R, c.D, Sn, G, ld, 1, kb, k.sr, 1, dqb + r0 * dq.sr, dq.sr, false);
    if (dkb) gemm_serial<T>(Sn, c.D, R, G, 1, ld, qb + r0 * q.sr, q.sr, 1, dkb, dk.sr, true);
    if (dvb) {
      const T* W = keep != nullptr ? Pd : P;
      const int64_t ldw = keep != nullptr ? ld : c.S;
      gemm_serial<T>(Sn, c.Dv, R, W, 1, ldw, gob + r0 * dO.sr, dO.sr, 1, dvb, dv.sr, true);
    }
  }
}

// The entry points compiled once per program (NABLAGRAD_EXTERN_KERNEL_INSTANCES, gemm.h).
#define NABLAGRAD_ATTENTION_INSTANCES(PREFIX, T)                                                               \
  PREFIX void attention_forward_block<T>(const AttentionConfig&, int64_t, int64_t, int64_t, int64_t,           \
                                         const HeadView<const T>&, const HeadView<const T>&,                   \
                                         const HeadView<const T>&, const HeadView<T>&, const bool*, T*, T*, T*, \
                                         T);                                                                   \
  PREFIX void attention_backward_block<T>(const AttentionConfig&, int64_t, int64_t, const HeadView<const T>&,  \
                                          const HeadView<const T>&, const HeadView<const T>&, const T*,         \
                                          const bool*, const HeadView<const T>&, const T*, T, const HeadView<T>&, \
                                          const HeadView<T>&, const HeadView<T>&);
NABLAGRAD_EXTERN_KERNEL_INSTANCES(NABLAGRAD_ATTENTION_INSTANCES)

}  // namespace kernels
}  // namespace nablagrad

#endif  // NABLAGRAD_KERNELS_ATTENTION_H
