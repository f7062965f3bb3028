// nablagrad/kernels/rnn.h - fused recurrent layers (Elman RNN, LSTM, GRU): raw forward and
// backward through time on pointers, no graph (ops/rnn.h records them).
//
// Overview
//   One call runs one layer over a whole batch-first sequence x (N, T, I):
//
//     kernels::RnnDims d{N, T, I, H};
//     kernels::RnnWeights<float> w{w_ih, w_hh, b_ih, b_hh};  // biases may be null
//     kernels::rnn_layer_forward<float>(kernels::RnnMode::Lstm, d, x, h0, c0, w,
//                                       out, h_n, c_n, saved_gates, saved_cells);
//
//   Layouts (all row-major, contiguous): x (N,T,I), out (N,T,H), h0/c0/h_n/c_n (N,H),
//   w_ih (G*H, I), w_hh (G*H, H), b_ih/b_hh (G*H) with G = 1 (RNN), 4 (LSTM: gates
//   i, f, g, o), 3 (GRU: r, z, n), PyTorch's layouts.
//
// How the forward works
//   1. All input projections at once: Gx = x W_ih^T (one GEMM over N*T rows; the GRU's
//      starts from b_ih, the other cells add b_ih + b_hh in the cell).
//   2. W_hh^T is packed once into GEMM panels (PackedRhs); each step t runs
//      Gx[:, t] += h_{t-1} W_hh^T on the packed panels (no per-step repacking), then the
//      fused cell (vectorised sigmoid/tanh) over the batch rows. Batch rows are independent
//      sequences, so threads take a share of the rows each and run the whole time loop
//      (one parallel region, no barrier per step); with fewer than two rows per thread the
//      threads split each step's product by columns instead (split_rows()).
//   What the backward needs is saved as it goes: LSTM the activated gates (i, f, g, o) and
//   (c_t, tanh c_t); GRU (r, z, n, W_hn h + b_hn); RNN nothing but the output.
//
// How the backward works (backward through time, beside the forward)
//   Walking t = T-1 .. 0 it forms the gate gradients dG_t (N, G*H) of every step from the
//   saved values (the recurrences and their derivatives are in docs/layers.md), and
//   dh_{t-1} = dG_t W_hh (a GEMM on W_hh packed once). The weight gradients are then one
//   GEMM each over all N*T rows: dW_ih = dG^T x, dW_hh = dG^T [h_0 .. h_{T-1}] (formed
//   transposed, x^T dG, so that dG is packed along its rows), and
//   dx = dG W_ih; bias gradients are column sums of dG.
//
// Determinism
//   Every GEMM splits its rows/columns over threads, never the sum over k (and a row's or
//   column's result does not depend on the split), the fused cells are elementwise, and
//   column sums run rows in order. Results are bitwise identical for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "nablagrad/kernels/gemm.h"
#include "nablagrad/kernels/simd.h"
#include "nablagrad/kernels/vmath.h"
#include "nablagrad/threading.h"

namespace nablagrad {
namespace kernels {

/// The cell type of a recurrent layer.
enum class RnnMode { RnnTanh, RnnRelu, Lstm, Gru };

/// Number of gate blocks G in the stacked weights (G*H rows).
inline int64_t rnn_gate_count(RnnMode mode) {
  return mode == RnnMode::Lstm ? 4 : mode == RnnMode::Gru ? 3 : 1;
}

/// Sizes of one layer: batch N, steps T, input features I, hidden size H.
struct RnnDims {
  int64_t N, T, I, H;
};

/// The parameters of one layer (PyTorch layouts); b_ih / b_hh may be null (no bias).
template <typename T>
struct RnnWeights {
  const T* w_ih;  // (G*H, I)
  const T* w_hh;  // (G*H, H)
  const T* b_ih;  // (G*H) or null
  const T* b_hh;  // (G*H) or null
};

/// Sizes (in elements) of the buffers the forward saves for the backward.
inline int64_t rnn_saved_gates_size(RnnMode mode, const RnnDims& d) {
  if (mode == RnnMode::Lstm || mode == RnnMode::Gru) return d.N * d.T * 4 * d.H;  // LSTM i,f,g,o; GRU r,z,n,hn
  return 0;
}
inline int64_t rnn_saved_cells_size(RnnMode mode, const RnnDims& d) {
  return mode == RnnMode::Lstm ? d.N * d.T * 2 * d.H : 0;  // c_t and tanh(c_t)
}

namespace rnn_detail {

/// Uninitialised scratch array (no zero fill: every element is written before it is read).
template <typename T>
inline std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// ---------------------------------------------------------------------------------------
// Activations on arrays. float on AVX2: a Cephes-style exp (relative error ~1e-7); every
// element goes through the same vector code (the tail is padded), so a result never depends
// on where a thread's chunk starts. double and the portable path use <cmath>.
// ---------------------------------------------------------------------------------------
template <typename T>
inline T sigmoid_scalar(T v) {
  return v >= T(0) ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v));
}

#if NABLAGRAD_X86
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  // NaN passes through: max/min return their second operand when one is NaN.
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i n = _mm256_cvttps_epi32(fx);
  n = _mm256_add_epi32(n, _mm256_set1_epi32(127));
  n = _mm256_slli_epi32(n, 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

__attribute__((target("avx2,fma"))) inline __m256 sigmoid_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

__attribute__((target("avx2,fma"))) inline __m256 tanh_avx2(__m256 x) {
  // tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) <= 1, sign restored.
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 ax = _mm256_andnot_ps(sign, x);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp_avx2(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0f)));
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
  return _mm256_or_ps(t, _mm256_and_ps(sign, x));
}

template <__m256 (*F)(__m256)>
__attribute__((target("avx2,fma"))) inline void apply_avx2(float* p, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, F(_mm256_loadu_ps(p + i)));
  if (i < n) {
    alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = i; k < n; ++k) tail[k - i] = p[k];
    _mm256_store_ps(tail, F(_mm256_load_ps(tail)));
    for (int64_t k = i; k < n; ++k) p[k] = tail[k - i];
  }
}
#endif  // NABLAGRAD_X86

/// p[0:n] = sigmoid(p[0:n]).
template <typename T>
inline void sigmoid_inplace(T* p, int64_t n) {
#if NABLAGRAD_X86
  if (std::is_same<T, float>::value && simd_at_least(SimdLevel::AVX2)) {
    apply_avx2<sigmoid_avx2>(reinterpret_cast<float*>(p), n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) p[i] = sigmoid_scalar(p[i]);
}

/// p[0:n] = tanh(p[0:n]).
template <typename T>
inline void tanh_inplace(T* p, int64_t n) {
#if NABLAGRAD_X86
  if (std::is_same<T, float>::value && simd_at_least(SimdLevel::AVX2)) {
    apply_avx2<tanh_avx2>(reinterpret_cast<float*>(p), n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) p[i] = std::tanh(p[i]);
}

// ---------------------------------------------------------------------------------------
// float LSTM cells at the AVX-512 level: one pass over a batch row, 16 hidden units at a
// time, with vmath's sigmoid / tanh (the same code as its AVX2 level). The tail runs the same
// vector code on zero-padded copies, so every element's arithmetic is the same whatever H.
// The products are written without FMA (mul, then add), like the scalar code.
// ---------------------------------------------------------------------------------------
#if NABLAGRAD_VMATH_AVX2
// No FMA contraction of the mul / add intrinsics, for the reason given in vmath.h.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#define NABLAGRAD_RNN_AVX512 __attribute__((target("avx512f,avx2,fma"))) inline

/// Forward, 16 units: activations i, f, g, o over their pre-activations plus the bias b (4
/// gate blocks H apart; in place), then c = f c_prev + i g, tc = tanh c, h = o tc.
NABLAGRAD_RNN_AVX512 void lstm_forward16(float* gi, float* gf, float* gg, float* go, const float* b, int64_t H,
                                         const float* cp, float* c, float* tc, float* h) {
  using namespace vmath_detail;
  const __m512 i = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gi), _mm512_loadu_ps(b)));
  const __m512 f = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gf), _mm512_loadu_ps(b + H)));
  const __m512 g = tanh16(_mm512_add_ps(_mm512_loadu_ps(gg), _mm512_loadu_ps(b + 2 * H)));
  const __m512 o = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(go), _mm512_loadu_ps(b + 3 * H)));
  const __m512 cv = _mm512_add_ps(_mm512_mul_ps(f, _mm512_loadu_ps(cp)), _mm512_mul_ps(i, g));
  const __m512 t = tanh16(cv);
  _mm512_storeu_ps(gi, i), _mm512_storeu_ps(gf, f), _mm512_storeu_ps(gg, g), _mm512_storeu_ps(go, o);
  _mm512_storeu_ps(c, cv), _mm512_storeu_ps(tc, t), _mm512_storeu_ps(h, _mm512_mul_ps(o, t));
}

/// The forward cell of one batch row: g (4H) pre-activations (without the bias) + bias (4H)
/// -> activations, c_prev (H) -> cell (H), tc (H), h (H). cell may alias c_prev (inference
/// updates the state in place).
NABLAGRAD_RNN_AVX512 void lstm_forward_row_avx512(int64_t H, float* g, const float* bias, const float* c_prev,
                                                  float* cell, float* tc, float* h) {
  int64_t j = 0;
  for (; j + 16 <= H; j += 16)
    lstm_forward16(g + j, g + H + j, g + 2 * H + j, g + 3 * H + j, bias + j, H, c_prev + j, cell + j, tc + j, h + j);
  if (j < H) {
    alignas(64) float b[12][16] = {};
    const size_t bytes = sizeof(float) * static_cast<size_t>(H - j);
    for (int q = 0; q < 4; ++q) std::memcpy(b[q], g + q * H + j, bytes);
    for (int q = 0; q < 4; ++q) std::memcpy(b[8 + q], bias + q * H + j, bytes);
    std::memcpy(b[4], c_prev + j, bytes);
    lstm_forward16(b[0], b[1], b[2], b[3], b[8], 16, b[4], b[5], b[6], b[7]);
    for (int q = 0; q < 4; ++q) std::memcpy(g + q * H + j, b[q], bytes);
    std::memcpy(cell + j, b[5], bytes), std::memcpy(tc + j, b[6], bytes), std::memcpy(h + j, b[7], bytes);
  }
}

/// Backward, 16 units: from dh (incoming, plus d_out), dc, the saved gates and cells, the gate
/// gradients dgi..dgo and the new dc (in place); the same expressions as the scalar loop.
NABLAGRAD_RNN_AVX512 void lstm_backward16(const float* dh, const float* dout, float* dc, const float* gi,
                                          const float* gf, const float* gg, const float* go, const float* tc,
                                          const float* cp, float* dgi, float* dgf, float* dgg, float* dgo) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 dht = _mm512_loadu_ps(dh);
  if (dout) dht = _mm512_add_ps(dht, _mm512_loadu_ps(dout));
  const __m512 i = _mm512_loadu_ps(gi), f = _mm512_loadu_ps(gf), g = _mm512_loadu_ps(gg), o = _mm512_loadu_ps(go);
  const __m512 t = _mm512_loadu_ps(tc);
  const __m512 dct = _mm512_add_ps(_mm512_loadu_ps(dc),
                                   _mm512_mul_ps(_mm512_mul_ps(dht, o), _mm512_sub_ps(one, _mm512_mul_ps(t, t))));
  _mm512_storeu_ps(dgi, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, g), i), _mm512_sub_ps(one, i)));
  _mm512_storeu_ps(dgf, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, _mm512_loadu_ps(cp)), f), _mm512_sub_ps(one, f)));
  _mm512_storeu_ps(dgg, _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_sub_ps(one, _mm512_mul_ps(g, g))));
  _mm512_storeu_ps(dgo, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dht, t), o), _mm512_sub_ps(one, o)));
  _mm512_storeu_ps(dc, _mm512_mul_ps(dct, f));
}

/// The backward cell of one batch row (s: saved gates 4H, cell: saved c and tanh c 2H).
NABLAGRAD_RNN_AVX512 void lstm_backward_row_avx512(int64_t H, const float* dh, const float* dout, float* dc,
                                                   const float* s, const float* tc, const float* cp, float* dg) {
  int64_t j = 0;
  for (; j + 16 <= H; j += 16)
    lstm_backward16(dh + j, dout ? dout + j : nullptr, dc + j, s + j, s + H + j, s + 2 * H + j, s + 3 * H + j,
                    tc + j, cp + j, dg + j, dg + H + j, dg + 2 * H + j, dg + 3 * H + j);
  if (j < H) {
    alignas(64) float b[13][16] = {};
    const size_t bytes = sizeof(float) * static_cast<size_t>(H - j);
    std::memcpy(b[0], dh + j, bytes);
    if (dout) std::memcpy(b[1], dout + j, bytes);
    std::memcpy(b[2], dc + j, bytes);
    for (int q = 0; q < 4; ++q) std::memcpy(b[3 + q], s + q * H + j, bytes);
    std::memcpy(b[7], tc + j, bytes), std::memcpy(b[8], cp + j, bytes);
    lstm_backward16(b[0], dout ? b[1] : nullptr, b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12]);
    std::memcpy(dc + j, b[2], bytes);
    for (int q = 0; q < 4; ++q) std::memcpy(dg + q * H + j, b[9 + q], bytes);
  }
}
#undef NABLAGRAD_RNN_AVX512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif  // NABLAGRAD_VMATH_AVX2

/// Column sums: out[j] = sum over rows r (ascending) of A[r*cols + j]. Columns are split
/// over threads; each column's sum has a fixed order.
template <typename T>
inline void column_sums(int64_t rows, int64_t cols, const T* A, T* out) {
  const int64_t grain = std::max<int64_t>(64, (int64_t{1} << 16) / std::max<int64_t>(rows, 1));
  parallel_for(0, cols, grain, [&](int64_t j0, int64_t j1) {
    T* o = out + j0;
    const int64_t w = j1 - j0;
    for (int64_t j = 0; j < w; ++j) o[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* a = A + r * cols + j0;
      for (int64_t j = 0; j < w; ++j) o[j] += a[j];
    }
  });
}

/// dst (cols x rows) = the transpose of src (rows x cols), both row-major; 32 x 32 blocks.
template <typename T>
inline void transpose_into(int64_t rows, int64_t cols, const T* src, T* dst) {
  constexpr int64_t kB = 32;
  for (int64_t i0 = 0; i0 < rows; i0 += kB)
    for (int64_t j0 = 0; j0 < cols; j0 += kB) {
      const int64_t i1 = std::min(rows, i0 + kB), j1 = std::min(cols, j0 + kB);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
}

/// bias_a + bias_b, `cols` values (either may be null: zeros).
template <typename T>
inline std::vector<T> summed_bias(int64_t cols, const T* bias_a, const T* bias_b) {
  std::vector<T> b(static_cast<size_t>(cols), T(0));
  for (int64_t j = 0; j < cols; ++j) {
    if (bias_a) b[static_cast<size_t>(j)] = bias_a[j];
    if (bias_b) b[static_cast<size_t>(j)] += bias_b[j];
  }
  return b;
}

/// Rows of `rows` x `cols`: each row = bias_a + bias_b (either may be null: zeros).
template <typename T>
inline void fill_rows_with_bias(int64_t rows, int64_t cols, const T* bias_a, const T* bias_b, T* out) {
  const std::vector<T> b = summed_bias(cols, bias_a, bias_b);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * cols, b.data(), sizeof(T) * static_cast<size_t>(cols));
}

/// Rows handed to one thread by the fused cells: about `target` gate elements per chunk.
inline int64_t cell_grain(int64_t row_elems) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(row_elems, 1));
}

/// Whether the time loop splits the batch rows among threads (each thread runs every step for
/// its rows) rather than splitting each step's product. Either way every element is computed
/// by the same arithmetic, so the choice never changes a result.
inline bool split_rows(int64_t N) {
  const int64_t threads = get_num_threads();
  return threads <= 1 || N >= 2 * threads;
}

/// The row count of each step's recurrent product: a thread's share of the batch when the
/// rows are split (when the shares differ, -1: the general tile), else the whole batch.
inline int64_t step_rows(int64_t N) {
  if (!split_rows(N)) return N;
  const int64_t threads = std::min<int64_t>(get_num_threads(), N);
  return N % threads == 0 ? N / threads : -1;
}

}  // namespace rnn_detail

/// The right operand B (K x Ncols) of many products A*B, packed once into the GEMM's panel
/// layout, so a recurrent step multiplies without repacking the weights. Same arithmetic
/// per element as gemm's packed path (same K slices, micro-kernel and order), and
/// deterministic for any thread count (threads split the columns).
template <typename T>
class PackedRhs {
 public:
  /// B(k, j) = B[k*b_rs + j*b_cs]; `rows`: the row count of the products to come, when all
  /// have the same (it picks the register tile, never the result), or -1.
  PackedRhs(int64_t K, int64_t ncols, const T* B, int64_t b_rs, int64_t b_cs, int64_t rows = -1)
      : cfg_(gemm_detail::gemm_config_rows<T>(rows)), K_(K), ncols_(ncols) {
    kc_ = K > 0 ? gemm_detail::k_slice_depth(K, cfg_.KC) : 0;
    panels_ = (ncols + cfg_.NR - 1) / cfg_.NR;
    int64_t total = 0;
    for (int64_t pc = 0; pc < K; pc += kc_) {
      offsets_.push_back(total);
      total += panels_ * cfg_.NR * std::min(kc_, K - pc);
    }
    buffer_ = std::make_unique<gemm_detail::AlignedBuffer>();
    data_ = static_cast<T*>(buffer_->get(sizeof(T) * static_cast<size_t>(std::max<int64_t>(total, 1))));
    size_t s = 0;
    for (int64_t pc = 0; pc < K; pc += kc_, ++s)
      gemm_detail::pack_b(std::min(kc_, K - pc), ncols, B + pc * b_rs, b_rs, b_cs, cfg_.NR, data_ + offsets_[s]);
  }

  /// C[M, Ncols] (leading dimension ldc) = (accumulate ? C : 0) + A[M, K] * B,
  /// A(i, k) = A[i*a_rs + k*a_cs]. Threads split the columns.
  void multiply(int64_t M, const T* A, int64_t a_rs, int64_t a_cs, T* C, int64_t ldc, bool accumulate) const {
    if (M <= 0 || ncols_ <= 0) return;
    const int64_t per_panel = saturating_mul(saturating_mul(M, cfg_.NR), std::max<int64_t>(K_, 1));
    const int64_t grain = std::max<int64_t>(1, ((int64_t{1} << 17) + per_panel - 1) / per_panel);
    parallel_for(0, panels_, grain, [&](int64_t p0, int64_t p1) {
      multiply_panels(M, A, a_rs, a_cs, C, ldc, accumulate, p0, p1);
    });
  }

  /// The same on the calling thread only (for a caller that already split the rows).
  void multiply_serial(int64_t M, const T* A, int64_t a_rs, int64_t a_cs, T* C, int64_t ldc, bool accumulate) const {
    if (M <= 0 || ncols_ <= 0) return;
    multiply_panels(M, A, a_rs, a_cs, C, ldc, accumulate, 0, panels_);
  }

 private:
  /// Columns [p0*NR, min(Ncols, p1*NR)) of the product, on the calling thread.
  void multiply_panels(int64_t M, const T* A, int64_t a_rs, int64_t a_cs, T* C, int64_t ldc, bool accumulate,
                       int64_t p0, int64_t p1) const {
    const int64_t NR = cfg_.NR, MR = cfg_.MR;
    const int64_t j0 = p0 * NR, j1 = std::min(ncols_, p1 * NR);
    if (K_ <= 0) {
      if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc + j0, C + i * ldc + j1, T(0));
      return;
    }
    const int64_t mc_max = std::min(cfg_.MC, (M + MR - 1) / MR * MR);
    T* Ap = static_cast<T*>(gemm_detail::packed_a_buffer().get(sizeof(T) * static_cast<size_t>(mc_max * kc_)));
    size_t s = 0;
    for (int64_t pc = 0; pc < K_; pc += kc_, ++s) {
      const int64_t kc = std::min(kc_, K_ - pc);
      const bool add = accumulate || pc > 0;
      const T* Bp = data_ + offsets_[s] + p0 * NR * kc;
      for (int64_t ic = 0; ic < M; ic += cfg_.MC) {
        const int64_t mc = std::min(cfg_.MC, M - ic);
        gemm_detail::pack_a(mc, kc, A + ic * a_rs + pc * a_cs, a_rs, a_cs, MR, Ap);
        gemm_detail::macro_kernel(cfg_, mc, j1 - j0, kc, Ap, Bp, C + ic * ldc + j0, ldc, add);
      }
    }
  }

  gemm_detail::GemmConfig<T> cfg_;
  int64_t K_, ncols_, kc_ = 0, panels_ = 0;
  std::vector<int64_t> offsets_;
  std::unique_ptr<gemm_detail::AlignedBuffer> buffer_;
  T* data_ = nullptr;
};

/// Forward of one recurrent layer over the whole sequence.
///   mode        : cell type
///   d           : sizes (T >= 1)
///   x           : (N, T, I) input
///   h0, c0      : (N, H) initial hidden / cell state, or null for zeros (c0: LSTM only)
///   w           : weights and optional biases
///   out         : (N, T, H) hidden state of every step (written)
///   h_n, c_n    : (N, H) final states (written; c_n LSTM only, may be null otherwise)
///   saved_gates : rnn_saved_gates_size() elements for the backward, or null (inference)
///   saved_cells : rnn_saved_cells_size() elements for the backward, or null (inference)
template <typename T>
void rnn_layer_forward(RnnMode mode, const RnnDims& d, const T* x, const T* h0, const T* c0,
                       const RnnWeights<T>& w, T* out, T* h_n, T* c_n, T* saved_gates, T* saved_cells) {
  using namespace rnn_detail;
  const int64_t N = d.N, Tn = d.T, I = d.I, H = d.H;
  const int64_t G = rnn_gate_count(mode), GH = G * H;
  if (N == 0 || H == 0) return;

  std::unique_ptr<T[]> zeros_h;
  if (h0 == nullptr || (mode == RnnMode::Lstm && c0 == nullptr)) {
    zeros_h = scratch<T>(N * H);
    std::fill(zeros_h.get(), zeros_h.get() + N * H, T(0));
    if (h0 == nullptr) h0 = zeros_h.get();
    if (c0 == nullptr) c0 = zeros_h.get();
  }

  // 1. Input projections of all steps: gx (N*T, G*H) = bias + x W_ih^T. The LSTM works in
  //    place in saved_gates (pre-activations become activations).
  std::unique_ptr<T[]> gx_owned;
  T* gx = nullptr;
  if (mode == RnnMode::Lstm && saved_gates != nullptr) {
    gx = saved_gates;
  } else {
    gx_owned = scratch<T>(N * Tn * GH);
    gx = gx_owned.get();
  }
  //    The GRU's gx starts from b_ih (b_hh goes with W_hh h, for the n gate); the other cells add
  //    b_ih + b_hh in the cell, after the recurrent product (no pass over gx to fill it).
  std::vector<T> bias_sum;
  if (mode == RnnMode::Gru)
    fill_rows_with_bias<T>(N * Tn, GH, w.b_ih, nullptr, gx);
  else
    bias_sum = summed_bias<T>(GH, w.b_ih, w.b_hh);
  auto add_bias_sum = [&](T* g) {
    for (int64_t j = 0; j < GH; ++j) g[j] += bias_sum[static_cast<size_t>(j)];
  };
  gemm<T>(N * Tn, GH, I, x, I, 1, w.w_ih, 1, I, gx, GH, /*accumulate=*/mode == RnnMode::Gru);

  // 2. The recurrence, on W_hh^T packed once.
  const PackedRhs<T> whh_t(H, GH, w.w_hh, 1, H, step_rows(N));
  std::unique_ptr<T[]> gh_owned, state_owned;
  if (mode == RnnMode::Gru) {
    gh_owned = scratch<T>(N * GH);
    if (saved_gates == nullptr) state_owned = scratch<T>(N * 4 * H);  // r, z, n, hn of one step
  }
  if (mode == RnnMode::Lstm && saved_cells == nullptr) {
    state_owned = scratch<T>(N * 2 * H);  // c_t, tanh(c_t) of one step, updated in place
    for (int64_t n = 0; n < N; ++n) std::memcpy(state_owned.get() + n * 2 * H, c0 + n * H, sizeof(T) * H);
  }
  // Step t for the batch rows [n0, n1): the recurrent product (threads split its columns
  // unless `serial`), then the cell.
  auto recurrent_product = [&](int64_t n0, int64_t n1, int64_t t, bool serial) {
    const T* h_prev = t == 0 ? h0 : out + (t - 1) * H;
    const int64_t hp_rs = t == 0 ? H : Tn * H;
    T* C = gx + (n0 * Tn + t) * GH;
    int64_t ldc = Tn * GH;
    if (mode == RnnMode::Gru) {
      C = gh_owned.get() + n0 * GH, ldc = GH;
      fill_rows_with_bias<T>(n1 - n0, GH, w.b_hh, nullptr, C);
    }
    if (serial) whh_t.multiply_serial(n1 - n0, h_prev + n0 * hp_rs, hp_rs, 1, C, ldc, true);
    else whh_t.multiply(n1 - n0, h_prev + n0 * hp_rs, hp_rs, 1, C, ldc, true);
  };
  auto cell_rows = [&](int64_t n0, int64_t n1, int64_t t) {
    const T* h_prev = t == 0 ? h0 : out + (t - 1) * H;
    const int64_t hp_rs = t == 0 ? H : Tn * H;
      for (int64_t n = n0; n < n1; ++n) {
        T* g = gx + (n * Tn + t) * GH;
        T* h = out + (n * Tn + t) * H;
        const T* hp = h_prev + n * hp_rs;
        switch (mode) {
          case RnnMode::RnnTanh:
            add_bias_sum(g);
            tanh_inplace(g, H);
            std::memcpy(h, g, sizeof(T) * H);
            break;
          case RnnMode::RnnRelu:
            add_bias_sum(g);
            for (int64_t j = 0; j < H; ++j) h[j] = g[j] > T(0) ? g[j] : T(0);
            break;
          case RnnMode::Lstm: {
#if NABLAGRAD_VMATH_AVX2
            if (std::is_same<T, float>::value && simd_at_least(SimdLevel::AVX512)) {
              float* cellf = reinterpret_cast<float*>(saved_cells ? saved_cells + (n * Tn + t) * 2 * H
                                                                  : state_owned.get() + n * 2 * H);
              const float* c_prevf = saved_cells ? (t == 0 ? reinterpret_cast<const float*>(c0 + n * H) : cellf - 2 * H)
                                                 : cellf;
              lstm_forward_row_avx512(H, reinterpret_cast<float*>(g), reinterpret_cast<const float*>(bias_sum.data()),
                                      c_prevf, cellf, cellf + H,
                                      reinterpret_cast<float*>(h));
              break;
            }
#endif
            add_bias_sum(g);
            sigmoid_inplace(g, 2 * H);
            tanh_inplace(g + 2 * H, H);
            sigmoid_inplace(g + 3 * H, H);
            const T *gi = g, *gf = g + H, *gg = g + 2 * H, *go = g + 3 * H;
            T* cell = saved_cells ? saved_cells + (n * Tn + t) * 2 * H : state_owned.get() + n * 2 * H;
            const T* c_prev = saved_cells ? (t == 0 ? c0 + n * H : cell - 2 * H) : cell;
            T* tc = cell + H;
            for (int64_t j = 0; j < H; ++j) {
              const T c = gf[j] * c_prev[j] + gi[j] * gg[j];
              cell[j] = c;
              tc[j] = c;
            }
            tanh_inplace(tc, H);
            for (int64_t j = 0; j < H; ++j) h[j] = go[j] * tc[j];
            break;
          }
          case RnnMode::Gru: {
            const T* ghr = gh_owned.get() + n * GH;
            T* s = saved_gates ? saved_gates + (n * Tn + t) * 4 * H : state_owned.get() + n * 4 * H;
            for (int64_t j = 0; j < 2 * H; ++j) s[j] = g[j] + ghr[j];
            sigmoid_inplace(s, 2 * H);
            const T *r = s, *z = s + H;
            T *nn = s + 2 * H, *hn = s + 3 * H;
            for (int64_t j = 0; j < H; ++j) {
              hn[j] = ghr[2 * H + j];
              nn[j] = g[2 * H + j] + r[j] * hn[j];
            }
            tanh_inplace(nn, H);
            for (int64_t j = 0; j < H; ++j) h[j] = (T(1) - z[j]) * nn[j] + z[j] * hp[j];
            break;
          }
        }
      }
  };
  if (split_rows(N)) {
    // Batch rows are independent sequences: each thread runs the whole time loop for its rows
    // (one parallel region, no barrier per step).
    parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t t = 0; t < Tn; ++t) {
        recurrent_product(n0, n1, t, true);
        cell_rows(n0, n1, t);
      }
    });
  } else {
    const int64_t grain = cell_grain(GH);
    for (int64_t t = 0; t < Tn; ++t) {
      recurrent_product(0, N, t, false);
      parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) { cell_rows(n0, n1, t); });
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(h_n + n * H, out + (n * Tn + Tn - 1) * H, sizeof(T) * H);
    if (mode == RnnMode::Lstm && c_n != nullptr) {
      const T* c_last = saved_cells ? saved_cells + (n * Tn + Tn - 1) * 2 * H : state_owned.get() + n * 2 * H;
      std::memcpy(c_n + n * H, c_last, sizeof(T) * H);
    }
  }
}

/// Gradients of one layer (backward through time). Inputs as for the forward, plus what it
/// saved (out, saved_gates, saved_cells) and the gradients of its outputs:
///   d_out (N,T,H), d_hn (N,H), d_cn (N,H, LSTM only): null means zeros.
/// Outputs (null = not wanted): dx (N,T,I), dh0 (N,H), dc0 (N,H), dw_ih (G*H,I),
/// dw_hh (G*H,H), db_ih (G*H), db_hh (G*H). All are overwritten (not accumulated).
template <typename T>
void rnn_layer_backward(RnnMode mode, const RnnDims& d, const T* x, const T* h0, const T* c0,
                        const RnnWeights<T>& w, const T* out, const T* saved_gates, const T* saved_cells,
                        const T* d_out, const T* d_hn, const T* d_cn, T* dx, T* dh0, T* dc0, T* dw_ih,
                        T* dw_hh, T* db_ih, T* db_hh) {
  using namespace rnn_detail;
  const int64_t N = d.N, Tn = d.T, I = d.I, H = d.H;
  const int64_t G = rnn_gate_count(mode), GH = G * H;
  auto zero = [](T* p, int64_t n) {
    if (p) std::fill(p, p + n, T(0));
  };
  if (N == 0 || H == 0) {
    zero(dx, N * Tn * I), zero(dh0, N * H), zero(dc0, N * H), zero(dw_ih, GH * I);
    zero(dw_hh, GH * H), zero(db_ih, GH), zero(db_hh, GH);
    return;
  }
  const bool gru = mode == RnnMode::Gru;
  // dG: gradients of the gate pre-activations, (N*T, G*H). The GRU has two: dgx for the
  // input side and dgh for the hidden side (they differ in the n gate: dgh_n = dgx_n * r).
  auto dg_owned = scratch<T>(N * Tn * GH);
  std::unique_ptr<T[]> dgh_owned;
  if (gru) dgh_owned = scratch<T>(N * Tn * GH);
  T* dg = dg_owned.get();
  T* dgh = gru ? dgh_owned.get() : dg;

  auto dh_owned = scratch<T>(N * H);  // dL/dh_t flowing back through the recurrence
  T* dh = dh_owned.get();
  if (d_hn) std::memcpy(dh, d_hn, sizeof(T) * N * H);
  else std::fill(dh, dh + N * H, T(0));
  std::unique_ptr<T[]> dc_owned;
  T* dc = nullptr;
  if (mode == RnnMode::Lstm) {
    dc_owned = scratch<T>(N * H);
    dc = dc_owned.get();
    if (d_cn) std::memcpy(dc, d_cn, sizeof(T) * N * H);
    else std::fill(dc, dc + N * H, T(0));
  }
  std::unique_ptr<T[]> zeros_h;
  if (h0 == nullptr || (mode == RnnMode::Lstm && c0 == nullptr)) {
    zeros_h = scratch<T>(N * H);
    std::fill(zeros_h.get(), zeros_h.get() + N * H, T(0));
    if (h0 == nullptr) h0 = zeros_h.get();
    if (c0 == nullptr) c0 = zeros_h.get();
  }

  const PackedRhs<T> whh(GH, H, w.w_hh, H, 1, step_rows(N));  // B = W_hh (G*H, H)
  // Step t for the batch rows [n0, n1): the gate gradients, then the recurrent product.
  auto cell_rows = [&](int64_t n0, int64_t n1, int64_t t) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t row = n * Tn + t;
        T* dhr = dh + n * H;
        const T* dor = d_out ? d_out + row * H : nullptr;
        T* g = dg + row * GH;
        switch (mode) {
          case RnnMode::RnnTanh:
          case RnnMode::RnnRelu: {
            const T* h = out + row * H;
            for (int64_t j = 0; j < H; ++j) {
              const T dht = dhr[j] + (dor ? dor[j] : T(0));
              g[j] = mode == RnnMode::RnnTanh ? dht * (T(1) - h[j] * h[j]) : (h[j] > T(0) ? dht : T(0));
            }
            break;
          }
          case RnnMode::Lstm: {
            const T* s = saved_gates + row * 4 * H;
            const T *gi = s, *gf = s + H, *gg = s + 2 * H, *go = s + 3 * H;
            const T* cell = saved_cells + row * 2 * H;
            const T* tc = cell + H;
            const T* c_prev = t == 0 ? c0 + n * H : cell - 2 * H;
            T* dcr = dc + n * H;
#if NABLAGRAD_VMATH_AVX2
            if (std::is_same<T, float>::value && simd_at_least(SimdLevel::AVX512)) {
              lstm_backward_row_avx512(H, reinterpret_cast<const float*>(dhr), reinterpret_cast<const float*>(dor),
                                       reinterpret_cast<float*>(dcr), reinterpret_cast<const float*>(s),
                                       reinterpret_cast<const float*>(tc), reinterpret_cast<const float*>(c_prev),
                                       reinterpret_cast<float*>(g));
              break;
            }
#endif
            for (int64_t j = 0; j < H; ++j) {
              const T dht = dhr[j] + (dor ? dor[j] : T(0));
              const T dct = dcr[j] + dht * go[j] * (T(1) - tc[j] * tc[j]);
              g[j] = dct * gg[j] * gi[j] * (T(1) - gi[j]);
              g[H + j] = dct * c_prev[j] * gf[j] * (T(1) - gf[j]);
              g[2 * H + j] = dct * gi[j] * (T(1) - gg[j] * gg[j]);
              g[3 * H + j] = dht * tc[j] * go[j] * (T(1) - go[j]);
              dcr[j] = dct * gf[j];
            }
            break;
          }
          case RnnMode::Gru: {
            const T* s = saved_gates + row * 4 * H;
            const T *r = s, *z = s + H, *nn = s + 2 * H, *hn = s + 3 * H;
            const T* hp = t == 0 ? h0 + n * H : out + (row - 1) * H;
            T* gh = dgh + row * GH;
            for (int64_t j = 0; j < H; ++j) {
              const T dht = dhr[j] + (dor ? dor[j] : T(0));
              const T dpn = dht * (T(1) - z[j]) * (T(1) - nn[j] * nn[j]);
              const T dpz = dht * (hp[j] - nn[j]) * z[j] * (T(1) - z[j]);
              const T dpr = dpn * hn[j] * r[j] * (T(1) - r[j]);
              g[j] = dpr, g[H + j] = dpz, g[2 * H + j] = dpn;
              gh[j] = dpr, gh[H + j] = dpz, gh[2 * H + j] = dpn * r[j];
              dhr[j] = dht * z[j];  // the direct path h_{t-1} -> h_t; W_hh's part is added below
            }
            break;
          }
        }
      }
  };
  // dh_{t-1} = dG_t W_hh (+ the GRU's direct path already in dh).
  auto recurrent_product = [&](int64_t n0, int64_t n1, int64_t t, bool serial) {
    const T* A = dgh + (n0 * Tn + t) * GH;
    if (serial) whh.multiply_serial(n1 - n0, A, Tn * GH, 1, dh + n0 * H, H, gru);
    else whh.multiply(n1 - n0, A, Tn * GH, 1, dh + n0 * H, H, gru);
  };
  if (split_rows(N)) {
    parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t t = Tn - 1; t >= 0; --t) {
        cell_rows(n0, n1, t);
        recurrent_product(n0, n1, t, true);
      }
    });
  } else {
    const int64_t grain = cell_grain(GH);
    for (int64_t t = Tn - 1; t >= 0; --t) {
      parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) { cell_rows(n0, n1, t); });
      recurrent_product(0, N, t, false);
    }
  }
  if (dh0) std::memcpy(dh0, dh, sizeof(T) * N * H);
  if (dc0) {
    if (dc) std::memcpy(dc0, dc, sizeof(T) * N * H);
    else zero(dc0, N * H);
  }

  // Weight gradients: one GEMM each over all N*T rows, formed transposed: dW_ih^T = x^T dG
  // (I, G*H) and dW_hh^T = [h_0 .. h_{T-1}]^T dG_h (H, G*H), then transposed into place. The
  // big dG is then the right operand, packed along its rows; as the transposed left operand
  // (dW = dG^T x) its packing read columns across rows of 4H floats, 4 KiB apart for H = 256,
  // and took as long as the products.
  const int64_t rows = N * Tn;
  if (dw_ih) {
    auto t = scratch<T>(I * GH);
    gemm<T>(I, GH, rows, x, 1, I, dg, GH, 1, t.get(), GH, false);
    transpose_into<T>(I, GH, t.get(), dw_ih);
  }
  if (dw_hh) {
    auto hprev = scratch<T>(rows * H);  // row (n, t) = h_{t-1} of sample n
    for (int64_t n = 0; n < N; ++n) {
      std::memcpy(hprev.get() + n * Tn * H, h0 + n * H, sizeof(T) * H);
      if (Tn > 1) std::memcpy(hprev.get() + (n * Tn + 1) * H, out + n * Tn * H, sizeof(T) * (Tn - 1) * H);
    }
    auto t = scratch<T>(H * GH);
    gemm<T>(H, GH, rows, hprev.get(), 1, H, dgh, GH, 1, t.get(), GH, false);
    transpose_into<T>(H, GH, t.get(), dw_hh);
  }
  if (db_ih) column_sums<T>(rows, GH, dg, db_ih);
  if (db_hh) {
    if (gru || !db_ih) column_sums<T>(rows, GH, dgh, db_hh);
    else std::memcpy(db_hh, db_ih, sizeof(T) * GH);
  }
  if (dx) gemm<T>(rows, I, GH, dg, GH, 1, w.w_ih, I, 1, dx, I, false);
}

// The entry points compiled once per program (NABLAGRAD_EXTERN_KERNEL_INSTANCES, gemm.h).
#define NABLAGRAD_RNN_INSTANCES(PREFIX, T)                                                              \
  PREFIX void rnn_layer_forward<T>(RnnMode, const RnnDims&, const T*, const T*, const T*, const RnnWeights<T>&, \
                                   T*, T*, T*, T*, T*);                                                 \
  PREFIX void rnn_layer_backward<T>(RnnMode, const RnnDims&, const T*, const T*, const T*,               \
                                    const RnnWeights<T>&, const T*, const T*, const T*, const T*, const T*, \
                                    const T*, T*, T*, T*, T*, T*, T*, T*);
NABLAGRAD_EXTERN_KERNEL_INSTANCES(NABLAGRAD_RNN_INSTANCES)

}  // namespace kernels
}  // namespace nablagrad
