// nablagrad/kernels/conv2d/geometry.h - the geometry of a 2-D convolution (NHWC), the
// reference passes (the design document's equations written literally: pad, dilate,
// flip_kernel, stride-1 convolution, crop) and small helpers shared by the fast passes.
//
//   input  x  : (N, H, W, C)      rows H, columns W, channels innermost
//   kernel w  : (Q, FH, FW, C)    Q filters (output channels)
//   bias   b  : (Q,)              may be nullptr
//   output y  : (N, Ho, Wo, Q)    Ho = (H + pad_top + pad_bottom - FH) / stride_h + 1 (floor)
//
// See docs/convolution.md ("Output size", "Backward, in my own words") for the derivation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../checked.h"
#include "../../tensor.h"
#include "../../threading.h"
#include "microkernel.h"

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

/// One tap (a, b) of flip_kernel: k_r(c, a, b, q) = k(q, FH-1-a, FW-1-b, c) for every q and c,
/// a Q x C transpose done in 16 x 16 blocks (a value at a time, in order, the reads of a block
/// 16 runs of C values and its writes 16 runs of Q: the loop over c outside q had each read a
/// cache line of its own, 0.12 ms of a 0.57 ms input gradient at (2,14,14,48->64, 7x7)).
template <typename T>
void flip_kernel_tap(const T* w, int64_t Q, int64_t FH, int64_t FW, int64_t C, int64_t a, int64_t b, T* out) {
  const int64_t taps = FH * FW;
  const T* src = w + ((FH - 1 - a) * FW + (FW - 1 - b)) * C;  // k(q, ., ., c) at src[q taps C + c]
  T* dst = out + (a * FW + b) * Q;                            // k_r(c, a, b, q) at dst[c taps Q + q]
  for (int64_t c0 = 0; c0 < C; c0 += 16)
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      const int64_t c1 = std::min(C, c0 + 16), q1 = std::min(Q, q0 + 16);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t q = q0; q < q1; ++q) dst[c * taps * Q + q] = src[q * taps * C + c];
    }
}

/// flip_kernel: (Q, FH, FW, C) -> (C, FH, FW, Q), k_r(c, a, b, q) = k(q, FH-1-a, FW-1-b, c):
/// both spatial axes flipped and the roles of Q and C exchanged (the document's k_r).
template <typename T>
void flip_kernel(const T* w, int64_t Q, int64_t FH, int64_t FW, int64_t C, T* out) {
  for (int64_t a = 0; a < FH; ++a)
    for (int64_t b = 0; b < FW; ++b) flip_kernel_tap(w, Q, FH, FW, C, a, b, out);
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
// Helpers shared by the fast passes.
// ============================================================================================
namespace conv_detail {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The gemm() paths (forward_gemm, backward_input_col2im_gemm, backward_weight_im2col_gemm) go
// through a buffer of im2col (or dY.W) rows in blocks of about this many bytes.
constexpr int64_t kGemmPathBlockBytes = int64_t{8} << 20;

// The number of units of `unit` values each that fit in a block of the gemm() paths, at least
// 1 (a unit larger than the block makes a block of its own size) and at most `most`.
template <typename T>
inline int64_t gemm_path_block(int64_t unit, int64_t most) {
  const int64_t budget = kGemmPathBlockBytes / static_cast<int64_t>(sizeof(T));
  return std::max<int64_t>(1, std::min(std::max<int64_t>(most, 1), budget / std::max<int64_t>(unit, 1)));
}

// A std::vector allocator of 64-byte aligned storage (a cache line, a zmm vector). The kernels'
// vector loads from packed operands and scratch (the packed kernel panels above all) are
// whole vectors at multiples of 64 bytes from the start: std::vector's own allocator gave
// addresses 16 or 48 past a line, so every 64-byte load of a packed panel straddled two lines
// (AVX-512) and every other 32-byte one (AVX2). Indirect forward, 2 threads, ms, the panel
// 16 / 48 past a line -> aligned: (16,32,32,32->64, 3x3 S 2) 0.483 -> 0.448, (8,112,112,32->64,
// S 2) 2.96 -> 2.76, (8,32,32,32->32, 7x7) 2.47 -> 2.38.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > (std::numeric_limits<size_t>::max() - 63) / sizeof(T)) throw std::bad_alloc();
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const noexcept { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

// Per-thread scratch buffers, reused across calls (no allocation or page faults per tile),
// 64-byte aligned. Slot tells buffers apart that are live at the same time. A kernel never
// calls another kernel while it holds a slot (nested parallel regions run inline on the
// same thread).
template <typename T, int Slot>
inline T* scratch(size_t n) {
  static thread_local AlignedVector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
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

// Whether a packed kernel panel of K rows x NR columns of T stays within `bytes`: by default
// 256 KiB (about a quarter of L2), the bound of the indirect forward's 8 x 3-vector tile
// (forward_indirect; its other tiles take any panel of a kernel within kernel_fits_cache) and
// of the strided dX's sub-kernel panels (select_backward_input); 64 KiB for the direct
// forward's (select_forward). Saturating: a huge K is "does not fit".
template <typename T>
inline bool panel_fits(int64_t K, int64_t NR, int64_t bytes = int64_t{256} << 10) {
  return saturating_mul(K, saturating_mul(NR, static_cast<int64_t>(sizeof(T)))) <= bytes;
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

/// Calls f(i, window) for the np output pixels from flat pixel p0 (n, ho, wo order), window =
/// the first of pixel i's values in the zero-padded copy xp (Hp rows of prow values per
/// image, copy_padded_input): its kernel row fh starts fh * prow further on.
template <typename T, typename F>
inline void for_each_window(const Conv2dGeometry& g, const T* xp, int64_t Hp, int64_t prow, int64_t p0, int64_t np,
                            const F& f) {
  int64_t n = p0 / (g.Ho * g.Wo), ho = (p0 / g.Wo) % g.Ho, wo = p0 % g.Wo;
  for (int64_t i = 0; i < np; ++i) {
    f(i, xp + (n * Hp + ho * g.stride_h) * prow + wo * g.stride_w * g.C);
    if (++wo == g.Wo) {
      wo = 0;
      if (++ho == g.Ho) {
        ho = 0;
        ++n;
      }
    }
  }
}

// Zero-padded copy of the input for those paths: row r = (n, ih + pad_top) of the N*Hp rows
// holds prow >= (pad_left + W + pad_right)*C values, pad_left*C zeros, input row ih (zeros
// above and below the input), then zeros to prow. copy_padded_row writes row r into dst
// (forward_direct's tasks copy only the rows they read); copy_padded_input writes them all.
template <typename T>
void copy_padded_row(const Conv2dGeometry& g, const T* x, int64_t prow, int64_t r, T* dst) {
  const int64_t C = g.C, Hp = g.H + g.pad_top + g.pad_bottom;
  const int64_t n = r / Hp, ih = r % Hp - g.pad_top;
  if (ih < 0 || ih >= g.H) {
    std::memset(dst, 0, sizeof(T) * static_cast<size_t>(prow));
    return;
  }
  std::memset(dst, 0, sizeof(T) * static_cast<size_t>(g.pad_left * C));
  std::memcpy(dst + g.pad_left * C, x + (n * g.H + ih) * g.W * C, sizeof(T) * static_cast<size_t>(g.W * C));
  std::memset(dst + (g.pad_left + g.W) * C, 0, sizeof(T) * static_cast<size_t>(prow - (g.pad_left + g.W) * C));
}

// How the direct kernel's callers (forward_direct, the strided dX's phases) cut a row of Wo
// pixels: `full` blocks of MR pixels, then `tails` blocks of MRt < MR pixels (MRt = 0: none)
// up to the row's end; as many short blocks as keep the row within the same number of blocks
// (ceil(Wo / MR)), so the last block is as full as it can be: Wo = 32, MR = 6, MRt = 4 gives
// 6+6+6+6+4+4; Wo = 30 gives 5 x 6. `span` pixels are computed (>= Wo). Where the tile has a
// wider variant (MRw > MR rows, 0: none), the full blocks are MRw pixels when that computes
// fewer pixels, or as many in fewer blocks: rows of 28 (the phases of a stride-2 layer on 56
// x 56 inputs) ran 12 + 8 + 8 on the 12-row AVX-512 tile, now 14 + 14 (4% on that dX, most
// of whose time was in the 8-row tail tile); rows of 32 stay 12 + 12 + 8. `mr`: the full
// blocks' pixels.
struct DirectRowBlocks {
  int64_t full, tails, span, mr;
};
inline DirectRowBlocks direct_row_blocks(int64_t Wo, int64_t MR, int64_t MRt, int64_t MRw = 0) {
  auto cut = [&](int64_t mr) -> DirectRowBlocks {
    const int64_t nb = (Wo + mr - 1) / mr;
    const int64_t tails = MRt <= 0 || MRt >= mr ? 0 : std::min(nb, (nb * mr - Wo) / (mr - MRt));
    return {nb - tails, tails, (nb - tails) * mr + tails * MRt, mr};
  };
  const DirectRowBlocks base = cut(MR);
  if (MRw <= MR) return base;
  const DirectRowBlocks wide = cut(MRw);
  const bool better = wide.span < base.span ||
                      (wide.span == base.span && wide.full + wide.tails < base.full + base.tails);
  return better ? wide : base;
}
// The same beside the stride-1 kernel (direct_s1_kernel, MR = 24 pixels), which is ~3x as
// fast per pixel as the direct kernel but all-or-nothing: the remainder of Wo past the whole
// blocks goes to up to two MRt-pixel direct blocks (<= 2 MRt pixels), else to one more
// (part-empty) stride-1 block. Rows of 32 ran 24 + 24 (a third of the second block's work
// wasted), now 24 + 8; rows of 16, 24 -> 8 + 8.
inline DirectRowBlocks direct_row_blocks_s1(int64_t Wo, int64_t MR, int64_t MRt) {
  const int64_t full = Wo / MR, rem = Wo - full * MR;
  if (rem == 0) return {full, 0, Wo, MR};
  if (MRt > 0 && MRt < MR && rem <= 2 * MRt) {
    const int64_t tails = (rem + MRt - 1) / MRt;
    return {full, tails, full * MR + tails * MRt, MR};
  }
  return {full + 1, 0, (full + 1) * MR, MR};
}

// Split over threads in chunks of 64K values (256 KiB of floats): a 470 KB copy split in two
// ran faster than on one thread, pool round trip included.
template <typename T>
void copy_padded_input(const Conv2dGeometry& g, const T* x, int64_t prow, T* xp) {
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom;
  parallel_for(0, g.N * Hp, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(prow, 1)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t r = lo; r < hi; ++r) copy_padded_row(g, x, prow, r, xp + r * prow);
               });
}

/// The kernel gradient's per-chunk partial sums added in chunk order:
///   dw[q*K + k] = sum over c = 0, 1, ..., nchunks-1 of partial[c*chunk_stride + row(k)*ldq + q]
/// (row maps gradient row k to its row in a chunk's partials). Split over k: every sum runs in
/// the same order for any thread count. The sums of up to 64 filters run side by side through
/// sum_rows (each chunk's row read contiguously, vectorised per level): one filter at a time,
/// reading the chunks chunk_stride apart, this was 9% of the (16,32,32,32->64, S 2) kernel
/// gradient at 2 threads.
template <typename T, typename Row>
void sum_weight_partials(const T* partial, int64_t nchunks, int64_t chunk_stride, int64_t ldq, int64_t K,
                         int64_t Q, const Row& row, T* dw) {
  const int64_t grain = std::max<int64_t>(64, (int64_t{1} << 16) / std::max<int64_t>(1, Q * nchunks));
  parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    constexpr int64_t kBlock = 64;
    T acc[kBlock];
    for (int64_t k = k0; k < k1; ++k) {
      const T* src = partial + row(k) * ldq;
      for (int64_t q0 = 0; q0 < Q; q0 += kBlock) {
        const int64_t nq = std::min(kBlock, Q - q0);
        std::copy(src + q0, src + q0 + nq, acc);
        sum_rows(src + chunk_stride + q0, nchunks - 1, chunk_stride, nq, acc);
        for (int64_t j = 0; j < nq; ++j) dw[(q0 + j) * K + k] = acc[j];
      }
    }
  });
}

/// Fixed chunks of pixels for a kernel-gradient reduction into per-chunk partial sums: about
/// 16 chunks of a whole number of blocks of PT pixels, fewer where the partials (partial_bytes
/// each) would pass ~64 MiB. A function of the shape only, so that the partials added in chunk
/// order give the same bits for any thread count. (Zero pixels: one chunk, which runs nothing.)
struct PixelChunks {
  int64_t size;   // pixels per chunk, a multiple of PT
  int64_t count;  // chunks, >= 1
};
inline PixelChunks dw_pixel_chunks(int64_t pixels, int64_t PT, int64_t partial_bytes) {
  const int64_t target = std::max<int64_t>(1, std::min<int64_t>(16, (int64_t{64} << 20) / std::max<int64_t>(1, partial_bytes)));
  const int64_t size = round_up(std::max<int64_t>(1, (pixels + target - 1) / target), PT);
  return {size, std::max<int64_t>(1, (pixels + size - 1) / size)};
}

/// The bias gradient's partial sums added in chunk order: db[q] = sum over c of partial[c*Q + q].
template <typename T>
void sum_bias_partials(const T* partial, int64_t nchunks, int64_t Q, T* db) {
  std::copy(partial, partial + Q, db);
  sum_rows(partial + Q, nchunks - 1, Q, Q, db);
}

// The phase (y + pad) mod S of input row (column) y = y0 < S, without forming y0 + pad mod S
// from sizes that could overflow (S may be as large as int64 allows).
inline int64_t phase_of(int64_t y0, int64_t pad, int64_t S) {
  const int64_t t = pad % S;
  return y0 < S - t ? y0 + t : y0 - (S - t);
}

/// The taps of the phases of a strided input gradient (backward_input_phases' decomposition):
/// for phase (y0, x0), the kernel rows fh = ph, ph + S_h, ... (ph = (y0 + pt) mod S_h) and
/// their dY row offsets off_h = (y0 + pt - fh) / S_h (exact), in ascending fh, descending
/// offset order; the same for columns.
struct PhaseTaps {
  std::vector<int64_t> taps, off;
};
inline PhaseTaps phase_taps(int64_t z0, int64_t pad, int64_t S, int64_t F) {
  PhaseTaps t;
  for (int64_t f = phase_of(z0, pad, S); f < F; f += S) {
    t.taps.push_back(f);
    t.off.push_back((z0 + pad - f) / S);
  }
  return t;
}

}  // namespace conv_detail

}  // namespace kernels
}  // namespace nablagrad
