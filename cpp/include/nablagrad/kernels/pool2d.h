// nablagrad/kernels/pool2d.h - 2-D max and average pooling on contiguous NHWC buffers.
//
// Layouts: input x (N, H, W, C), output y (N, Ho, Wo, C) with (PyTorch, ceil_mode=False)
//   Ho = (H + 2*pad_h - KH) / stride_h + 1,   Wo = (W + 2*pad_w - KW) / stride_w + 1.
// Semantics follow PyTorch:
//   * max pooling: padding acts as -inf; ties keep the first maximum in window scan order
//     (rows, then columns); a NaN in the window wins (the last NaN, as in PyTorch). argmax holds, per output element, the
//     flat index ih*W + iw of the chosen input in its (n, c) plane (as PyTorch's indices).
//   * average pooling: count_include_pad=true divides by the window clipped to the padded
//     extent, (min(hs+KH, H+pad_h) - hs) * (min(ws+KW, W+pad_w) - ws) with hs = ho*S_h - pad_h;
//     count_include_pad=false divides by the number of real input elements in the window.
//
//     auto g = make_pool2d_geometry(N, H, W, C, 2, 2, 0, 0, 0, 0);  // stride 0 = kernel size
//     max_pool2d_forward(g, x, y, argmax);  max_pool2d_backward(g, dy, argmax, dx);
//
// Backward passes overwrite dx (every element of every n and c). Work is split over
// (n, output row) for the forward passes and over n for the backward passes; each output
// element is written by one thread in a fixed order, so results do not depend on the thread
// count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../checked.h"
#include "../threading.h"

namespace nablagrad {
namespace kernels {

struct Pool2dGeometry {
  int64_t N, H, W, C;
  int64_t KH, KW;              // window
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;        // symmetric padding
  int64_t Ho, Wo;
};

/// Validates a pooling and computes its output size. A stride of 0 means "the kernel size"
/// (PyTorch's stride=None). Throws std::invalid_argument naming the shapes when a size is not
/// positive (N may be 0), a stride is negative, a padding is negative or larger than half the
/// window (PyTorch's rule: pad <= kernel/2), or the window does not fit the padded input.
inline Pool2dGeometry make_pool2d_geometry(int64_t N, int64_t H, int64_t W, int64_t C,
                                           int64_t KH, int64_t KW, int64_t stride_h,
                                           int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  std::ostringstream desc;
  desc << "(input (" << N << "," << H << "," << W << "," << C << "), kernel_size (" << KH << ","
       << KW << "), stride (" << stride_h << "," << stride_w << "), padding (" << pad_h << ","
       << pad_w << "))";
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("pool2d: " + what + " " + desc.str());
  };
  if (N < 0 || H < 1 || W < 1 || C < 1) fail("input sizes must be positive (N >= 0)");
  if (KH < 1 || KW < 1) fail("kernel_size must be >= 1");
  if (stride_h < 0 || stride_w < 0) fail("stride must be >= 1 (or 0 for kernel_size)");
  if (stride_h == 0) stride_h = KH;
  if (stride_w == 0) stride_w = KW;
  if (pad_h < 0 || pad_w < 0) fail("padding must be >= 0");
  if (pad_h > KH / 2 || pad_w > KW / 2) fail("padding must be at most half the kernel size");  // no 2*pad overflow
  auto about = [&](const char* what) { return [&desc, what] { return "pool2d: " + std::string(what) + " " + desc.str(); }; };
  const int64_t hp = checked_add(H, 2 * pad_h, about("padded height"));
  const int64_t wp = checked_add(W, 2 * pad_w, about("padded width"));
  if (KH > hp || KW > wp) fail("kernel is larger than the padded input");
  // The sizes the kernels form from these: the output (N, Ho, Wo, C) and the window area
  // KH*KW (the average's divisor with count_include_pad); neither may overflow int64.
  const Pool2dGeometry g{N,  H,        W,        C,     KH,    KW, stride_h, stride_w, pad_h, pad_w,
                         (hp - KH) / stride_h + 1, (wp - KW) / stride_w + 1};
  checked_product({N, g.Ho, g.Wo, C}, about("the output (N, Ho, Wo, C) has too many elements"));
  checked_mul(KH, KW, about("the window (kernel_size) has too many elements"));
  return g;
}

namespace pool_detail {
/// The input range [begin, end) that one output index reads along an axis: its window
/// (starting at out * stride - pad, `kernel` wide) clipped to the input extent [0, size).
struct WindowSpan {
  int64_t begin, end;
};
inline WindowSpan clipped_window(int64_t out, int64_t stride, int64_t pad, int64_t kernel, int64_t size) {
  const int64_t start = out * stride - pad;
  return {std::max<int64_t>(start, 0), std::min<int64_t>(start + kernel, size)};
}
/// Input rows [h0, h1) of output row ho, and input columns [w0, w1) of output column wo.
inline WindowSpan window_rows(const Pool2dGeometry& g, int64_t ho) {
  return clipped_window(ho, g.stride_h, g.pad_h, g.KH, g.H);
}
inline WindowSpan window_cols(const Pool2dGeometry& g, int64_t wo) {
  return clipped_window(wo, g.stride_w, g.pad_w, g.KW, g.W);
}

// PyTorch's divisor for one window (ceil_mode=False).
inline int64_t avg_divisor(const Pool2dGeometry& g, int64_t ho, int64_t wo,
                           bool count_include_pad) {
  int64_t hs = ho * g.stride_h - g.pad_h, ws = wo * g.stride_w - g.pad_w;
  int64_t he = std::min(hs + g.KH, g.H + g.pad_h), we = std::min(ws + g.KW, g.W + g.pad_w);
  if (count_include_pad) return (he - hs) * (we - ws);
  hs = std::max<int64_t>(hs, 0);
  ws = std::max<int64_t>(ws, 0);
  he = std::min(he, g.H);
  we = std::min(we, g.W);
  return (he - hs) * (we - ws);
}
}  // namespace pool_detail

namespace pool_detail {
/// One output row of max pooling. The channel loop is branch-free (a compare and two selects per
/// value, with the index in I = int32 when the plane allows it) so that it vectorises.
template <typename T, typename I>
void max_pool2d_row(const Pool2dGeometry& g, const T* x, T* y, int64_t* argmax, int64_t n, int64_t ho,
                    T* best, I* where) {
  const int64_t C = g.C;
  const auto [h0, h1] = window_rows(g, ho);
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    const auto [w0, w1] = window_cols(g, wo);
    const int64_t out = ((n * g.Ho + ho) * g.Wo + wo) * C;
    T* b = argmax ? best : y + out;  // without argmax the maximum is built in the output itself
    for (int64_t c = 0; c < C; ++c) b[c] = -std::numeric_limits<T>::infinity();
    const I first = static_cast<I>(h0 * g.W + w0);  // as PyTorch when no value beats -inf
    if (argmax)
      for (int64_t c = 0; c < C; ++c) where[c] = first;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const T* src = x + ((n * g.H + ih) * g.W + iw) * C;
        const I idx = static_cast<I>(ih * g.W + iw);
        if (argmax) {
          for (int64_t c = 0; c < C; ++c) {
            const T v = src[c];
            const bool take = (v > b[c]) | (v != v);  // PyTorch's rule: strict, so the first max wins; NaN wins
            b[c] = take ? v : b[c];
            where[c] = take ? idx : where[c];
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const T v = src[c];
            b[c] = ((v > b[c]) | (v != v)) ? v : b[c];
          }
        }
      }
    if (argmax) {
      std::memcpy(y + out, best, sizeof(T) * C);
      for (int64_t c = 0; c < C; ++c) argmax[out + c] = static_cast<int64_t>(where[c]);
    }
  }
}
}  // namespace pool_detail

/// y[n,ho,wo,c] = max over the window; argmax[n,ho,wo,c] = ih*W + iw of the first maximum.
/// argmax may be nullptr (inference).
template <typename T>
void max_pool2d_forward(const Pool2dGeometry& g, const T* x, T* y, int64_t* argmax) {
  const bool narrow = g.H * g.W <= std::numeric_limits<int32_t>::max();
  parallel_for(0, g.N * g.Ho, 4, [&](int64_t lo, int64_t hi) {
    std::vector<T> best(static_cast<size_t>(g.C));
    std::vector<int32_t> where32(narrow ? static_cast<size_t>(g.C) : 0);
    std::vector<int64_t> where64(narrow ? 0 : static_cast<size_t>(g.C));
    for (int64_t nh = lo; nh < hi; ++nh) {
      const int64_t n = nh / g.Ho, ho = nh % g.Ho;
      if (narrow)
        pool_detail::max_pool2d_row<T, int32_t>(g, x, y, argmax, n, ho, best.data(), where32.data());
      else
        pool_detail::max_pool2d_row<T, int64_t>(g, x, y, argmax, n, ho, best.data(), where64.data());
    }
  });
}

/// dx = 0, then dx[n, argmax, c] += dy[n, ho, wo, c] for every output element (overlapping
/// windows accumulate, in output order).
template <typename T>
void max_pool2d_backward(const Pool2dGeometry& g, const T* dy, const int64_t* argmax, T* dx) {
  const int64_t C = g.C, plane = g.H * g.W;
  parallel_for(0, g.N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      T* dxn = dx + n * plane * C;
      std::fill(dxn, dxn + plane * C, T(0));
      const int64_t base = n * g.Ho * g.Wo * C;
      for (int64_t o = 0; o < g.Ho * g.Wo; ++o)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t idx = argmax[base + o * C + c];
          dxn[idx * C + c] += dy[base + o * C + c];
        }
    }
  });
}


/// y = mean over the window (see the divisor rule at the top of the file).
template <typename T>
void avg_pool2d_forward(const Pool2dGeometry& g, const T* x, T* y, bool count_include_pad = true) {
  const int64_t C = g.C;
  parallel_for(0, g.N * g.Ho, 4, [&](int64_t lo, int64_t hi) {
    std::vector<T> sum(static_cast<size_t>(C));
    for (int64_t nh = lo; nh < hi; ++nh) {
      const int64_t n = nh / g.Ho, ho = nh % g.Ho;
      const auto [h0, h1] = pool_detail::window_rows(g, ho);
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const auto [w0, w1] = pool_detail::window_cols(g, wo);
        std::fill(sum.begin(), sum.end(), T(0));
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) {
            const T* src = x + ((n * g.H + ih) * g.W + iw) * C;
            for (int64_t c = 0; c < C; ++c) sum[c] += src[c];
          }
        const T div = static_cast<T>(pool_detail::avg_divisor(g, ho, wo, count_include_pad));
        T* dst = y + ((n * g.Ho + ho) * g.Wo + wo) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = sum[c] / div;
      }
    }
  });
}

/// dx = 0, then every input element of a window gets dy / divisor (overlaps accumulate in
/// output order).
template <typename T>
void avg_pool2d_backward(const Pool2dGeometry& g, const T* dy, T* dx,
                         bool count_include_pad = true) {
  const int64_t C = g.C, plane = g.H * g.W;
  parallel_for(0, g.N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      T* dxn = dx + n * plane * C;
      std::fill(dxn, dxn + plane * C, T(0));
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        const auto [h0, h1] = pool_detail::window_rows(g, ho);
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const auto [w0, w1] = pool_detail::window_cols(g, wo);
          const T div = static_cast<T>(pool_detail::avg_divisor(g, ho, wo, count_include_pad));
          const T* src = dy + ((n * g.Ho + ho) * g.Wo + wo) * C;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              T* dst = dxn + (ih * g.W + iw) * C;
              for (int64_t c = 0; c < C; ++c) dst[c] += src[c] / div;
            }
        }
      }
    }
  });
}

}  // namespace kernels
}  // namespace nablagrad
