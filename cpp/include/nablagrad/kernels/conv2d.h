// nablagrad/kernels/conv2d.h - 2-D convolution on contiguous NHWC buffers (float, double).
//
// Overview
// --------
// Layouts (see docs/convolution.md for the derivation and a worked example):
//   input  x  : (N, H, W, C)      rows H, columns W, channels innermost
//   kernel w  : (Q, FH, FW, C)    Q filters (output channels)
//   bias   b  : (Q,)              may be nullptr
//   output y  : (N, Ho, Wo, Q)    Ho = (H + pad_top + pad_bottom - FH) / stride_h + 1 (floor)
//
// Two implementations of every pass live here:
//   * conv2d_reference_*  : the design document's equations written literally (pad, dilate,
//                           flip_kernel, stride-1 convolution, crop). Slow, serial, the oracle.
//   * conv2d_forward / conv2d_backward_input / conv2d_backward_weight : the fast path,
//                           multithreaded on the pool, AVX2+FMA chosen at run time with a
//                           portable fallback, bitwise identical for any thread count.
//                           Shape-dependent variants: a small-depth forward straight from a
//                           zero-padded copy of the input (forward_direct: C = 1..3 first
//                           layers; only when that copy is about the input's size, see
//                           padded_copy_is_small), and for few input channels an input gradient computed
//                           as dY.W (one GEMM) followed by col2im (backward_input_col2im),
//                           and a kernel gradient straight from the padded input and dY
//                           with register accumulators (backward_weight_smallc, C <= 4),
//                           and for C <= 2, stride 1, <= 3x3 an input gradient of blocked
//                           dot products straight from dY (backward_input_smallc, AVX2).
//
//     auto g = make_conv2d_geometry(N, H, W, C, Q, FH, FW, C, 1, 1, 1, 1, 1, 1);
//     std::vector<float> y(g.N * g.Ho * g.Wo * g.Q);
//     conv2d_forward(g, x.data(), w.data(), b.data(), y.data());
//     conv2d_backward_input(g, dy.data(), w.data(), dx.data());
//     conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
//
// All output buffers are overwritten (not accumulated into). Buffers must not alias.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../checked.h"
#include "../tensor.h"
#include "../threading.h"
#include "simd.h"

namespace nablagrad {
namespace kernels {

/// Shape of one 2-D convolution. All sizes are element counts; padding may be asymmetric
/// (padding="same" with an even kernel puts the extra row/column at the bottom/right).
struct Conv2dGeometry {
  int64_t N, H, W, C;        // input (N, H, W, C)
  int64_t Q, FH, FW;         // kernel (Q, FH, FW, C)
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t Ho, Wo;            // output (N, Ho, Wo, Q)
};

namespace conv_detail {
inline std::string conv_shapes(int64_t N, int64_t H, int64_t W, int64_t C, int64_t Q,
                               int64_t FH, int64_t FW, int64_t Cw) {
  std::ostringstream s;
  s << "(input (" << N << "," << H << "," << W << "," << C << "), kernel (" << Q << "," << FH
    << "," << FW << "," << Cw << "))";
  return s.str();
}
}  // namespace conv_detail

/// Validates a convolution and computes its output size. Throws std::invalid_argument naming
/// the shapes when: C != Cw, a size is not positive (N may be 0), a stride is < 1, a padding
/// is negative, or the kernel is larger than the padded input.
inline Conv2dGeometry make_conv2d_geometry(int64_t N, int64_t H, int64_t W, int64_t C,  //
                                           int64_t Q, int64_t FH, int64_t FW, int64_t Cw,
                                           int64_t stride_h, int64_t stride_w,  //
                                           int64_t pad_top, int64_t pad_bottom,  //
                                           int64_t pad_left, int64_t pad_right) {
  const std::string shapes = conv_detail::conv_shapes(N, H, W, C, Q, FH, FW, Cw);
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("conv2d: " + what + " " + shapes);
  };
  if (C != Cw)
    fail("input has C=" + std::to_string(C) + " channels but kernel expects C=" +
         std::to_string(Cw));
  if (N < 0) fail("batch size N must be >= 0, got N=" + std::to_string(N));
  if (H < 1 || W < 1 || C < 1)
    fail("input sizes H, W, C must be >= 1");
  if (Q < 1 || FH < 1 || FW < 1) fail("kernel sizes Q, FH, FW must be >= 1");
  if (stride_h < 1 || stride_w < 1)
    fail("stride must be >= 1, got (" + std::to_string(stride_h) + "," +
         std::to_string(stride_w) + ")");
  if (pad_top < 0 || pad_bottom < 0 || pad_left < 0 || pad_right < 0)
    fail("padding must be >= 0, got (top=" + std::to_string(pad_top) +
         ",bottom=" + std::to_string(pad_bottom) + ",left=" + std::to_string(pad_left) +
         ",right=" + std::to_string(pad_right) + ")");
  // Padded sizes; a padding so large that they overflow int64 is refused (not wrapped).
  constexpr int64_t kMaxExtent = int64_t{1} << 40;
  if (pad_top > kMaxExtent || pad_bottom > kMaxExtent || pad_left > kMaxExtent || pad_right > kMaxExtent)
    fail("padding must be at most 2^40, got (top=" + std::to_string(pad_top) + ",bottom=" +
         std::to_string(pad_bottom) + ",left=" + std::to_string(pad_left) + ",right=" +
         std::to_string(pad_right) + ")");
  auto about = [&](const char* what) { return [&shapes, what] { return "conv2d: " + std::string(what) + " " + shapes; }; };
  const int64_t hp = checked_add(H, pad_top + pad_bottom, about("padded height"));
  const int64_t wp = checked_add(W, pad_left + pad_right, about("padded width"));
  if (FH > hp || FW > wp)
    fail("kernel " + std::to_string(FH) + "x" + std::to_string(FW) +
         " is larger than the padded input " + std::to_string(hp) + "x" + std::to_string(wp));
  Conv2dGeometry g{N, H, W, C, Q, FH, FW, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                   pad_right, (hp - FH) / stride_h + 1, (wp - FW) / stride_w + 1};
  // Every size the forward and backward passes form from these (shared by both, checked once
  // here): the zero-padded input (N, Hp, Wp, C) of the design document (materialised by the
  // reference path and, when it is not much larger than the input, by the fast small-C
  // paths), the output (N, Ho, Wo, Q), the kernel and the depth FH*FW*C of the im2col rows.
  // A geometry whose padded input cannot even be counted in int64 is refused.
  checked_product({N, hp, wp, C}, about("the padded input (N, H+pads, W+pads, C) has too many elements"));
  checked_product({N, g.Ho, g.Wo, Q}, about("the output (N, Ho, Wo, Q) has too many elements"));
  checked_product({Q, FH, FW, C}, about("the kernel has too many elements"));
  return g;
}

namespace conv_detail {
/// Scratch memory of a kernel: n values of T from the tensor allocator (Storage::allocate), so
/// large buffers come from the block cache (no page faults when the same shapes repeat) and a
/// request larger than the machine's memory raises OutOfMemory (Python MemoryError) before
/// anything is allocated. `what` names the buffer in that message. Uninitialised unless `zero`.
template <typename T>
class Scratch {
 public:
  Scratch(int64_t n, const char* what, bool zero = false) {
    std::size_t bytes = 0;
    if (n < 0 || __builtin_mul_overflow(static_cast<std::size_t>(n), sizeof(T), &bytes))
      throw OutOfMemory(std::string("nablagrad: ") + what + ": " + std::to_string(n) +
                        " values are too large to allocate");
    try {
      storage_ = Storage::allocate(bytes);
    } catch (const OutOfMemory& e) {
      throw OutOfMemory(std::string(e.what()) + " (" + what + ")");
    }
    if (zero && bytes) std::memset(storage_->data(), 0, bytes);
  }
  T* get() const { return static_cast<T*>(storage_->data()); }

 private:
  std::shared_ptr<Storage> storage_;
};
}  // namespace conv_detail

// ============================================================================================
// Reference path: the design document, literally.
// ============================================================================================

/// Number of entries after inserting S-1 zeros between n entries: (n-1)*S + 1.
inline int64_t dilated_size(int64_t n, int64_t s) { return n == 0 ? 0 : (n - 1) * s + 1; }

/// dilate: (N, H, W, C) -> (N, (H-1)*sh+1, (W-1)*sw+1, C), inserting sh-1 (sw-1) zeros
/// between neighbouring rows (columns). out[n, i*sh, j*sw, c] = in[n, i, j, c], else 0.
template <typename T>
void dilate(const T* in, int64_t N, int64_t H, int64_t W, int64_t C, int64_t sh, int64_t sw,
            T* out) {
  const int64_t Hd = dilated_size(H, sh), Wd = dilated_size(W, sw);
  std::fill(out, out + N * Hd * Wd * C, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        for (int64_t c = 0; c < C; ++c)
          out[((n * Hd + i * sh) * Wd + j * sw) * C + c] = in[((n * H + i) * W + j) * C + c];
}

/// pad: (N, H, W, C) -> (N, top+H+bottom, left+W+right, C) with zeros around (all >= 0).
template <typename T>
void pad(const T* in, int64_t N, int64_t H, int64_t W, int64_t C, int64_t top, int64_t bottom,
         int64_t left, int64_t right, T* out) {
  const int64_t Hp = H + top + bottom, Wp = W + left + right;
  std::fill(out, out + N * Hp * Wp * C, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        for (int64_t c = 0; c < C; ++c)
          out[((n * Hp + i + top) * Wp + j + left) * C + c] = in[((n * H + i) * W + j) * C + c];
}

/// flip_kernel: (Q, FH, FW, C) -> (C, FH, FW, Q), k_r(c, a, b, q) = k(q, FH-1-a, FW-1-b, c):
/// both spatial axes flipped and the roles of Q and C exchanged (the document's k_r).
template <typename T>
void flip_kernel(const T* w, int64_t Q, int64_t FH, int64_t FW, int64_t C, T* out) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t a = 0; a < FH; ++a)
      for (int64_t b = 0; b < FW; ++b)
        for (int64_t q = 0; q < Q; ++q)
          out[((c * FH + a) * FW + b) * Q + q] =
              w[((q * FH + (FH - 1 - a)) * FW + (FW - 1 - b)) * C + c];
}

namespace conv_detail {
// The document's first multi-channel equation on an already padded input:
// R(v,i,j,f) = sum_p sum_a sum_b I(v, iS+a, jS+b, p) k(f,a,b,p) + t(f).
template <typename T>
void reference_valid_conv(const T* xp, int64_t N, int64_t Hp, int64_t Wp, int64_t C,
                          const T* w, int64_t Q, int64_t FH, int64_t FW, int64_t sh,
                          int64_t sw, const T* bias, T* y) {
  const int64_t Ho = (Hp - FH) / sh + 1, Wo = (Wp - FW) / sw + 1;
  for (int64_t v = 0; v < N; ++v)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j)
        for (int64_t f = 0; f < Q; ++f) {
          T sum = 0;
          for (int64_t p = 0; p < C; ++p)
            for (int64_t a = 0; a < FH; ++a)
              for (int64_t b = 0; b < FW; ++b)
                sum += xp[((v * Hp + i * sh + a) * Wp + j * sw + b) * C + p] *
                       w[((f * FH + a) * FW + b) * C + p];
          y[((v * Ho + i) * Wo + j) * Q + f] = sum + (bias ? bias[f] : T(0));
        }
}
}  // namespace conv_detail

/// Reference forward: pad the input, then the document's strided convolution equation.
template <typename T>
void conv2d_reference_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* bias,
                              T* y) {
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom, Wp = g.W + g.pad_left + g.pad_right;
  // N*Hp*Wp*C fits in int64 (make_conv2d_geometry); a size beyond memory is a MemoryError.
  conv_detail::Scratch<T> xp(g.N * Hp * Wp * g.C, "conv2d_reference: padded input");
  pad(x, g.N, g.H, g.W, g.C, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, xp.get());
  conv_detail::reference_valid_conv(xp.get(), g.N, Hp, Wp, g.C, w, g.Q, g.FH, g.FW,
                                    g.stride_h, g.stride_w, bias, y);
}

/// Reference input gradient, the document's route:
///   1. dilate dY by the stride (S-1 zeros between entries);
///   2. pad it with F-1 on both ends, plus r extra zeros at the bottom/right, where
///      r = (H + pads - F) mod S are the trailing padded-input rows the forward pass never
///      reached (PITFALLS item 1: e.g. 28 -> 14 with F=3, S=2, P=1 has r = 1);
///   3. stride-1 convolution with the flipped kernel k_r (Q and C exchanged)
///      -> gradient with respect to the padded input, (H + pads) x (W + pads);
///   4. crop the forward padding away.
template <typename T>
void conv2d_reference_backward_input(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom, Wp = g.W + g.pad_left + g.pad_right;
  const int64_t Hd = dilated_size(g.Ho, g.stride_h), Wd = dilated_size(g.Wo, g.stride_w);
  const int64_t rh = Hp - (Hd + g.FH - 1), rw = Wp - (Wd + g.FW - 1);  // untouched rows/cols
  // Hd <= Hp and Hpp = Hp + FH - 1 (both fit: FH <= Hp); the buffer sizes are checked.
  const std::string shapes = conv_detail::conv_shapes(g.N, g.H, g.W, g.C, g.Q, g.FH, g.FW, g.C);
  conv_detail::Scratch<T> dyd(
      checked_product({g.N, Hd, Wd, g.Q}, "conv2d_reference_backward: dilated dY " + shapes),
      "conv2d_reference_backward: dilated dY");
  dilate(dy, g.N, g.Ho, g.Wo, g.Q, g.stride_h, g.stride_w, dyd.get());
  const int64_t Hpp = Hd + 2 * (g.FH - 1) + rh, Wpp = Wd + 2 * (g.FW - 1) + rw;
  conv_detail::Scratch<T> dydp(
      checked_product({g.N, Hpp, Wpp, g.Q}, "conv2d_reference_backward: padded dilated dY " + shapes),
      "conv2d_reference_backward: padded dilated dY");
  pad(dyd.get(), g.N, Hd, Wd, g.Q, g.FH - 1, g.FH - 1 + rh, g.FW - 1, g.FW - 1 + rw,
      dydp.get());
  conv_detail::Scratch<T> wr(g.C * g.FH * g.FW * g.Q, "conv2d_reference_backward: flipped kernel");
  flip_kernel(w, g.Q, g.FH, g.FW, g.C, wr.get());
  conv_detail::Scratch<T> dxp(g.N * Hp * Wp * g.C,  // (Hpp - FH + 1) == Hp; fits (geometry)
                              "conv2d_reference_backward: padded dX");
  conv_detail::reference_valid_conv(dydp.get(), g.N, Hpp, Wpp, g.Q, wr.get(), g.C, g.FH,
                                    g.FW, int64_t{1}, int64_t{1}, static_cast<const T*>(nullptr),
                                    dxp.get());
  for (int64_t n = 0; n < g.N; ++n)  // crop
    for (int64_t i = 0; i < g.H; ++i)
      for (int64_t j = 0; j < g.W; ++j)
        for (int64_t c = 0; c < g.C; ++c)
          dx[((n * g.H + i) * g.W + j) * g.C + c] =
              dxp.get()[((n * Hp + i + g.pad_top) * Wp + j + g.pad_left) * g.C + c];
}

/// Reference kernel (and bias) gradient: the padded input convolved (stride 1) with the
/// dilated output gradient, summed over the batch:
///   dk(h,c,d,r) = sum_{w,i,j} gamma(i,j) dR(w,i,j,h) I(w, c+i, d+j, r),   db(h) = sum dR(.,h).
/// db may be nullptr.
template <typename T>
void conv2d_reference_backward_weight(const Conv2dGeometry& g, const T* x, const T* dy, T* dw,
                                      T* db) {
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom, Wp = g.W + g.pad_left + g.pad_right;
  conv_detail::Scratch<T> xps(g.N * Hp * Wp * g.C,  // fits (make_conv2d_geometry)
                              "conv2d_reference_backward: padded input");
  const T* xp = xps.get();
  pad(x, g.N, g.H, g.W, g.C, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, xps.get());
  const int64_t Hd = dilated_size(g.Ho, g.stride_h), Wd = dilated_size(g.Wo, g.stride_w);
  conv_detail::Scratch<T> dyds(
      checked_product({g.N, Hd, Wd, g.Q},
                      "conv2d_reference_backward: dilated dY " +
                          conv_detail::conv_shapes(g.N, g.H, g.W, g.C, g.Q, g.FH, g.FW, g.C)),
      "conv2d_reference_backward: dilated dY");
  const T* dyd = dyds.get();
  dilate(dy, g.N, g.Ho, g.Wo, g.Q, g.stride_h, g.stride_w, dyds.get());
  for (int64_t h = 0; h < g.Q; ++h)
    for (int64_t c = 0; c < g.FH; ++c)
      for (int64_t d = 0; d < g.FW; ++d)
        for (int64_t r = 0; r < g.C; ++r) {
          T sum = 0;
          for (int64_t v = 0; v < g.N; ++v)
            for (int64_t i = 0; i < Hd; ++i)
              for (int64_t j = 0; j < Wd; ++j)
                sum += dyd[((v * Hd + i) * Wd + j) * g.Q + h] *
                       xp[((v * Hp + c + i) * Wp + d + j) * g.C + r];
          dw[((h * g.FH + c) * g.FW + d) * g.C + r] = sum;
        }
  if (db) {
    for (int64_t h = 0; h < g.Q; ++h) db[h] = 0;
    for (int64_t p = 0; p < g.N * g.Ho * g.Wo; ++p)
      for (int64_t h = 0; h < g.Q; ++h) db[h] += dy[p * g.Q + h];
  }
}

// ============================================================================================
// Fast path.
// ============================================================================================
//
// Every pass is a "gather GEMM": out(r, j) = sum_k A(r, k) B(k, j), where the rows r are
// output pixels, A's row r is gathered from an NHWC tensor (one contiguous run of channels
// per kernel tap: im2col of a tile of rows, never of the whole matrix) and B is the kernel,
// packed once into panels of NR columns. A register-blocked MR x NR micro-kernel (6 x 16
// floats / 6 x 8 doubles, 12 ymm accumulators) does the arithmetic.
//
// Determinism: each output element is produced by one thread, summed in a fixed order over
// fixed tiles (the tiling depends on the shape only); the weight gradient reduces over pixels
// in fixed chunks whose partial sums are added in chunk order. So results do not depend on
// the thread count.

namespace conv_detail {

constexpr int64_t kMR = 6;
template <typename T>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int64_t NR = 16;
  static constexpr int64_t KC = 256;
};
template <>
struct Tile<double> {
  static constexpr int64_t NR = 8;
  static constexpr int64_t KC = 128;
};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// C[MR x NR] (row stride ldc) += sum_{d < depth} A(i, d) * b[d*NR + j], A(i,d) = a[i*a_rs + d*a_cs].
template <typename T>
inline void micro_kernel_portable(int64_t depth, const T* a, int64_t a_rs, int64_t a_cs,
                                  const T* b, T* c, int64_t ldc) {
  constexpr int64_t NR = Tile<T>::NR;
  T acc[kMR][NR] = {};
  for (int64_t d = 0; d < depth; ++d) {
    const T* bd = b + d * NR;
    const T* ad = a + d * a_cs;
    for (int64_t i = 0; i < kMR; ++i) {
      const T ai = ad[i * a_rs];
      for (int64_t j = 0; j < NR; ++j) acc[i][j] += ai * bd[j];
    }
  }
  for (int64_t i = 0; i < kMR; ++i)
    for (int64_t j = 0; j < NR; ++j) c[i * ldc + j] += acc[i][j];
}

// Dot product of length n (the narrow-output path), fixed summation order.
template <typename T>
inline T dot_portable(const T* a, const T* b, int64_t n) {
  T s[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int64_t l = 0; l < 4; ++l) s[l] += a[k + l] * b[k + l];
  T sum = (s[0] + s[1]) + (s[2] + s[3]);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

#if NABLAGRAD_X86
#define NG_UKR_ROW(i)                                                   \
  {                                                                     \
    const VT ai = BCAST(ad + (i) * a_rs);                               \
    c##i##0 = FMA(ai, b0, c##i##0);                                     \
    c##i##1 = FMA(ai, b1, c##i##1);                                     \
  }
#define NG_UKR_STORE(i)                                                          \
  {                                                                              \
    STORE(c + (i) * ldc, ADD(LOAD(c + (i) * ldc), c##i##0));                     \
    STORE(c + (i) * ldc + W, ADD(LOAD(c + (i) * ldc + W), c##i##1));             \
  }
#define NG_UKR_BODY                                                                   \
  VT c00 = ZERO(), c01 = ZERO(), c10 = ZERO(), c11 = ZERO(), c20 = ZERO(), c21 = ZERO(); \
  VT c30 = ZERO(), c31 = ZERO(), c40 = ZERO(), c41 = ZERO(), c50 = ZERO(), c51 = ZERO(); \
  for (int64_t d = 0; d < depth; ++d) {                                               \
    const VT b0 = LOAD(b + d * 2 * W);                                                \
    const VT b1 = LOAD(b + d * 2 * W + W);                                            \
    const auto* ad = a + d * a_cs;                                                    \
    NG_UKR_ROW(0) NG_UKR_ROW(1) NG_UKR_ROW(2) NG_UKR_ROW(3) NG_UKR_ROW(4) NG_UKR_ROW(5) \
  }                                                                                   \
  NG_UKR_STORE(0) NG_UKR_STORE(1) NG_UKR_STORE(2) NG_UKR_STORE(3) NG_UKR_STORE(4)     \
  NG_UKR_STORE(5)

__attribute__((target("avx2,fma"))) inline void micro_kernel_avx2(int64_t depth, const float* a,
                                                                  int64_t a_rs, int64_t a_cs,
                                                                  const float* b, float* c,
                                                                  int64_t ldc) {
  using VT = __m256;
  constexpr int64_t W = 8;
#define ZERO _mm256_setzero_ps
#define LOAD _mm256_loadu_ps
#define STORE _mm256_storeu_ps
#define ADD _mm256_add_ps
#define FMA _mm256_fmadd_ps
#define BCAST _mm256_broadcast_ss
  NG_UKR_BODY
#undef ZERO
#undef LOAD
#undef STORE
#undef ADD
#undef FMA
#undef BCAST
}

__attribute__((target("avx2,fma"))) inline void micro_kernel_avx2(int64_t depth, const double* a,
                                                                  int64_t a_rs, int64_t a_cs,
                                                                  const double* b, double* c,
                                                                  int64_t ldc) {
  using VT = __m256d;
  constexpr int64_t W = 4;
#define ZERO _mm256_setzero_pd
#define LOAD _mm256_loadu_pd
#define STORE _mm256_storeu_pd
#define ADD _mm256_add_pd
#define FMA _mm256_fmadd_pd
#define BCAST _mm256_broadcast_sd
  NG_UKR_BODY
#undef ZERO
#undef LOAD
#undef STORE
#undef ADD
#undef FMA
#undef BCAST
}
#undef NG_UKR_ROW
#undef NG_UKR_STORE
#undef NG_UKR_BODY

__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b,
                                                          int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
  }
  for (; k + 8 <= n; k += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(s0, s1));
  float sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

__attribute__((target("avx2,fma"))) inline double dot_avx2(const double* a, const double* b,
                                                           int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
    s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k + 4), _mm256_loadu_pd(b + k + 4), s1);
  }
  for (; k + 4 <= n; k += 4)
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  double sum = (t[0] + t[1]) + (t[2] + t[3]);
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}
#endif

// Narrow outputs (few columns, e.g. the input gradient of a C=1 or C=3 layer): no im2col
// copy at all. out[j] = sum_t sum_{q<len} src[t][q] * bt[j*K + t*len + q], src[t] == nullptr
// meaning a zero (padding) segment; vector partial sums run across all segments.
template <typename T>
inline void narrow_row_portable(const T* const* src, int64_t nseg, int64_t len, const T* bt,
                                int64_t K, int64_t ncols, T* out) {
  for (int64_t j = 0; j < ncols; ++j) {
    T s[4] = {0, 0, 0, 0};
    for (int64_t t = 0; t < nseg; ++t) {
      if (!src[t]) continue;
      const T* a = src[t];
      const T* b = bt + j * K + t * len;
      int64_t k = 0;
      for (; k + 4 <= len; k += 4)
        for (int64_t l = 0; l < 4; ++l) s[l] += a[k + l] * b[k + l];
      for (; k < len; ++k) s[0] += a[k] * b[k];
    }
    out[j] = (s[0] + s[1]) + (s[2] + s[3]);
  }
}

#if NABLAGRAD_X86
// All (<= 4) columns at once: each 8-float load of a dY run feeds NC FMAs.
template <int NC>
__attribute__((target("avx2,fma"))) inline void narrow_row_avx2_nc(const float* const* src,
                                                                   int64_t nseg, int64_t len,
                                                                   const float* bt, int64_t K,
                                                                   float* out) {
  __m256 s[NC];
  float tail[NC];
  for (int j = 0; j < NC; ++j) {
    s[j] = _mm256_setzero_ps();
    tail[j] = 0;
  }
  for (int64_t t = 0; t < nseg; ++t) {
    if (!src[t]) continue;
    const float* a = src[t];
    const float* b = bt + t * len;
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) {
      const __m256 av = _mm256_loadu_ps(a + k);
      for (int j = 0; j < NC; ++j)
        s[j] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + j * K + k), s[j]);
    }
    for (; k < len; ++k)
      for (int j = 0; j < NC; ++j) tail[j] += a[k] * b[j * K + k];
  }
  for (int j = 0; j < NC; ++j) {
    alignas(32) float v[8];
    _mm256_store_ps(v, s[j]);
    out[j] = (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) + tail[j];
  }
}

__attribute__((target("avx2,fma"))) inline void narrow_row_avx2(const float* const* src,
                                                                int64_t nseg, int64_t len,
                                                                const float* bt, int64_t K,
                                                                int64_t ncols, float* out) {
  int64_t j = 0;
  for (; j + 4 <= ncols; j += 4) narrow_row_avx2_nc<4>(src, nseg, len, bt + j * K, K, out + j);
  switch (ncols - j) {
    case 3: narrow_row_avx2_nc<3>(src, nseg, len, bt + j * K, K, out + j); break;
    case 2: narrow_row_avx2_nc<2>(src, nseg, len, bt + j * K, K, out + j); break;
    case 1: narrow_row_avx2_nc<1>(src, nseg, len, bt + j * K, K, out + j); break;
    default: break;
  }
}
__attribute__((target("avx2,fma"))) inline void narrow_row_avx2(const double* const* src,
                                                                int64_t nseg, int64_t len,
                                                                const double* bt, int64_t K,
                                                                int64_t ncols, double* out) {
  for (int64_t j = 0; j < ncols; ++j) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    double tail = 0;
    for (int64_t t = 0; t < nseg; ++t) {
      if (!src[t]) continue;
      const double* a = src[t];
      const double* b = bt + j * K + t * len;
      int64_t k = 0;
      for (; k + 8 <= len; k += 8) {
        s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
        s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k + 4), _mm256_loadu_pd(b + k + 4), s1);
      }
      for (; k + 4 <= len; k += 4)
        s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + k), _mm256_loadu_pd(b + k), s0);
      for (; k < len; ++k) tail += a[k] * b[k];
    }
    alignas(32) double v[4];
    _mm256_store_pd(v, _mm256_add_pd(s0, s1));
    out[j] = ((v[0] + v[1]) + (v[2] + v[3])) + tail;
  }
}
#endif

template <typename T>
inline void narrow_row(bool avx2, const T* const* src, int64_t nseg, int64_t len, const T* bt,
                       int64_t K, int64_t ncols, T* out) {
#if NABLAGRAD_X86
  if (avx2) return narrow_row_avx2(src, nseg, len, bt, K, ncols, out);
#endif
  (void)avx2;
  narrow_row_portable(src, nseg, len, bt, K, ncols, out);
}

template <typename T>
inline void micro_kernel(bool avx2, int64_t depth, const T* a, int64_t a_rs, int64_t a_cs,
                         const T* b, T* c, int64_t ldc) {
#if NABLAGRAD_X86
  if (avx2) return micro_kernel_avx2(depth, a, a_rs, a_cs, b, c, ldc);
#endif
  (void)avx2;
  micro_kernel_portable(depth, a, a_rs, a_cs, b, c, ldc);
}

template <typename T>
inline T dot(bool avx2, const T* a, const T* b, int64_t n) {
#if NABLAGRAD_X86
  if (avx2) return dot_avx2(a, b, n);
#endif
  (void)avx2;
  return dot_portable(a, b, n);
}

inline bool use_avx2() { return simd_at_least(SimdLevel::AVX2); }

// Direct micro-kernel for the small-depth forward pass (no im2col copy): the A operand is read
// straight from the zero-padded input, the depth being nh kernel rows of len = FW*C
// contiguous values each:
//   out[i*NR + j] = sum_{h < nh} sum_{d < len} a[i*a_rs + h*a_hs + d] * b[(h*len + d)*NR + j]
// for i < kMR, j < NR; out is overwritten (one FMA chain per element, (h, d) ascending, which
// is the same order as the im2col GEMM).
template <typename T>
inline void direct_kernel_portable(int64_t nh, int64_t len, const T* a, int64_t a_rs,
                                   int64_t a_hs, const T* b, T* out) {
  constexpr int64_t NR = Tile<T>::NR;
  T acc[kMR][NR] = {};
  for (int64_t h = 0; h < nh; ++h) {
    const T* ah = a + h * a_hs;
    const T* bh = b + h * len * NR;
    for (int64_t d = 0; d < len; ++d) {
      const T* bd = bh + d * NR;
      for (int64_t i = 0; i < kMR; ++i) {
        const T ai = ah[i * a_rs + d];
        for (int64_t j = 0; j < NR; ++j) acc[i][j] += ai * bd[j];
      }
    }
  }
  for (int64_t i = 0; i < kMR; ++i)
    for (int64_t j = 0; j < NR; ++j) out[i * NR + j] = acc[i][j];
}

#if NABLAGRAD_X86
#define NG_DK_ROW(i)                                                    \
  {                                                                     \
    const VT ai = BCAST(ad + (i) * a_rs);                               \
    c##i##0 = FMA(ai, b0, c##i##0);                                     \
    c##i##1 = FMA(ai, b1, c##i##1);                                     \
  }
#define NG_DK_STORE(i)                        \
  {                                           \
    STORE(out + (i) * 2 * W, c##i##0);        \
    STORE(out + (i) * 2 * W + W, c##i##1);    \
  }
#define NG_DK_BODY                                                                    \
  VT c00 = ZERO(), c01 = ZERO(), c10 = ZERO(), c11 = ZERO(), c20 = ZERO(), c21 = ZERO(); \
  VT c30 = ZERO(), c31 = ZERO(), c40 = ZERO(), c41 = ZERO(), c50 = ZERO(), c51 = ZERO(); \
  for (int64_t h = 0; h < nh; ++h) {                                                  \
    const auto* ah = a + h * a_hs;                                                    \
    const auto* bh = b + h * len * 2 * W;                                             \
    for (int64_t d = 0; d < len; ++d) {                                               \
      const VT b0 = LOAD(bh + d * 2 * W);                                             \
      const VT b1 = LOAD(bh + d * 2 * W + W);                                         \
      const auto* ad = ah + d;                                                        \
      NG_DK_ROW(0) NG_DK_ROW(1) NG_DK_ROW(2) NG_DK_ROW(3) NG_DK_ROW(4) NG_DK_ROW(5)   \
    }                                                                                 \
  }                                                                                   \
  NG_DK_STORE(0) NG_DK_STORE(1) NG_DK_STORE(2) NG_DK_STORE(3) NG_DK_STORE(4) NG_DK_STORE(5)

__attribute__((target("avx2,fma"))) inline void direct_kernel_avx2(int64_t nh, int64_t len,
                                                                   const float* a, int64_t a_rs,
                                                                   int64_t a_hs, const float* b,
                                                                   float* out) {
  using VT = __m256;
  constexpr int64_t W = 8;
#define ZERO _mm256_setzero_ps
#define LOAD _mm256_loadu_ps
#define STORE _mm256_storeu_ps
#define FMA _mm256_fmadd_ps
#define BCAST _mm256_broadcast_ss
  NG_DK_BODY
#undef ZERO
#undef LOAD
#undef STORE
#undef FMA
#undef BCAST
}

__attribute__((target("avx2,fma"))) inline void direct_kernel_avx2(int64_t nh, int64_t len,
                                                                   const double* a, int64_t a_rs,
                                                                   int64_t a_hs, const double* b,
                                                                   double* out) {
  using VT = __m256d;
  constexpr int64_t W = 4;
#define ZERO _mm256_setzero_pd
#define LOAD _mm256_loadu_pd
#define STORE _mm256_storeu_pd
#define FMA _mm256_fmadd_pd
#define BCAST _mm256_broadcast_sd
  NG_DK_BODY
#undef ZERO
#undef LOAD
#undef STORE
#undef FMA
#undef BCAST
}
#undef NG_DK_ROW
#undef NG_DK_STORE
#undef NG_DK_BODY
#endif

template <typename T>
inline void direct_kernel(bool avx2, int64_t nh, int64_t len, const T* a, int64_t a_rs,
                          int64_t a_hs, const T* b, T* out) {
#if NABLAGRAD_X86
  if (avx2) return direct_kernel_avx2(nh, len, a, a_rs, a_hs, b, out);
#endif
  (void)avx2;
  direct_kernel_portable(nh, len, a, a_rs, a_hs, b, out);
}

// The kernel matrix B (K x ncols) of a gather GEMM, packed for the micro-kernel (panels of NR
// columns, zero-padded: panel p holds B(k, p*NR + j) at [p*K*NR + k*NR + j]) or, when the
// output is narrow (few columns), transposed for dot products (B(k, j) at [j*K + k]).
template <typename T>
struct PackedB {
  int64_t K = 0, ncols = 0;
  bool narrow = false;
  std::vector<T> data;
  template <typename F>
  void pack(int64_t K_, int64_t ncols_, const F& at) {
    constexpr int64_t NR = Tile<T>::NR;
    K = K_;
    ncols = ncols_;
    narrow = ncols * 4 <= NR;
    // K x ncols is (a part of) the kernel, already allocated: these sizes fit in int64.
    checked_product({K, (ncols + NR - 1) / NR * NR}, [] { return "conv2d: packed kernel"; });
    if (narrow) {
      data.assign(static_cast<size_t>(K * ncols), T(0));
      for (int64_t j = 0; j < ncols; ++j)
        for (int64_t k = 0; k < K; ++k) data[j * K + k] = at(k, j);
    } else {
      const int64_t panels = (ncols + NR - 1) / NR;
      data.assign(static_cast<size_t>(panels * K * NR), T(0));
      for (int64_t p = 0; p < panels; ++p)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < NR && p * NR + j < ncols; ++j)
            data[(p * K + k) * NR + j] = at(k, p * NR + j);
    }
  }
};

// Per-thread scratch buffers, reused across calls (no allocation or page faults per tile).
// Slot tells buffers apart that are live at the same time. A kernel never calls another
// kernel while it holds a slot (nested parallel regions run inline on the same thread).
template <typename T, int Slot>
inline T* scratch(size_t n) {
  static thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Rows per tile: the gathered A tile (rows x K) should stay in L2 (~192 KiB of it).
template <typename T>
inline int64_t tile_rows(int64_t K) {
  int64_t rows = (192 * 1024) / (std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(T)));
  rows = rows / kMR * kMR;
  return std::max<int64_t>(kMR, std::min<int64_t>(rows, 20 * kMR));
}

// out rows [0, rows): C(r, :) = A(r, :) B. build(r0, r1, tile, lda) writes A's rows r0..r1-1
// (K values each) into tile; store(r0, r1, ctile, ldc) consumes the finished rows.
// Tiles are fixed (shape-only) and handed to the threads with parallel_for.
template <typename T, typename Build, typename Store>
void gather_gemm(int64_t rows, const PackedB<T>& B, const Build& build, const Store& store) {
  constexpr int64_t NR = Tile<T>::NR, KC = Tile<T>::KC;
  const int64_t K = B.K, ncols = B.ncols;
  const int64_t lda = std::max<int64_t>(K, 1);
  const int64_t MT = tile_rows<T>(K);
  const int64_t ntiles = (rows + MT - 1) / MT;
  const int64_t panels = (ncols + NR - 1) / NR;
  const int64_t ldc = B.narrow ? ncols : panels * NR;
  const bool avx2 = use_avx2();
  // One task per tile, claimed dynamically by the pool's threads: a thread that shares its
  // core with another process simply does fewer tiles (a static half-and-half split would wait
  // for the slow half). The tiles are fixed, so the results do not depend on who runs them.
  parallel_chunks(ntiles, 1, [&](int64_t, int64_t t0, int64_t t1) {
    T* tile = scratch<T, 0>(static_cast<size_t>(MT * lda));
    T* ctile = scratch<T, 1>(static_cast<size_t>(MT * ldc));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * MT, r1 = std::min(rows, r0 + MT), nr = r1 - r0;
      build(r0, r1, tile, lda);
      if (B.narrow) {
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t j = 0; j < ncols; ++j)
            ctile[r * ldc + j] = dot(avx2, tile + r * lda, B.data.data() + j * K, K);
      } else {
        const int64_t nr_pad = round_up(nr, kMR);
        if (nr_pad > nr)
          std::fill(tile + nr * lda, tile + nr_pad * lda, T(0));
        std::fill(ctile, ctile + nr_pad * ldc, T(0));
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
          const int64_t kc = std::min(KC, K - k0);
          for (int64_t p = 0; p < panels; ++p) {
            const T* bp = B.data.data() + (p * K + k0) * NR;
            for (int64_t i = 0; i < nr_pad; i += kMR)
              micro_kernel(avx2, kc, tile + i * lda + k0, lda, int64_t{1}, bp,
                           ctile + i * ldc + p * NR, ldc);
          }
        }
      }
      store(r0, r1, ctile, ldc);
    }
  });
}

// Copies / zeroes a short run of channels without a library call per run (runs are often
// only 1-3 values when C is small); long runs go to memcpy / memset.
template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
  if (n > 64) {
    std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
    return;
  }
  constexpr int64_t B = 32 / sizeof(T);
  int64_t i = 0;
  for (; i + B <= n; i += B) __builtin_memcpy(dst + i, src + i, 32);
  for (; i < n; ++i) dst[i] = src[i];
}
template <typename T>
inline void zero_run(T* dst, int64_t n) {
  if (n > 64) {
    std::memset(dst, 0, sizeof(T) * static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = T(0);
}

// im2col of output pixels [r0, r1) of the forward pass into tile (row r: FH*FW*C values,
// tap-major then channel, matching the kernel's (Q, FH, FW, C) layout). Padding reads as 0.
template <typename T>
void forward_im2col(const Conv2dGeometry& g, const T* x, int64_t r0, int64_t r1, T* tile,
                    int64_t lda) {
  const int64_t C = g.C, FW = g.FW;
  int64_t n = r0 / (g.Ho * g.Wo), ho = (r0 % (g.Ho * g.Wo)) / g.Wo, wo = r0 % g.Wo;
  for (int64_t r = r0; r < r1; ++r) {
    T* row = tile + (r - r0) * lda;
    const int64_t iw0 = wo * g.stride_w - g.pad_left;
    const bool w_inside = iw0 >= 0 && iw0 + FW <= g.W;
    for (int64_t fh = 0; fh < g.FH; ++fh) {
      T* dst = row + fh * FW * C;
      const int64_t ih = ho * g.stride_h + fh - g.pad_top;
      if (ih < 0 || ih >= g.H) {
        zero_run(dst, FW * C);
        continue;
      }
      const T* src = x + ((n * g.H + ih) * g.W) * C;
      if (w_inside) {  // FW taps of one input row are one contiguous run in NHWC
        copy_run(dst, src + iw0 * C, FW * C);
        continue;
      }
      for (int64_t fw = 0; fw < FW; ++fw) {
        const int64_t iw = iw0 + fw;
        if (iw < 0 || iw >= g.W)
          zero_run(dst + fw * C, C);
        else
          copy_run(dst + fw * C, src + iw * C, C);
      }
    }
    if (++wo == g.Wo) {
      wo = 0;
      if (++ho == g.Ho) {
        ho = 0;
        ++n;
      }
    }
  }
}

// The fast paths that first copy the input into a zero-padded buffer (forward_direct,
// backward_weight_smallc) are worth it only when that copy is about the size of the input.
// With a huge padding or stride (valid: the output may be a few pixels) the copy would be
// absurdly large, or its size would not even fit in int64, so those shapes take the im2col
// paths instead, which read the padding as zeros without materialising it.
inline bool padded_copy_is_small(const Conv2dGeometry& g, int64_t rows, int64_t row_values) {
  int64_t elems = 0;
  if (row_values < 0 || !product_fits({g.N, rows, row_values}, elems)) return false;
  const int64_t input = g.N * g.H * g.W * g.C, output = g.N * g.Ho * g.Wo * g.Q;  // allocated
  return elems <= saturating_add(saturating_mul(4, saturating_add(input, output)), int64_t{1} << 22);
}

// Values per padded input row of forward_direct: the padded width, extended on the right so
// that the last block of kMR output columns never reads past a row; -1 when it overflows.
inline int64_t forward_direct_row_values(const Conv2dGeometry& g) {
  const int64_t wblocks = (g.Wo + kMR - 1) / kMR;
  int64_t reach = 0, wpe = 0, values = 0;
  if (!product_fits({wblocks * kMR - 1, g.stride_w}, reach) ||
      __builtin_add_overflow(reach, g.FW, &reach))
    return -1;
  wpe = std::max(g.W + g.pad_left + g.pad_right, reach);
  return product_fits({wpe, g.C}, values) ? values : -1;
}

// Small-depth forward (K = FH*FW*C <= KC, at least NR/4 filters): no im2col. The input is
// copied once into a zero-padded buffer (one pass; extra zero columns on the right so the
// last block of kMR output columns never reads past a row), then for each output row and
// each block of kMR consecutive output columns the direct micro-kernel reads the FH runs of
// FW*C values of its kMR pixels in place (pixel stride S_w*C, kernel-row stride Wpe*C) and
// the results are stored with the bias added: one pass over the output, no C tile to zero
// and re-read. Work is split over (n, ho) output rows; every output element is computed by
// one thread in the same order for any thread count.
template <typename T>
void forward_direct(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  constexpr int64_t NR = Tile<T>::NR;
  const int64_t C = g.C, FH = g.FH, FW = g.FW, Q = g.Q, S_h = g.stride_h, S_w = g.stride_w;
  const int64_t len = FW * C, K = FH * len;
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom;
  const int64_t prow = forward_direct_row_values(g);  // values per padded row (>= 0: see caller)
  Scratch<T> xp(std::max<int64_t>(g.N * Hp * prow, 1), "conv2d: padded input copy");
  // Split only when the copy is large: a pool round trip costs ~0.1 ms, a 1 MiB copy about as much.
  parallel_for(0, g.N * Hp, std::max<int64_t>(1, (int64_t{1} << 18) / prow), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* dst = xp.get() + r * prow;
      const int64_t n = r / Hp, ih = r % Hp - g.pad_top;
      if (ih < 0 || ih >= g.H) {
        std::memset(dst, 0, sizeof(T) * static_cast<size_t>(prow));
        continue;
      }
      std::memset(dst, 0, sizeof(T) * static_cast<size_t>(g.pad_left * C));
      std::memcpy(dst + g.pad_left * C, x + (n * g.H + ih) * g.W * C,
                  sizeof(T) * static_cast<size_t>(g.W * C));
      std::memset(dst + (g.pad_left + g.W) * C, 0,
                  sizeof(T) * static_cast<size_t>(prow - (g.pad_left + g.W) * C));
    }
  });
  PackedB<T> B;
  B.pack(K, Q, [&](int64_t k, int64_t q) { return w[q * K + k]; });
  const int64_t panels = (Q + NR - 1) / NR;
  const bool avx2 = use_avx2();
  const int64_t row_work = std::max<int64_t>(1, g.Wo * Q * K);
  // Tasks of whole output rows (>= ~64K multiply-adds each), claimed dynamically.
  parallel_chunks(g.N * g.Ho, std::max<int64_t>(1, (1 << 16) / row_work), [&](int64_t, int64_t lo, int64_t hi) {
    alignas(64) T out[kMR * NR];
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / g.Ho, ho = r % g.Ho;
      const T* xrow = xp.get() + (n * Hp + ho * S_h) * prow;
      T* yrow = y + r * g.Wo * Q;
      for (int64_t wb = 0; wb < g.Wo; wb += kMR) {
        const int64_t nw = std::min(kMR, g.Wo - wb);
        const T* a = xrow + wb * S_w * C;
        for (int64_t p = 0; p < panels; ++p) {
          direct_kernel(avx2, FH, len, a, S_w * C, prow, B.data.data() + p * K * NR, out);
          const int64_t q0 = p * NR, nq = std::min(NR, Q - q0);
          for (int64_t i = 0; i < nw; ++i) {
            T* dst = yrow + (wb + i) * Q + q0;
            const T* src = out + i * NR;
            if (bias)
              for (int64_t j = 0; j < nq; ++j) dst[j] = src[j] + bias[q0 + j];
            else
              for (int64_t j = 0; j < nq; ++j) dst[j] = src[j];
          }
        }
      }
    }
  });
}

}  // namespace conv_detail

/// Fast forward: y = conv(x, w) + bias, an implicit GEMM
///   Y[(n,ho,wo), q] = sum_{(fh,fw,c)} X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] * W[q, fh, fw, c] + b[q]
/// which is the document's first multi-channel equation (R(v,i,j,f)) with padding read as
/// zeros: rows = N*Ho*Wo pixels, columns = Q, depth = FH*FW*C.
template <typename T>
void conv2d_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q;
  if (K <= conv_detail::Tile<T>::KC && Q * 4 > conv_detail::Tile<T>::NR &&
      conv_detail::padded_copy_is_small(g, g.H + g.pad_top + g.pad_bottom,
                                        conv_detail::forward_direct_row_values(g))) {
    conv_detail::forward_direct(g, x, w, bias, y);  // small depth: no im2col (see above)
    return;
  }
  conv_detail::PackedB<T> B;
  B.pack(K, Q, [&](int64_t k, int64_t q) { return w[q * K + k]; });
  const int64_t rows = g.N * g.Ho * g.Wo;
  conv_detail::gather_gemm<T>(
      rows, B,
      [&](int64_t r0, int64_t r1, T* tile, int64_t lda) {
        conv_detail::forward_im2col(g, x, r0, r1, tile, lda);
      },
      [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* src = ctile + (r - r0) * ldc;
          T* dst = y + r * Q;
          if (bias)
            for (int64_t q = 0; q < Q; ++q) dst[q] = src[q] + bias[q];
          else
            std::memcpy(dst, src, sizeof(T) * Q);
        }
      });
}

namespace conv_detail {

// Input gradient for few input channels (C*4 <= NR), in two passes instead of per-phase dot
// products:
//   1. dcol = dY (N*Ho*Wo x Q) . W (Q x FH*FW*C): one gather GEMM whose rows are dY's
//      contiguous Q-runs (the depth Q is the long axis, the columns FH*FW*C fill whole panels);
//   2. dX[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] += dcol[(n,ho,wo), (fh,fw,c)] (col2im): each
//      dcol entry is the contribution of one tap of one output pixel, i.e. the terms of the
//      phase sums of conv2d_backward_input, added in output-pixel order instead of gathered.
// The products with the dilation zeros are never formed here either; input rows the forward
// pass never reached receive nothing and stay 0.
template <typename T>
void backward_input_col2im(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const int64_t C = g.C, Q = g.Q, FW = g.FW, K = g.FH * FW * C;
  const int64_t rows = g.N * g.Ho * g.Wo;
  Scratch<T> dcol(std::max<int64_t>(rows * K, 1), "conv2d backward: dY.W columns");  // <= 2^26 (caller)
  PackedB<T> B;
  B.pack(Q, K, [&](int64_t q, int64_t k) { return w[q * K + k]; });
  gather_gemm<T>(
      rows, B,
      [&](int64_t r0, int64_t r1, T* tile, int64_t lda) {
        if (lda == Q)
          std::memcpy(tile, dy + r0 * Q, sizeof(T) * static_cast<size_t>((r1 - r0) * Q));
        else
          for (int64_t r = r0; r < r1; ++r) copy_run(tile + (r - r0) * lda, dy + r * Q, Q);
      },
      [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
        for (int64_t r = r0; r < r1; ++r) copy_run(dcol.get() + r * K, ctile + (r - r0) * ldc, K);
      });
  // col2im, image by image (one thread per image, so every dX element receives its
  // contributions in the same (ho, wo, fh) order for any thread count): the FW taps of kernel
  // row fh of output pixel (ho, wo) land on FW consecutive input columns, so each (pixel, fh)
  // adds one contiguous run of FW*C values (clipped at the left/right padding) into dX.
  const T* dc = dcol.get();
  const int64_t run = FW * C;
  parallel_chunks(g.N, 1, [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      T* dxn = dx + n * g.H * g.W * C;
      std::memset(dxn, 0, sizeof(T) * static_cast<size_t>(g.H * g.W * C));
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const T* src = dc + ((n * g.Ho + oh) * g.Wo + ow) * K;
          const int64_t iw0 = ow * g.stride_w - g.pad_left;
          const int64_t f0 = std::max<int64_t>(0, -iw0), f1 = std::min<int64_t>(FW, g.W - iw0);
          if (f1 <= f0) continue;
          for (int64_t fh = 0; fh < g.FH; ++fh) {
            const int64_t ih = oh * g.stride_h + fh - g.pad_top;
            if (ih < 0 || ih >= g.H) continue;
            T* d = dxn + (ih * g.W + iw0 + f0) * C;
            const T* sr = src + fh * run + f0 * C;
            const int64_t len = (f1 - f0) * C;
            for (int64_t k = 0; k < len; ++k) d[k] += sr[k];
          }
        }
    }
  });
}

}  // namespace conv_detail

namespace conv_detail {

// The phase (y + pad) mod S of input row (column) y = y0 < S, without forming y0 + pad mod S
// from sizes that could overflow (S may be as large as int64 allows).
inline int64_t phase_of(int64_t y0, int64_t pad, int64_t S) {
  const int64_t t = pad % S;
  return y0 < S - t ? y0 + t : y0 - (S - t);
}

#if NABLAGRAD_X86
// AVX2 vector helpers of the small-C kernels (one vector of filters; masked loads for a tail).
struct SmallCVecF {
  using T = float;
  using VT = __m256;
  static constexpr int64_t L = 8;
  __attribute__((target("avx2,fma"))) static VT zero() { return _mm256_setzero_ps(); }
  __attribute__((target("avx2,fma"))) static VT load(const T* p, __m256i m, bool full) {
    return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
  }
  __attribute__((target("avx2,fma"))) static VT bcast(const T* p) { return _mm256_broadcast_ss(p); }
  __attribute__((target("avx2,fma"))) static VT fma(VT a, VT b, VT c) { return _mm256_fmadd_ps(a, b, c); }
  __attribute__((target("avx2,fma"))) static VT add(VT a, VT b) { return _mm256_add_ps(a, b); }
  __attribute__((target("avx2,fma"))) static void store(T* p, VT v) { _mm256_storeu_ps(p, v); }
  __attribute__((target("avx2,fma"))) static __m256i mask(int64_t nq) {
    alignas(32) int32_t m[8];
    for (int i = 0; i < 8; ++i) m[i] = i < nq ? -1 : 0;
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
  }
};
struct SmallCVecD {
  using T = double;
  using VT = __m256d;
  static constexpr int64_t L = 4;
  __attribute__((target("avx2,fma"))) static VT zero() { return _mm256_setzero_pd(); }
  __attribute__((target("avx2,fma"))) static VT load(const T* p, __m256i m, bool full) {
    return full ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, m);
  }
  __attribute__((target("avx2,fma"))) static VT bcast(const T* p) { return _mm256_broadcast_sd(p); }
  __attribute__((target("avx2,fma"))) static VT fma(VT a, VT b, VT c) { return _mm256_fmadd_pd(a, b, c); }
  __attribute__((target("avx2,fma"))) static VT add(VT a, VT b) { return _mm256_add_pd(a, b); }
  __attribute__((target("avx2,fma"))) static void store(T* p, VT v) { _mm256_storeu_pd(p, v); }
  __attribute__((target("avx2,fma"))) static __m256i mask(int64_t nq) {
    alignas(32) int64_t m[4];
    for (int i = 0; i < 4; ++i) m[i] = i < nq ? -1 : 0;
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
  }
};
template <typename T> struct SmallCVec;
template <> struct SmallCVec<float> { using type = SmallCVecF; };
template <> struct SmallCVec<double> { using type = SmallCVecD; };

// Input gradient for few input channels (C <= 4), NP consecutive pixels of one phase row at
// once. In a phase, tap t = (th, tw) of pixel ix + p reads the dY pixel src[t] + p*Q (the next
// output column), so one load of the flipped-kernel vector W_t[c, q-block] serves NP pixels:
//   out[p*ostride + c] = sum_t sum_q src[t][p*Q + q] * bt[c*K + t*Q + q]
// (the phase sum of conv2d_backward_input; src[t] == nullptr: the tap reads a padding row).
// NP*C vector accumulators, reduced in a fixed order at the end.
template <typename V, int C, int NP>
__attribute__((target("avx2,fma"))) inline void smallc_dx_block_avx2(
    const typename V::T* const* src, int64_t ntap, int64_t Q, const typename V::T* bt,
    int64_t K, typename V::T* out, int64_t ostride) {
  using T = typename V::T;
  using VT = typename V::VT;
  constexpr int64_t L = V::L;
  VT acc[NP * C];
  T tail[NP * C];
#pragma GCC unroll 16
  for (int i = 0; i < NP * C; ++i) {
    acc[i] = V::zero();
    tail[i] = 0;
  }
  const __m256i m = V::mask(L);
  for (int64_t t = 0; t < ntap; ++t) {
    const T* a = src[t];
    if (!a) continue;
    const T* b = bt + t * Q;
    int64_t k = 0;
    for (; k + L <= Q; k += L) {
      VT wv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) wv[c] = V::load(b + c * K + k, m, true);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) {
        const VT d = V::load(a + p * Q + k, m, true);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[p * C + c] = V::fma(d, wv[c], acc[p * C + c]);
      }
    }
    for (; k < Q; ++k)
      for (int p = 0; p < NP; ++p)
        for (int c = 0; c < C; ++c) tail[p * C + c] += a[p * Q + k] * b[c * K + k];
  }
  for (int p = 0; p < NP; ++p)
    for (int c = 0; c < C; ++c) {
      alignas(32) T v[L];
      V::store(v, acc[p * C + c]);
      T s = v[0];
      if (L == 8)
        s = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4 % L] + v[5 % L]) + (v[6 % L] + v[7 % L]));
      else
        s = (v[0] + v[1]) + (v[2] + v[3]);
      out[p * ostride + c] = s + tail[p * C + c];
    }
}

// Pixels per block: NP*C <= 8 accumulators.
template <typename T>
inline int64_t smallc_dx_np(int64_t C) { return C == 1 ? 8 : C == 2 ? 4 : 2; }

template <typename T>
inline void smallc_dx_block(int64_t C, const T* const* src, int64_t ntap, int64_t Q,
                            const T* bt, int64_t K, T* out, int64_t ostride) {
  using V = typename SmallCVec<T>::type;
  switch (C) {
    case 1: return smallc_dx_block_avx2<V, 1, 8>(src, ntap, Q, bt, K, out, ostride);
    case 2: return smallc_dx_block_avx2<V, 2, 4>(src, ntap, Q, bt, K, out, ostride);
    case 3: return smallc_dx_block_avx2<V, 3, 2>(src, ntap, Q, bt, K, out, ostride);
    case 4: return smallc_dx_block_avx2<V, 4, 2>(src, ntap, Q, bt, K, out, ostride);
    default: break;
  }
}
#endif

// Input gradient for C <= 4 with AVX2: the phase decomposition of conv2d_backward_input,
//   dX[n,y,x,c] = sum_{fh = yp mod S_h, fw = xp mod S_w} sum_q dY[n, (yp-fh)/S_h, (xp-fw)/S_w, q] W[q,fh,fw,c]
// computed as dot products straight from dY's Q-runs (no im2col, no dY.W buffer, no col2im).
// In the interior columns of a phase row every tap is inside [0, Wo), so NP pixels share each
// kernel load (smallc_dx_block); the few edge pixels, where some taps read the padding, go
// through narrow_row one by one. Work is split over (n, phase row); each dX element is written
// by one thread in a fixed order.
template <typename T>
void backward_input_smallc(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
#if NABLAGRAD_X86
  const int64_t S_h = g.stride_h, S_w = g.stride_w, Q = g.Q, C = g.C;
  const int64_t NP = smallc_dx_np<T>(C);
  for (int64_t y0 = 0; y0 < std::min(S_h, g.H); ++y0) {  // the phases that own rows
    const int64_t ph = phase_of(y0, g.pad_top, S_h);
    const int64_t Hph = (g.H - 1 - y0) / S_h + 1;
    std::vector<int64_t> taps_h;
    for (int64_t fh = ph; fh < g.FH; fh += S_h) taps_h.push_back(fh);
    for (int64_t x0 = 0; x0 < std::min(S_w, g.W); ++x0) {
      const int64_t pw = phase_of(x0, g.pad_left, S_w);
      const int64_t Wph = (g.W - 1 - x0) / S_w + 1;
      if (g.N * Hph * Wph == 0) continue;
      std::vector<int64_t> taps_w;
      for (int64_t fw = pw; fw < g.FW; fw += S_w) taps_w.push_back(fw);
      const int64_t nth = static_cast<int64_t>(taps_h.size()), ntw = static_cast<int64_t>(taps_w.size());
      std::vector<int64_t> off_h(nth), off_w(ntw);
      for (int64_t th = 0; th < nth; ++th) off_h[th] = (y0 + g.pad_top - taps_h[th]) / S_h;
      for (int64_t tw = 0; tw < ntw; ++tw) off_w[tw] = (x0 + g.pad_left - taps_w[tw]) / S_w;
      // Interior columns [ix_lo, ix_hi): 0 <= ix + off_w[tw] < Wo for every tap.
      int64_t ix_lo = 0, ix_hi = Wph;
      for (int64_t tw = 0; tw < ntw; ++tw) {
        ix_lo = std::max(ix_lo, -off_w[tw]);
        ix_hi = std::min(ix_hi, g.Wo - off_w[tw]);
      }
      ix_lo = std::min(ix_lo, Wph);
      ix_hi = std::max(ix_hi, ix_lo);
      // Flipped sub-kernel of the phase, transposed: bt[c*K + (th*ntw + tw)*Q + q] = W[q,fh,fw,c].
      const int64_t K = nth * ntw * Q;
      std::vector<T> bt(static_cast<size_t>(std::max<int64_t>(C * K, 1)));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < nth * ntw; ++t)
          for (int64_t q = 0; q < Q; ++q)
            bt[c * K + t * Q + q] =
                w[((q * g.FH + taps_h[t / ntw]) * g.FW + taps_w[t % ntw]) * C + c];
      const int64_t prow_work = std::max<int64_t>(1, Wph * K * C);
      parallel_for(0, g.N * Hph, std::max<int64_t>(1, (int64_t{1} << 15) / prow_work), [&](int64_t lo, int64_t hi) {
        std::vector<const T*> src(static_cast<size_t>(std::max<int64_t>(nth * ntw, 1)));
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t n = r / Hph, iy = r % Hph;
          T* dxrow = dx + ((n * g.H + y0 + iy * S_h) * g.W + x0) * C;
          if (nth * ntw == 0) {  // no kernel tap ever reaches these pixels
            for (int64_t ix = 0; ix < Wph; ++ix) zero_run(dxrow + ix * S_w * C, C);
            continue;
          }
          auto set_src = [&](int64_t ix, bool check_w) {
            for (int64_t th = 0; th < nth; ++th) {
              const int64_t ho = iy + off_h[th];
              const bool h_ok = ho >= 0 && ho < g.Ho;
              for (int64_t tw = 0; tw < ntw; ++tw) {
                const int64_t wo = ix + off_w[tw];
                const bool ok = h_ok && (!check_w || (wo >= 0 && wo < g.Wo));
                src[th * ntw + tw] = ok ? dy + ((n * g.Ho + ho) * g.Wo + wo) * Q : nullptr;
              }
            }
          };
          auto one = [&](int64_t ix) {
            set_src(ix, true);
            narrow_row(true, src.data(), nth * ntw, Q, bt.data(), K, C, dxrow + ix * S_w * C);
          };
          int64_t ix = 0;
          for (; ix < ix_lo; ++ix) one(ix);
          for (; ix + NP <= ix_hi; ix += NP) {
            set_src(ix, false);
            smallc_dx_block(C, src.data(), nth * ntw, Q, bt.data(), K, dxrow + ix * S_w * C,
                            S_w * C);
          }
          for (; ix < Wph; ++ix) one(ix);
        }
      });
    }
  }
#else
  (void)g, (void)dy, (void)w, (void)dx;
#endif
}

}  // namespace conv_detail

/// Fast input gradient by S_h x S_w phase decomposition. The document computes
///   dX = crop( conv_stride1( pad(dilate(dY, S), F-1 [+ r]), flip_kernel(W) ) ).
/// Of the F_h*F_w flipped taps that meet a padded-input row yp = y + pt, only those with
/// fh = yp (mod S_h) land on a non-inserted (non-zero) entry of the dilated dY, at
/// ho = (yp - fh) / S_h. So the pixels of dX split into phases (yp mod S_h, xp mod S_w); each
/// phase is a stride-1 gather GEMM of the UNdilated dY with the sub-kernel of its taps:
///   dX[n,y,x,c] = sum_{fh = yp mod S, fw = xp mod S} sum_q dY[n, (yp-fh)/S, (xp-fw)/S, q] W[q,fh,fw,c]
/// (terms with ho, wo outside [0,Ho) x [0,Wo) are the padding zeros). No multiplications by
/// the inserted zeros; for S = 1 it is exactly the padded flipped-kernel convolution. Rows the
/// forward pass never reached, and phases with no taps (S > F), get zeros.
template <typename T>
void conv2d_backward_input(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const int64_t S_h = g.stride_h, S_w = g.stride_w, Q = g.Q, C = g.C;
  const int64_t Kfull = g.FH * g.FW * C;
  // 1-2 channels, stride 1, at most 3x3 taps, AVX2: direct dot products (measured faster than
  // GEMM + col2im only there; e.g. 64x28x28x1 -> 32, 3x3: 1.5 vs 2.2 ms at 1 thread, while
  // C = 3-4, S = 2 or 5x5 kernels were slower and keep the paths below).
  if (C <= 2 && S_h == 1 && S_w == 1 && g.FH * g.FW <= 9 && conv_detail::use_avx2()) {
    conv_detail::backward_input_smallc(g, dy, w, dx);
    return;
  }
  int64_t col_values = 0;  // the dY.W buffer of col2im: N*Ho*Wo*FH*FW*C (may overflow int64)
  if (C * 4 <= conv_detail::Tile<T>::NR && Kfull * 4 > conv_detail::Tile<T>::NR &&
      product_fits({g.N, g.Ho, g.Wo, Kfull}, col_values) && col_values <= (int64_t{1} << 26)) {
    conv_detail::backward_input_col2im(g, dy, w, dx);  // few channels: GEMM + tap-table gather
    return;
  }
  // Phases are visited by their first row y0 (first column x0): only the min(S, H) phases
  // that own input rows exist (a stride of 2^40 has 2^40 phases, all but H of them empty).
  for (int64_t y0 = 0; y0 < std::min(S_h, g.H); ++y0) {
    // Rows y of this phase: (y + pad_top) mod S_h == ph.
    const int64_t ph = conv_detail::phase_of(y0, g.pad_top, S_h);
    const int64_t Hph = (g.H - 1 - y0) / S_h + 1;
    std::vector<int64_t> taps_h;
    for (int64_t fh = ph; fh < g.FH; fh += S_h) taps_h.push_back(fh);
    for (int64_t x0 = 0; x0 < std::min(S_w, g.W); ++x0) {
      const int64_t pw = conv_detail::phase_of(x0, g.pad_left, S_w);
      const int64_t Wph = (g.W - 1 - x0) / S_w + 1;
      const int64_t rows = g.N * Hph * Wph;
      if (rows == 0) continue;
      std::vector<int64_t> taps_w;
      for (int64_t fw = pw; fw < g.FW; fw += S_w) taps_w.push_back(fw);
      const int64_t nth = static_cast<int64_t>(taps_h.size()), ntw = static_cast<int64_t>(taps_w.size());
      auto pixel = [&](int64_t r, int64_t& n, int64_t& iy, int64_t& ix) {
        n = r / (Hph * Wph);
        const int64_t rem = r % (Hph * Wph);
        iy = rem / Wph;
        ix = rem % Wph;
      };
      auto next_pixel = [&](int64_t& n, int64_t& iy, int64_t& ix) {
        if (++ix == Wph) {
          ix = 0;
          if (++iy == Hph) {
            iy = 0;
            ++n;
          }
        }
      };
      if (nth * ntw == 0) {  // no kernel tap ever reaches these pixels
        parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
          int64_t n, iy, ix;
          pixel(r0, n, iy, ix);
          for (int64_t r = r0; r < r1; ++r, next_pixel(n, iy, ix))
            conv_detail::zero_run(dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C, C);
        });
        continue;
      }
      // For y = y0 + iy*S_h and a tap fh of this phase, (y + pt - fh) is a multiple of S_h:
      // ho = iy + off_h[th] with off_h[th] = (y0 + pt - fh) / S_h (exact). Same for columns.
      std::vector<int64_t> off_h(nth), off_w(ntw);
      for (int64_t th = 0; th < nth; ++th) off_h[th] = (y0 + g.pad_top - taps_h[th]) / S_h;
      for (int64_t tw = 0; tw < ntw; ++tw) off_w[tw] = (x0 + g.pad_left - taps_w[tw]) / S_w;
      // Sub-kernel of this phase: B((th, tw, q), c) = W[q, taps_h[th], taps_w[tw], c].
      const int64_t K = nth * ntw * Q;
      conv_detail::PackedB<T> B;
      B.pack(K, C, [&](int64_t k, int64_t c) {
        const int64_t q = k % Q, t = k / Q;
        const int64_t fh = taps_h[t / ntw], fw = taps_w[t % ntw];
        return w[((q * g.FH + fh) * g.FW + fw) * C + c];
      });
      if (B.narrow) {  // few input channels: dot products straight from dY, no im2col
        const bool avx2 = conv_detail::use_avx2();
        parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
          std::vector<const T*> src(static_cast<size_t>(nth * ntw));
          int64_t n, iy, ix;
          pixel(r0, n, iy, ix);
          for (int64_t r = r0; r < r1; ++r, next_pixel(n, iy, ix)) {
            for (int64_t th = 0; th < nth; ++th) {
              const int64_t ho = iy + off_h[th];
              const bool h_ok = ho >= 0 && ho < g.Ho;
              for (int64_t tw = 0; tw < ntw; ++tw) {
                const int64_t wo = ix + off_w[tw];
                src[th * ntw + tw] =
                    h_ok && wo >= 0 && wo < g.Wo ? dy + ((n * g.Ho + ho) * g.Wo + wo) * Q : nullptr;
              }
            }
            conv_detail::narrow_row(avx2, src.data(), nth * ntw, Q, B.data.data(), K, C,
                                    dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C);
          }
        });
        continue;
      }
      conv_detail::gather_gemm<T>(
          rows, B,
          [&](int64_t r0, int64_t r1, T* tile, int64_t lda) {
            int64_t n, iy, ix;
            pixel(r0, n, iy, ix);
            for (int64_t r = r0; r < r1; ++r, next_pixel(n, iy, ix)) {
              T* row = tile + (r - r0) * lda;
              for (int64_t th = 0; th < nth; ++th) {
                const int64_t ho = iy + off_h[th];
                const bool h_ok = ho >= 0 && ho < g.Ho;
                const T* src_row = dy + (n * g.Ho + ho) * g.Wo * Q;
                for (int64_t tw = 0; tw < ntw; ++tw) {
                  T* dst = row + (th * ntw + tw) * Q;
                  const int64_t wo = ix + off_w[tw];
                  if (h_ok && wo >= 0 && wo < g.Wo)
                    conv_detail::copy_run(dst, src_row + wo * Q, Q);
                  else
                    conv_detail::zero_run(dst, Q);
                }
              }
            }
          },
          [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
            int64_t n, iy, ix;
            pixel(r0, n, iy, ix);
            for (int64_t r = r0; r < r1; ++r, next_pixel(n, iy, ix))
              conv_detail::copy_run(dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C,
                                    ctile + (r - r0) * ldc, C);
          });
    }
  }
}

namespace conv_detail {

// Kernel gradient for few input channels (C <= 4), no im2col and no GEMM packing:
//   dW[q, fh, fw, c] = sum_{(n,ho,wo)} dY[n,ho,wo,q] * Xp[n, ho*S_h + fh, wo*S_w + fw, c]
//   db[q]            = sum_{(n,ho,wo)} dY[n,ho,wo,q]
// (the document's dk(h,c,d,r) over the gamma = 1 entries of the dilated dY, and dL/db = sum G).
// The input is copied once into a zero-padded buffer Xp (one padded row = prow values), so a
// tap (fh, j = fw*C + c) of output pixel (n, ho, wo) is Xp_row(n, ho*S_h + fh)[wo*S_w*C + j]:
// the FW*C taps of one kernel row are one contiguous run. The taps are cut into blocks of
// NRW <= 4 kernel rows x NCL <= 3 consecutive run values (<= 12 taps), the filters into blocks
// of one vector (8 floats / 4 doubles, the last one masked); for each (tap block, filter block)
// the <= 12 vector accumulators acc[t] += X(pixel, t) * dY(pixel, q-block) (plus the bias sum)
// stay in registers over all pixels of a chunk. Chunks are runs of whole output rows whose
// size depends on the shape only; each chunk writes its own partial (K x Q) and the partials
// are added in chunk order, so the result is the same for any thread count.
struct SmallCPlan {
  int64_t Hp, prow, xs, K, len;
  std::vector<int64_t> row_start, row_count, col_start, col_count;  // tap blocks
};

template <typename T>
inline void smallc_dw_block_portable(const SmallCPlan& pl, const T* xp, const T* dy,
                                     int64_t Ho, int64_t Wo, int64_t S_h, int64_t Q, int64_t r0,
                                     int64_t r1, int64_t fh0, int64_t nrw, int64_t j0,
                                     int64_t ncl, int64_t q0, int64_t nq, T* acc /*12 x 8*/,
                                     T* accb /*8 or nullptr*/) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / Ho, ho = r % Ho;
    const T* xb = xp + (n * pl.Hp + ho * S_h + fh0) * pl.prow + j0;
    const T* d = dy + r * Wo * Q + q0;
    for (int64_t wo = 0; wo < Wo; ++wo, xb += pl.xs, d += Q) {
      for (int64_t a = 0; a < nrw; ++a)
        for (int64_t b = 0; b < ncl; ++b) {
          const T xv = xb[a * pl.prow + b];
          T* ac = acc + (a * ncl + b) * 8;
          for (int64_t l = 0; l < nq; ++l) ac[l] += xv * d[l];
        }
      if (accb)
        for (int64_t l = 0; l < nq; ++l) accb[l] += d[l];
    }
  }
}

#if NABLAGRAD_X86

// One (tap block, filter block) over output rows [r0, r1): NRW x NCL accumulators (+ bias).
template <typename V, int NRW, int NCL>
__attribute__((target("avx2,fma"))) inline void smallc_dw_block_avx2(
    const SmallCPlan& pl, const typename V::T* xp, const typename V::T* dy, int64_t Ho,
    int64_t Wo, int64_t S_h, int64_t Q, int64_t r0, int64_t r1, int64_t fh0, int64_t j0,
    int64_t q0, int64_t nq, typename V::T* acc, typename V::T* accb) {
  using T = typename V::T;
  using VT = typename V::VT;
  const bool full = nq == V::L;
  const __m256i m = V::mask(nq);
  VT a[NRW * NCL];
#pragma GCC unroll 12
  for (int t = 0; t < NRW * NCL; ++t) a[t] = V::zero();
  VT b = V::zero();
  const int64_t prow = pl.prow, xs = pl.xs;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / Ho, ho = r % Ho;
    const T* xb = xp + (n * pl.Hp + ho * S_h + fh0) * prow + j0;
    const T* d = dy + r * Wo * Q + q0;
    for (int64_t wo = 0; wo < Wo; ++wo, xb += xs, d += Q) {
      const VT dv = V::load(d, m, full);
#pragma GCC unroll 4
      for (int ra = 0; ra < NRW; ++ra)
#pragma GCC unroll 3
        for (int cb = 0; cb < NCL; ++cb)
          a[ra * NCL + cb] = V::fma(V::bcast(xb + ra * prow + cb), dv, a[ra * NCL + cb]);
      b = V::add(b, dv);
    }
  }
#pragma GCC unroll 12
  for (int t = 0; t < NRW * NCL; ++t) V::store(acc + t * 8, a[t]);
  if (accb) V::store(accb, b);
}

template <typename T>
inline void smallc_dw_block_avx2_dispatch(int64_t nrw, int64_t ncl, const SmallCPlan& pl,
                                          const T* xp, const T* dy, int64_t Ho, int64_t Wo,
                                          int64_t S_h, int64_t Q, int64_t r0, int64_t r1,
                                          int64_t fh0, int64_t j0, int64_t q0, int64_t nq,
                                          T* acc, T* accb) {
  using V = typename SmallCVec<T>::type;
#define NG_SC(R, Cc)                                                                         \
  case (R) * 4 + (Cc):                                                                       \
    return smallc_dw_block_avx2<V, R, Cc>(pl, xp, dy, Ho, Wo, S_h, Q, r0, r1, fh0, j0, q0, nq, \
                                          acc, accb);
  switch (nrw * 4 + ncl) {
    NG_SC(1, 1) NG_SC(1, 2) NG_SC(1, 3) NG_SC(2, 1) NG_SC(2, 2) NG_SC(2, 3)
    NG_SC(3, 1) NG_SC(3, 2) NG_SC(3, 3) NG_SC(4, 1) NG_SC(4, 2) NG_SC(4, 3)
    default: break;
  }
#undef NG_SC
}
#endif

template <typename T>
void backward_weight_smallc(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, T* db) {
  const int64_t C = g.C, FH = g.FH, FW = g.FW, Q = g.Q, S_h = g.stride_h;
  SmallCPlan pl;
  pl.len = FW * C;
  pl.K = FH * pl.len;
  pl.Hp = g.H + g.pad_top + g.pad_bottom;
  pl.prow = (g.W + g.pad_left + g.pad_right) * C;
  pl.xs = saturating_mul(g.stride_w, C);  // only multiplied by output columns, which exist
  const int64_t K = pl.K;
  // Tap blocks: kernel rows in groups of <= 4, each run of FW*C values in pieces of <= 3
  // (balanced sizes), i.e. <= 12 accumulators per block.
  const int64_t nrg = (FH + 3) / 4, ncg = (pl.len + 2) / 3;
  for (int64_t i = 0; i < nrg; ++i) {
    pl.row_start.push_back(FH * i / nrg);
    pl.row_count.push_back(FH * (i + 1) / nrg - FH * i / nrg);
  }
  for (int64_t i = 0; i < ncg; ++i) {
    pl.col_start.push_back(pl.len * i / ncg);
    pl.col_count.push_back(pl.len * (i + 1) / ncg - pl.len * i / ncg);
  }
  // Zero-padded copy of the input (Xp of the document); the caller checked that its size
  // fits and is about that of the input (padded_copy_is_small).
  const int64_t rows_p = g.N * pl.Hp;
  Scratch<T> xp(std::max<int64_t>(rows_p * pl.prow, 1), "conv2d backward: padded input copy");
  parallel_for(0, rows_p, std::max<int64_t>(1, (int64_t{1} << 18) / pl.prow), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* dst = xp.get() + r * pl.prow;
      const int64_t n = r / pl.Hp, ih = r % pl.Hp - g.pad_top;
      if (ih < 0 || ih >= g.H) {
        std::memset(dst, 0, sizeof(T) * static_cast<size_t>(pl.prow));
        continue;
      }
      std::memset(dst, 0, sizeof(T) * static_cast<size_t>(g.pad_left * C));
      std::memcpy(dst + g.pad_left * C, x + (n * g.H + ih) * g.W * C,
                  sizeof(T) * static_cast<size_t>(g.W * C));
      std::memset(dst + (g.pad_left + g.W) * C, 0,
                  sizeof(T) * static_cast<size_t>(pl.prow - (g.pad_left + g.W) * C));
    }
  });
  // Fixed chunks of whole output rows: ~32 KiB of dY each (so a chunk's dY stays in L2 while
  // the tap blocks re-read it), at most 4096 chunks. A function of the shape only.
  const int64_t out_rows = g.N * g.Ho;
  const int64_t row_bytes = std::max<int64_t>(1, g.Wo * Q * static_cast<int64_t>(sizeof(T)));
  int64_t chunk_rows = std::max<int64_t>(1, (int64_t{32} << 10) / row_bytes);
  chunk_rows = std::max(chunk_rows, (out_rows + 4095) / 4096);
  const int64_t nchunks = std::max<int64_t>(1, (out_rows + chunk_rows - 1) / chunk_rows);
  const char* const what_p = "conv2d backward: weight partial sums";
  const char* const what_b = "conv2d backward: bias partial sums";
  Scratch<T> partial(checked_product({nchunks, K, Q}, what_p), what_p, true);
  Scratch<T> dbpartial(checked_product({nchunks, Q}, what_b), what_b, true);
  const bool avx2 = use_avx2();
  constexpr int64_t VL = 32 / sizeof(T);  // filters per block: one AVX2 vector
  parallel_chunks(out_rows, chunk_rows, [&](int64_t ci, int64_t r0, int64_t r1) {
    T* P = partial.get() + ci * K * Q;  // P[k*Q + q], k = fh*len + j
    T* dbp = dbpartial.get() + ci * Q;
    alignas(32) T acc[12 * 8];
    alignas(32) T accb[8];
    for (int64_t q0 = 0; q0 < Q; q0 += VL) {
      const int64_t nq = std::min(VL, Q - q0);
      for (size_t ri = 0; ri < pl.row_start.size(); ++ri)
        for (size_t cj = 0; cj < pl.col_start.size(); ++cj) {
          const int64_t fh0 = pl.row_start[ri], nrw = pl.row_count[ri];
          const int64_t j0 = pl.col_start[cj], ncl = pl.col_count[cj];
          T* accb_p = (ri == 0 && cj == 0) ? accb : nullptr;  // db with the first tap block
#if NABLAGRAD_X86
          if (avx2) {
            smallc_dw_block_avx2_dispatch(nrw, ncl, pl, xp.get(), dy, g.Ho, g.Wo, S_h, Q, r0,
                                          r1, fh0, j0, q0, nq, acc, accb_p);
          } else
#endif
          {
            (void)avx2;
            std::fill(acc, acc + 12 * 8, T(0));
            std::fill(accb, accb + 8, T(0));
            smallc_dw_block_portable(pl, xp.get(), dy, g.Ho, g.Wo, S_h, Q, r0, r1, fh0, nrw,
                                     j0, ncl, q0, nq, acc, accb_p);
          }
          for (int64_t a = 0; a < nrw; ++a)
            for (int64_t b = 0; b < ncl; ++b) {
              const int64_t k = (fh0 + a) * pl.len + j0 + b;
              for (int64_t l = 0; l < nq; ++l) P[k * Q + q0 + l] = acc[(a * ncl + b) * 8 + l];
            }
          if (accb_p)
            for (int64_t l = 0; l < nq; ++l) dbp[q0 + l] = accb[l];
        }
    }
  });
  // Partials in chunk order: dW[q, k] = sum_c P_c[k, q], db[q] = sum_c dbP_c[q].
  const T* Pc = partial.get();
  const T* dbc = dbpartial.get();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t q = 0; q < Q; ++q) {
      T s = Pc[k * Q + q];
      for (int64_t c = 1; c < nchunks; ++c) s += Pc[(c * K + k) * Q + q];
      dw[q * K + k] = s;
    }
  if (db)
    for (int64_t q = 0; q < Q; ++q) {
      T s = dbc[q];
      for (int64_t c = 1; c < nchunks; ++c) s += dbc[c * Q + q];
      db[q] = s;
    }
}

}  // namespace conv_detail

/// Fast kernel gradient (and bias gradient when db != nullptr):
///   dW[q, (fh,fw,c)] = sum_{(n,ho,wo)} dY[n,ho,wo,q] * X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c]
///   db[q]            = sum_{(n,ho,wo)} dY[n,ho,wo,q]
/// This is the document's dk(h,c,d,r) = sum_{w,i,j} gamma(i,j) dR(w,i,j,h) I(w,c+i,d+j,r)
/// summed only over the non-zero (gamma = 1) entries i = ho*S, j = wo*S of the dilated dY.
/// As a GEMM: dW^T (K x Q) = im2col(X)^T (K x pixels) * dY (pixels x Q). The pixel reduction is
/// split into fixed chunks (a function of the shape only); each chunk accumulates into its own
/// partial buffer, the partials are added in chunk order. db is fused into the dY packing.
template <typename T>
void conv2d_backward_weight(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, T* db) {
  using namespace conv_detail;
  if (g.C <= 4 && g.N * g.Ho > 0 &&  // few input channels: direct, no im2col (see above)
      padded_copy_is_small(g, g.H + g.pad_top + g.pad_bottom, (g.W + g.pad_left + g.pad_right) * g.C)) {
    backward_weight_smallc(g, x, dy, dw, db);
    return;
  }
  constexpr int64_t NR = Tile<T>::NR;
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q;
  const int64_t Kpad = round_up(K, kMR);
  const int64_t panels = (Q + NR - 1) / NR, ldq = panels * NR;
  const int64_t pixels = g.N * g.Ho * g.Wo;
  // Pixel sub-tile: the im2col tile (PT x Kpad) stays in L2.
  int64_t PT = (160 * 1024) / (Kpad * static_cast<int64_t>(sizeof(T)));
  PT = std::max<int64_t>(16, std::min<int64_t>(256, PT / 16 * 16));
  // Fixed chunking: about 16 chunks, a whole number of sub-tiles each, partials capped ~64 MiB.
  int64_t nchunk_target = 16;
  const int64_t partial_bytes = Kpad * ldq * static_cast<int64_t>(sizeof(T));
  nchunk_target = std::max<int64_t>(1, std::min<int64_t>(nchunk_target, (64 << 20) / partial_bytes));
  const int64_t chunk = std::max<int64_t>(PT, round_up((pixels + nchunk_target - 1) / nchunk_target, PT));
  const int64_t nchunks = std::max<int64_t>(1, (pixels + chunk - 1) / chunk);
  const char* const what_p = "conv2d backward: weight partial sums";
  const char* const what_b = "conv2d backward: bias partial sums";
  Scratch<T> partial_buf(checked_product({nchunks, Kpad, ldq}, what_p), what_p, true);
  Scratch<T> dbpartial_buf(checked_product({nchunks, Q}, what_b), what_b, true);
  T* const partial = partial_buf.get();
  T* const dbpartial = dbpartial_buf.get();
  const bool avx2 = use_avx2();
  parallel_chunks(pixels, chunk, [&](int64_t ci, int64_t lo, int64_t hi) {
    std::vector<T> tile(static_cast<size_t>(PT * Kpad), T(0));  // columns K..Kpad stay zero
    std::vector<T> dyp(static_cast<size_t>(panels * PT * NR), T(0));
    T* P = partial + ci * Kpad * ldq;
    T* dbp = dbpartial + ci * Q;
    for (int64_t p0 = lo; p0 < hi; p0 += PT) {
      const int64_t p1 = std::min(hi, p0 + PT), np = p1 - p0;
      forward_im2col(g, x, p0, p1, tile.data(), Kpad);
      for (int64_t p = p0; p < p1; ++p) {  // pack dY rows into NR-wide panels; fused db
        const T* src = dy + p * Q;
        for (int64_t q = 0; q < Q; ++q) {
          dyp[((q / NR) * PT + (p - p0)) * NR + q % NR] = src[q];
          dbp[q] += src[q];
        }
      }
      for (int64_t pn = 0; pn < panels; ++pn)
        for (int64_t i = 0; i < Kpad; i += kMR)
          micro_kernel(avx2, np, tile.data() + i, int64_t{1}, Kpad, dyp.data() + pn * PT * NR,
                       P + i * ldq + pn * NR, ldq);
    }
  });
  // Partials in chunk order: dW[q, k] = sum_c P_c[k, q].
  parallel_for(0, K, std::max<int64_t>(64, (int64_t{1} << 16) / (Q * nchunks)), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t q = 0; q < Q; ++q) {
        T s = partial[k * ldq + q];
        for (int64_t c = 1; c < nchunks; ++c) s += partial[(c * Kpad + k) * ldq + q];
        dw[q * K + k] = s;
      }
  });
  if (db)
    for (int64_t q = 0; q < Q; ++q) {
      T s = dbpartial[q];
      for (int64_t c = 1; c < nchunks; ++c) s += dbpartial[c * Q + q];
      db[q] = s;
    }
}

}  // namespace kernels
}  // namespace nablagrad
