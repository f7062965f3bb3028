// nablagrad/kernels/conv2d/forward.h - the forward pass as a GEMM: through a pointer table into
// the input (the indirect kernel of microkernel.h on the packed kernel), through gemm()'s cache
// blocking for deep kernels and few pixels (each pixel's im2col row read in place by
// gemm_indirect, or gathered first), and as a plain GEMM for 1x1 convolutions.
//
//   Y[(n,ho,wo), q] = sum_{(fh,fw,c)} X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] * W[q, fh, fw, c] + b[q]
//
// the document's first multi-channel equation (R(v,i,j,f)) with padding read as zeros:
// rows = N*Ho*Wo output pixels, columns = Q filters, depth = FH*FW*C. Which forward kernel runs
// for which shape is decided in select.h; the small-C direct forward is in small_c.h.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../gemm.h"
#include "gather_gemm.h"
#include "geometry.h"
#include "microkernel.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// The FW*C values of input columns iw0 .. iw0+FW-1 of one input row (row: its W*C values),
// the columns outside [0, W) (the left / right padding) as zeros.
template <typename T>
inline void copy_clipped_run(T* dst, const T* row, int64_t iw0, int64_t FW, int64_t C, int64_t W) {
  for (int64_t fw = 0; fw < FW; ++fw) {
    const int64_t iw = iw0 + fw;
    if (iw < 0 || iw >= W)
      zero_run(dst + fw * C, C);
    else
      copy_run(dst + fw * C, row + iw * C, C);
  }
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
      copy_clipped_run(dst, src, iw0, FW, C, g.W);
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

/// im2col rows [r0, r0 + nb) (K = FH*FW*C values each) into dst, shared out among the threads:
/// the gather of the gemm() paths' blocks.
template <typename T>
void im2col_rows_parallel(const Conv2dGeometry& g, const T* x, int64_t r0, int64_t nb, T* dst) {
  const int64_t K = g.FH * g.FW * g.C;
  parallel_for(0, nb, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(K, 1)),
               [&](int64_t lo, int64_t hi) { forward_im2col(g, x, r0 + lo, r0 + hi, dst + lo * K, K); });
}

/// The depth slices of forward_gemm's in-place rows, each within one kernel row's run of FW*C
/// values, so that a pixel's values of a slice are one run of x (or all padding, or, for a pixel
/// on the left or right border whose slice takes taps both inside and outside the input, a
/// copy). From KC channels each tap is a slice, or equal parts of one of at most KC: no copies
/// at all; under that the run, in equal parts of at most KC (128 channels x 3: two of 192, which
/// measured ahead of three taps of 128: (8,28,28,160->192, 3x3 S 2) 4.02-4.14 -> 3.94-3.98 ms,
/// Zen 4, AVX-512, 2 threads). A function of the geometry and KC only.
inline std::vector<KSlice> forward_run_slices(const Conv2dGeometry& g, int64_t KC) {
  std::vector<KSlice> slices;
  const int64_t C = g.C, len = g.FW * C;
  if (C <= 0) return slices;
  const bool by_tap = C >= KC;
  const int64_t unit = by_tap ? C : len, parts = (unit + KC - 1) / KC, depth = (unit + parts - 1) / parts;
  for (int64_t h = 0; h < g.FH; ++h)
    for (int64_t u = 0; u < len; u += unit)
      for (int64_t o = 0; o < unit; o += depth) slices.push_back({h * len + u + o, std::min(depth, unit - o)});
  return slices;
}

/// gemm_indirect's rows for forward_gemm in place: the values k0 .. k0 + kc - 1 (within kernel
/// row h's run) of pixels pix[0 .. m - 1] (pixels r0 .. r0 + m - 1 where pix is null) at ptrs:
/// in x, at zeros (a kernel row in the top or bottom padding, or every tap of the slice in the
/// left or right), or copied into edge (m kc values) with spans[i] narrowed to the copy's taps
/// inside the input. Returns whether any row is at zeros or narrowed (gemm_indirect's rows).
template <typename T>
bool forward_slice_rows(const Conv2dGeometry& g, const T* x, int64_t k0, int64_t kc, int64_t r0, const int64_t* pix,
                        int64_t m, const T** ptrs, KSpan* spans, T* edge, const T* zeros) {
  const int64_t C = g.C, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, len = g.FW * C;
  const int64_t h = k0 / len, off = k0 % len, fa = off / C, fb = (off + kc - 1) / C;
  bool partial = false;
  int64_t n = r0 / (Ho * Wo), ho = (r0 / Wo) % Ho, wo = r0 % Wo;
  for (int64_t i = 0; i < m; ++i) {
    if (pix != nullptr) {
      if (i > 0 && pix[i] == pix[i - 1] + Ho * Wo)  // the same pixel of the next image
        ++n;
      else
        n = pix[i] / (Ho * Wo), ho = (pix[i] / Wo) % Ho, wo = pix[i] % Wo;
    } else if (i > 0 && ++wo == Wo) {  // the next pixel
      wo = 0;
      if (++ho == Ho) {
        ho = 0;
        ++n;
      }
    }
    const int64_t ih = ho * g.stride_h - g.pad_top + h, iw0 = wo * g.stride_w - g.pad_left;
    const T* p = zeros;
    if (ih >= 0 && ih < H) {
      const T* row = x + (n * H + ih) * W * C;
      if (iw0 + fa >= 0 && iw0 + fb < W) {
        p = row + (iw0 + fa) * C + (off - fa * C);
      } else if (iw0 + fb >= 0 && iw0 + fa < W) {  // taps inside and outside: copied
        T* e = edge + i * kc;
        for (int64_t k = off; k < off + kc;) {
          const int64_t fw = k / C, end = std::min(off + kc, (fw + 1) * C), iw = iw0 + fw;
          if (iw < 0 || iw >= W)
            zero_run(e + (k - off), end - k);
          else
            copy_run(e + (k - off), row + iw * C + (k - fw * C), end - k);
          k = end;
        }
        const int64_t fw_lo = std::max<int64_t>(0, -iw0), fw_hi = std::min(g.FW, W - iw0);
        spans[i] = {std::max(off, fw_lo * C) - off, std::min(off + kc, fw_hi * C) - off};
        partial = true;
        p = e;
      }
    }
    ptrs[i] = p;
    partial = partial || p == zeros;
  }
  return partial;
}

/// A plan for gemm_indirect over a convolution's output pixels (forward_gemm's rows, the dY.W
/// rows of backward_input_col2im_gemm): the order of the pixels (empty: raster order, the
/// output's own) and the register tile's rows.
struct PixelRowsPlan {
  std::vector<int64_t> order;
  int64_t tile_rows;
  int64_t price = 0;  // pixel_rows_plan's price of the plan (0: not priced)
};

/// The output positions grouped by the taps they read inside the input: a class is one range
/// of kernel rows and one of kernel columns that miss the padding. taps[c] = {kh_lo, kh_hi,
/// kw_lo, kw_hi}; cls[position] its class; pos the positions sorted by class.
struct PixelClasses {
  std::vector<std::array<int64_t, 5>> pos;  // {kh_lo, kh_hi, kw_lo, kw_hi, position}, sorted
  std::vector<int32_t> cls;
  std::vector<std::array<int64_t, 4>> taps;
  std::vector<size_t> first;  // each class's first entry in pos
};

inline PixelClasses pixel_classes(const Conv2dGeometry& g) {
  PixelClasses pc;
  const int64_t Ho = g.Ho, Wo = g.Wo;
  const auto taps = [](int64_t o, int64_t S, int64_t pad, int64_t F, int64_t In) {
    const int64_t i0 = o * S - pad;
    return std::array<int64_t, 2>{std::max<int64_t>(0, -i0), std::min(F, In - i0)};
  };
  pc.pos.reserve(static_cast<size_t>(Ho * Wo));
  for (int64_t ho = 0; ho < Ho; ++ho)
    for (int64_t wo = 0; wo < Wo; ++wo) {
      const auto v = taps(ho, g.stride_h, g.pad_top, g.FH, g.H), u = taps(wo, g.stride_w, g.pad_left, g.FW, g.W);
      pc.pos.push_back({v[0], v[1], u[0], u[1], ho * Wo + wo});
    }
  std::sort(pc.pos.begin(), pc.pos.end());
  pc.cls.resize(pc.pos.size());
  for (size_t i = 0; i < pc.pos.size(); ++i) {
    const auto& q = pc.pos[i];
    if (i == 0 || !std::equal(q.begin(), q.begin() + 4, pc.pos[i - 1].begin())) {
      pc.taps.push_back({q[0], q[1], q[2], q[3]});
      pc.first.push_back(i);
    }
    pc.cls[static_cast<size_t>(q[4])] = static_cast<int32_t>(pc.taps.size() - 1);
  }
  return pc;
}

/// The plan of the cheapest rows for gemm_indirect. Pixels of one class skip the same padding,
/// so a register tile of one class skips it for all its rows. Candidate orders: raster order;
/// the classes one after another, each image by image in raster order; the classes, each
/// pixel by pixel with the images innermost (a tile of one pixel of several images, evenly
/// spaced in the output). Each, with each tile height of `tile_rows` (the first the default),
/// is priced as the sum over its tiles of tile_cost(ids, nid, even) times the tile's rows:
/// what a row of a tile holding classes ids[0 .. nid - 1] costs, its rows evenly spaced in the
/// output or not (then computed into scratch and stored row by row). The cheapest is taken
/// where it is at least 3% cheaper than raster order on the default tile. With `groups`, the
/// class orders run within each of that many groups of images in turn: where threads split
/// the product's rows into runs (its columns are one panel), each run gets its share of the
/// padding. (16,14,14,64->64, 7x7 S 2), whose top rows' classes came last, in the second
/// thread's half: 1.31-1.34 -> 1.24-1.31 ms; (8,16,16,256->16, 3x3 S 2 P 1) 0.23-0.25 -> 0.20.
/// A function of its arguments (an order changes no result: the same bits for any of them).
template <typename CostFn>
PixelRowsPlan pixel_rows_plan(const Conv2dGeometry& g, const PixelClasses& pc, const std::vector<int64_t>& tile_rows,
                              int64_t groups, const CostFn& tile_cost) {
  const int64_t P = g.Ho * g.Wo, M = g.N * P;
  PixelRowsPlan plan{{}, tile_rows.front()};
  if (M == 0 || pc.taps.size() < 2) return plan;  // one class: nothing to group
  const auto class_end = [&](size_t c) { return c + 1 < pc.taps.size() ? pc.first[c + 1] : pc.pos.size(); };
  std::vector<int32_t> row_cls(static_cast<size_t>(M));  // each output row's class (no division per row)
  for (int64_t n = 0; n < g.N; ++n) std::copy(pc.cls.begin(), pc.cls.end(), row_cls.begin() + n * P);
  // The price of an order (row i is pixel at(i)) on tiles of MR rows.
  const auto price = [&](const std::vector<int64_t>* order, int64_t MR) {
    const auto at = [&](int64_t i) { return order ? (*order)[static_cast<size_t>(i)] : i; };
    int64_t total = 0;
    int32_t ids[16];
    for (int64_t t = 0; t < M; t += MR) {
      const int64_t mr = std::min(MR, M - t);
      int64_t nid = 0;
      bool even = mr == MR && (mr < 2 || at(t + 1) > at(t));
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t r = at(t + i);
        const int32_t c = row_cls[static_cast<size_t>(r)];
        if (std::find(ids, ids + nid, c) == ids + nid) ids[nid++] = c;
        if (order && i >= 2) even = even && r - at(t + i - 1) == at(t + 1) - at(t);
      }
      total += tile_cost(ids, nid, even) * MR;
    }
    return total;
  };
  const int64_t raster = price(nullptr, tile_rows.front());
  int64_t best = raster;
  plan.price = raster;
  // No order prices below each row costing what it would in a tile of its class alone (a
  // tile's cost grows with its classes): where even that is not 3% below raster order, the
  // other candidates are not priced (most of the plan's time on layers with little padding).
  int64_t floor = 0;
  for (size_t c = 0; c < pc.taps.size(); ++c) {
    const int32_t id = static_cast<int32_t>(c);
    floor += tile_cost(&id, 1, true) * static_cast<int64_t>(class_end(c) - pc.first[c]) * g.N;
  }
  if (floor * 100 > raster * 97) return plan;
  std::vector<int64_t> by_image, by_pixel;  // the two class orders, in each group of images
  by_image.reserve(static_cast<size_t>(M));
  by_pixel.reserve(static_cast<size_t>(M));
  const int64_t G = std::max<int64_t>(1, std::min(groups, g.N));
  for (int64_t gi = 0; gi < G; ++gi) {
    const int64_t n0 = g.N * gi / G, n1 = g.N * (gi + 1) / G;
    for (size_t c = 0; c < pc.taps.size(); ++c) {
      const size_t end = class_end(c);
      for (int64_t n = n0; n < n1; ++n)
        for (size_t i = pc.first[c]; i < end; ++i) by_image.push_back(n * P + pc.pos[i][4]);
      for (size_t i = pc.first[c]; i < end; ++i)
        for (int64_t n = n0; n < n1; ++n) by_pixel.push_back(n * P + pc.pos[i][4]);
    }
  }
  const std::vector<int64_t>* orders[] = {nullptr, &by_image, &by_pixel};
  for (int64_t MR : tile_rows)
    for (const std::vector<int64_t>* order : orders) {
      if (!order && MR == tile_rows.front()) continue;  // raster, priced above
      const int64_t p = price(order, MR) * gemm_detail::gemm_indirect_tile_cost(MR) / 100;
      if (p * 100 <= raster * 97 && p < best) {
        best = p;
        plan = {order ? *order : std::vector<int64_t>(), MR, p};
        if (best == floor) return plan;  // none can be cheaper
      }
    }
  return plan;
}

/// forward_gemm's plan: a tile's row of a class costs, per slice, the depth of the union of
/// its classes' spans there (gemm_indirect runs no more), and kScatter more where its rows are
/// stored one by one. (Zen 4, 2 threads, ms) (32,8,8,256->512, 3x3 S 2) 5.6 -> 4.7 (its top
/// row and left column, 16% of the multiply-adds, in tiles of their own), (4,7,7,64->256, 7x7
/// P 3) 1.29 -> 1.13 on 6-row tiles, 0.95 on 4-row ones; not (1,7,7,512->512, 3x3), whose
/// classes are a few pixels each (1.14 -> 1.17 reordered).
inline PixelRowsPlan forward_rows_plan(const Conv2dGeometry& g, const std::vector<KSlice>& slices,
                                       const std::vector<int64_t>& tile_rows, int64_t groups = 1) {
  constexpr int64_t kScatter = 16;  // in multiply-adds per row of a tile, as a slice's depth
  const PixelClasses pc = pixel_classes(g);
  const int64_t C = g.C, len = g.FW * C;
  const size_t S = slices.size();
  std::vector<KSpan> span(pc.taps.size() * S);  // each class's span in each slice
  for (size_t c = 0; c < pc.taps.size(); ++c)
    for (size_t si = 0; si < S; ++si) {
      const int64_t h = slices[si].k0 / len, off = slices[si].k0 % len, kc = slices[si].kc;
      const auto& t = pc.taps[c];
      span[c * S + si] = h < t[0] || h >= t[1] ? KSpan{0, 0}
                                               : KSpan{std::max(off, t[2] * C) - off, std::min(off + kc, t[3] * C) - off};
    }
  return pixel_rows_plan(g, pc, tile_rows, groups, [&](const int32_t* ids, int64_t nid, bool even) {
    int64_t cost = 0;
    for (size_t si = 0; si < S; ++si) {
      int64_t lo = slices[si].kc, hi = 0;
      for (int64_t j = 0; j < nid; ++j) {
        const KSpan sp = span[static_cast<size_t>(ids[j]) * S + si];
        if (sp.lo < sp.hi) lo = std::min(lo, sp.lo), hi = std::max(hi, sp.hi);
      }
      cost += std::max<int64_t>(hi - lo, 1) + (even ? 0 : kScatter);
    }
    return cost;
  });
}

/// Forward as a GEMM, Y = X' W^T with X' the im2col matrix (a row of FH*FW*C values per output
/// pixel), the bias starting each tile of y. In place (select.h's gemm_rows_in_place): by
/// gemm_indirect, each pixel's row read slice by slice (forward_run_slices) where it lies in x,
/// nothing gathered but a border pixel's part-padded slices, the pixels and tiles as
/// forward_rows_plan has them (not with reorder false: raster order, the same bits).
/// (8,14,14,256->512, 3x3 S 2), Zen 4, 2 threads: 4.43-4.55 -> 4.29-4.36 ms, 214 GFLOP/s, ~92%
/// of the multiply-add peak; with the plan 4.22-4.25 -> 3.91-3.97.
/// Else blocks of im2col rows within ~8 MiB are gathered (in parallel) into a buffer and
/// multiplied by W^T with gemm(), whose cache blocking packs each panel of W once per block and
/// reuses it across all the block's rows. For deep layers, where W (K x Q) is megabytes, the
/// gather GEMM and the indirect kernel stream all of W once per tile of pixels: (8,14,14,256->
/// 512, 3x3 S 2) 7.5 -> 4.9 ms at 1 thread, 5.2 -> 2.5 ms at 2 (Xeon, AVX-512).
template <typename T>
void forward_gemm(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y, bool in_place,
                  bool reorder = true) {
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q, rows = g.N * g.Ho * g.Wo;
  if (rows == 0) return;
  if (in_place) {
    const gemm_detail::GemmConfig<T> cfg = gemm_detail::gemm_config_for<T>(rows, Q);
    const std::vector<KSlice> slices = forward_run_slices(g, cfg.KC);
    std::vector<int64_t> tile_rows = {cfg.MR};
    if (gemm_detail::gemm_indirect_config<T>(rows, Q, 4).MR == 4) tile_rows.push_back(4);
    // Threads split the rows where the columns are one panel (gemm_detail::for_each_gemm_block).
    const int64_t groups = Q <= cfg.NR ? get_num_threads() : 1;
    const PixelRowsPlan plan =
        reorder ? forward_rows_plan(g, slices, tile_rows, groups) : PixelRowsPlan{{}, cfg.MR};
    const int64_t* pix = plan.order.empty() ? nullptr : plan.order.data();
    gemm_indirect<T>(
        rows, Q, slices,
        [&](size_t s, int64_t r0, int64_t m, const T** ptrs, KSpan* spans, T* edge, const T* zeros) {
          return forward_slice_rows(g, x, slices[s].k0, slices[s].kc, r0, pix ? pix + r0 : nullptr, m, ptrs, spans,
                                    edge, zeros);
        },
        w, 1, K, y, Q, bias, pix, plan.tile_rows);
    return;
  }
  const int64_t block = gemm_path_block<T>(K, rows);
  Scratch<T> a(checked_product({block, std::max<int64_t>(K, 1)}, "conv2d: im2col rows"), "conv2d: im2col rows");
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t nb = std::min(block, rows - r0);
    im2col_rows_parallel(g, x, r0, nb, a.get());
    gemm<T>(nb, Q, K, a.get(), K, 1, w, 1, K, y + r0 * Q, Q, /*accumulate=*/false, bias);
  }
}

/// The pointer table of the block of MR output pixels from flat pixel r0 (nr <= MR of them
/// real) for the indirect kernel: ptr[h * MR + i] is the start of pixel i's FW*C input values
/// of kernel row h, in x itself when they lie inside the input, at `zeros` for a row in the
/// top or bottom padding (and for the missing pixels of a last block), and at a zero-padded
/// copy in `edge` (FH * MR runs) when they straddle the left or right border (one copy for the
/// consecutive border pixels of an output row in the block: their runs overlap where S_w <=
/// FW; (8,32,32,32->32, 7x7 P 3) forward 2.53-2.56 -> 2.41-2.46 ms). [h0, h1) are the
/// kernel rows some pixel of the block reads inside the input (h1 <= h0: none). The geometry
/// is read into locals once: the border copies may alias anything, so fields read through g
/// were reloaded for every pointer (the table was 6% of the (16,32,32,32->64, 3x3 S 2) forward).
/// A pixel that follows one wholly inside x on the same output row, and is itself inside,
/// takes that pixel's pointers a stride on (no bounds or row arithmetic): the table 6.0 -> 5.0%
/// of that forward at 1 thread, most of the rest being the border copies' first reads of x.
template <typename T>
inline void indirect_block_table(const Conv2dGeometry& g, const T* x, const T* zeros, int64_t MR,
                                 int64_t r0, int64_t nr, const T** ptr, T* edge, int64_t& h0,
                                 int64_t& h1) {
  const int64_t C = g.C, H = g.H, W = g.W, FH = g.FH, FW = g.FW, Ho = g.Ho, Wo = g.Wo;
  const int64_t S_h = g.stride_h, S_w = g.stride_w, pad_top = g.pad_top, pad_left = g.pad_left;
  const int64_t len = FW * C, row = W * C;
  // The fast path's pixel step; only formed where a row has two pixels (then S_w < W + pads,
  // whose product with C the geometry has checked: a crafted stride would overflow it).
  const int64_t step = Wo > 1 ? S_w * C : 0;
  int64_t n = r0 / (Ho * Wo), ho = (r0 / Wo) % Ho, wo = r0 % Wo;
  h0 = FH;
  h1 = 0;
  bool inside = false;  // pixel i - 1's runs all lie in x
  int64_t seg = 0;      // pixels left of the border copy that pixel i - 1 read (see below)
  const auto border = [&](int64_t w) { return w * S_w < pad_left || w * S_w - pad_left + FW > W; };
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t top = ho * S_h - pad_top, iw0 = wo * S_w - pad_left;
    if (inside && wo > 0 && iw0 + FW <= W) {
      // The next pixel of the same output row, still inside: its runs start a stride further
      // (most pixels; h0 = 0 and h1 = FH are already set by pixel i - 1).
      for (int64_t h = 0; h < FH; ++h) ptr[h * MR + i] = ptr[h * MR + i - 1] + step;
    } else {
      inside = false;
      const int64_t lo = std::min(FH, std::max<int64_t>(0, -top)), hi_raw = std::min(FH, H - top);
      const int64_t hi = std::max(lo, hi_raw);
      h0 = std::min(h0, lo);
      h1 = std::max(h1, hi_raw);
      for (int64_t h = 0; h < lo; ++h) ptr[h * MR + i] = zeros;
      for (int64_t h = hi; h < FH; ++h) ptr[h * MR + i] = zeros;
      if (lo < hi) {
        if (iw0 >= 0 && iw0 + FW <= W) {
          const T* p = x + ((n * H + top + lo) * W + iw0) * C;
          for (int64_t h = lo; h < hi; ++h, p += row) ptr[h * MR + i] = p;
          inside = lo == 0 && hi == FH;
        } else if (seg > 0) {
          for (int64_t h = lo; h < hi; ++h) ptr[h * MR + i] = ptr[h * MR + i - 1] + step;
        } else {
          // A border pixel: one zero-padded copy serves it and the border pixels after it on
          // its output row in this block, whose runs start S_w C values apart in it (where
          // S_w <= FW, so the k pixels' copy fits their k slots of edge). Per pixel copies of
          // 7x7 runs padded by 3 each held 3 of their 7 columns twice or thrice.
          int64_t k = 1;
          if (S_w <= FW)
            while (i + k < nr && wo + k < Wo && border(wo + k)) ++k;
          const T* r = x + (n * H + top + lo) * row;
          for (int64_t h = lo; h < hi; ++h, r += row) {
            T* e = edge + (h * MR + i) * len;
            copy_clipped_run(e, r, iw0, (k - 1) * S_w + FW, C, W);
            ptr[h * MR + i] = e;
          }
          seg = k;
        }
      }
    }
    if (seg > 0) --seg;
    if (++wo == Wo) {
      wo = 0;
      if (++ho == Ho) {
        ho = 0;
        ++n;
      }
    }
  }
  for (int64_t i = nr; i < MR; ++i)
    for (int64_t h = 0; h < FH; ++h) ptr[h * MR + i] = zeros;
}

/// The block driver of the indirect kernels (forward_indirect, forward_narrow): the output
/// pixels walked flat (N*Ho*Wo rows) in blocks of MR, about 64 chunks of consecutive blocks
/// claimed dynamically (the split changes no sum: a block is one task). For each block,
/// fn(r0, nr, nh, ph, h0) gets its first pixel r0 and count nr (<= MR), and the pointer table
/// of indirect_block_table from kernel row h0 on (ph = ptr + h0 MR), for the nh kernel rows
/// that do not lie in the top or bottom padding for every pixel of the block: the others add
/// nothing, and the kernels skip them (as oneDNN does).
template <typename T, typename Fn>
void for_each_indirect_block(const Conv2dGeometry& g, const T* x, int64_t MR, Fn&& fn) {
  const int64_t FH = g.FH, len = g.FW * g.C;
  const int64_t rows = g.N * g.Ho * g.Wo, blocks = (rows + MR - 1) / MR;
  const std::vector<T> zeros(static_cast<size_t>(len), T(0));
  parallel_chunks(blocks, std::max<int64_t>(1, (blocks + 63) / 64), [&](int64_t, int64_t lo, int64_t hi) {
    const T** ptr = scratch<const T*, 0>(static_cast<size_t>(FH * MR));
    T* edge = scratch<T, 1>(static_cast<size_t>(FH * MR * len));  // copies of border runs
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t r0 = blk * MR, nr = std::min(MR, rows - r0);
      int64_t h0 = 0, h1 = 0;  // clamped to 0 .. FH by the table builder
      indirect_block_table(g, x, zeros.data(), MR, r0, nr, ptr, edge, h0, h1);
      fn(r0, nr, std::max<int64_t>(0, h1 - h0), static_cast<const T* const*>(ptr + h0 * MR), h0);
    }
  });
}

/// Forward by the indirect micro-kernel: no im2col and no padded copy. The output pixels are
/// walked flat (N*Ho*Wo rows) in blocks of MR (for_each_indirect_block); for each block a
/// table of FH x MR pointers gives each pixel's run of FW*C input values per kernel row: in
/// the input itself when the run lies inside it, at a zero run for rows in the top or bottom
/// padding (or past the last pixel), and at a zero-padded copy of the run (a few per image
/// border) otherwise. The micro-kernel keeps the MR x NR sums in registers over the FH*FW*C
/// taps (less the kernel rows that lie in the top or bottom padding for all MR pixels) and
/// the tile is stored once, bias added (straight from the registers when the tile is whole).
/// Blocks cross output rows freely, so no block is left mostly empty at the end of a row
/// (16-pixel rows with MR = 12). Each output element is computed by one block in a fixed
/// order, whatever thread runs it.
/// The tile, by the filters (each a function of Q and K only; every tile runs the same sums in
/// the same order, so the same bits): where they fill whole panels of the level's wider tile
/// (6 x 4 vectors at AVX-512), that tile, whatever its panel's size (the selection holds the
/// kernel to kernel_fits_cache; panels past 256 KiB, once kept on the 12 x 2 tile, measured
/// 2 threads, ms: (8,32,32,64->64, 7x7) 8.64-8.68 -> 8.17-8.35, (16,16,16,384->64, S 2)
/// 1.40-1.44 -> 1.34-1.36); else where
/// they fill 3-vector panels, the last at least two-thirds full, the 8 x 3-vector one
/// (AVX-512: 48 filters as one panel, not 32 + 16; 40 as 48 read once, not 32 + 16 read
/// twice); at AVX2 the 4 x 3-vector row where the filters are whole panels of it and one of
/// 2 vectors but not of 2-vector panels alone (40 floats = 24 + 16, read twice, not 16 + 16
/// + 8, three times); then a last panel that the row's narrower kernel of the same rows covers
/// runs on it (indirect_last: 56 floats = 16 x 3 + 8 at AVX2, 80 = 32 + 32 + 16 at AVX-512).
/// AVX-512, 2 threads, ms, 12 x 2 + 12 x 1 -> 8 x 3: (8,28,28,48->48, 3x3 S 2) 0.225 ->
/// 0.194, (8,56,56,32->48) 0.58 -> 0.52, (8,112,112,16->48) 1.18 -> 1.05, (16,56,56,24->40)
/// 0.85 -> 0.82; 12 x 2 -> 8 x 3 (8,28,28,96->96) 0.79 -> 0.77; 6 x 3 measured as 8 x 3.
/// AVX2, 6 x 2 + 6 x 1 -> 4 x 3 + 4 x 2: (16,56,56,24->40) 1.116 -> 1.055, (8,56,56,32->40)
/// 0.731 -> 0.708, (8,28,28,40->88) 0.476 -> 0.455.
template <typename T>
void forward_indirect(const ConvKernels<T>& cfg_in, const Conv2dGeometry& g, const T* x, const T* w,
                      const T* bias, T* y) {
  const int64_t len = g.FW * g.C, K = g.FH * len, Q = g.Q;
  ConvKernels<T> cfg = cfg_in;
  const auto take = [&cfg](int64_t mr, int64_t nr, IndirectKernel<T> kernel) {  // one tile, no last-panel kernel
    cfg.MR = mr;
    cfg.NR = nr;
    cfg.indirect = kernel;
    cfg.indirect_last = nullptr;
  };
  if (cfg.indirect_wide && Q % cfg.NR_indirect_wide == 0) {
    take(cfg.MR_indirect_wide, cfg.NR_indirect_wide, cfg.indirect_wide);
  } else if (cfg.indirect_three && (Q % cfg.NR_indirect_three == 0 || 3 * (Q % cfg.NR_indirect_three) > 2 * cfg.NR_indirect_three) &&
             panel_fits<T>(K, cfg.NR_indirect_three)) {
    take(cfg.MR_indirect_three, cfg.NR_indirect_three, cfg.indirect_three);
  } else if (one_vector_avx512(cfg) && Q > 2 * cfg.NR) {
    const ConvKernels<T> main = conv_kernels<T>(cfg.level);
    if (Q % main.NR != 0 && Q % main.NR <= main.NR_indirect_last) cfg = main;
  } else if (cfg.level == SimdLevel::AVX2 && Q % cfg.NR != 0) {
    const ConvKernels<T> three = conv_kernels<T>(cfg.level, /*alt_tile=*/true);
    if (three.NR != cfg.NR && Q % three.NR == three.NR_indirect_last) cfg = three;
  }
  const int64_t NR = cfg.NR, MR = cfg.MR, NRl = cfg.NR_indirect_last;
  // The last panel on the row's narrower kernel where that covers it, packed NRl wide.
  const bool narrower = cfg.indirect_last && Q % NR != 0 && Q % NR <= NRl;
  PackedB<T> B;
  B.pack_strided(cfg, K, Q, w, 1, K, narrower ? NRl : 0);
  const int64_t panels = (Q + NR - 1) / NR;
  for_each_indirect_block(g, x, MR, [&](int64_t r0, int64_t nr, int64_t nh, const T* const* ph, int64_t h0) {
    for (int64_t p = 0; p < panels; ++p) {
      const bool last = narrower && p == panels - 1;
      const int64_t width = last ? NRl : NR;
      const IndirectKernel<T> kernel = last ? cfg.indirect_last : cfg.indirect;
      const int64_t q0 = p * NR, nq = std::min(width, Q - q0);
      const T* bp = B.data.data() + p * K * NR + h0 * len * width;
      // A whole tile goes from the registers to y (-2.5% at (16,32,32,32->64, 3x3 S2));
      // a partial one through out and store_tile.
      if (nr == MR && nq == width) {
        kernel(nh, len, ph, bp, y + r0 * Q + q0, Q, bias ? bias + q0 : nullptr);
        continue;
      }
      alignas(64) T out[kMaxTileValues];
      kernel(nh, len, ph, bp, out, width, nullptr);
      cfg.store_tile(out, nr, width, y + r0 * Q + q0, Q, bias ? bias + q0 : nullptr, nq);
    }
  });
}

/// 1x1 forward without padding, straight to the GEMM: Y (N*Ho*Wo x Q) = X (N*Ho*Wo x C) W^T,
/// W (Q x C) read transposed through its strides. The GEMM starts each tile of Y from the
/// bias (Y = b + X W^T; one rounding per K slice, as gemm documents): filling Y with b in a
/// pass of its own cost 15% of the (16,14,14,128->256) forward.
template <typename T>
void forward_pointwise(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t C = g.C, Q = g.Q, rows = g.N * g.Ho * g.Wo;
  const T* a = x;
  Scratch<T> gathered(g.stride_h == 1 && g.stride_w == 1 ? 1 : rows * C, "conv2d: 1x1 gathered rows");
  if (g.stride_h != 1 || g.stride_w != 1) {
    pointwise_gather(g, x, gathered.get());
    a = gathered.get();
  }
  gemm<T>(rows, Q, C, a, C, 1, w, 1, C, y, Q, /*accumulate=*/false, bias);
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
