// nablagrad/kernels/conv2d/small_c.h - passes for few input channels (C = 1..4, first layers),
// where the GEMM depth FH*FW*C is too short for im2col and packing to pay off:
//   forward_direct          forward straight from a zero-padded copy of the input (small depth)
//   backward_input_smallc   input gradient as blocked dot products straight from dY (C <= 2, S = 1)
//   backward_weight_smallc  kernel + bias gradient with register accumulators (C <= 4)
// Their kernels are the `direct`, `smallc_dx`, `smallc_dw` rows of microkernel.h; when each
// runs is decided in select.h. See docs/convolution.md, "From the equations to fast kernels".
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../checked.h"
#include "../../threading.h"
#include "forward.h"
#include "gather_gemm.h"
#include "geometry.h"
#include "microkernel.h"
#include "narrow.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// Values per padded input row of forward_direct: the padded width, extended on the right so
// that the last block of MR output columns never reads past a row; -1 when it overflows.
inline int64_t forward_direct_row_values(const Conv2dGeometry& g, int64_t MR) {
  const int64_t wblocks = (g.Wo + MR - 1) / MR;
  int64_t reach = 0, wpe = 0, values = 0;
  if (!product_fits({wblocks * MR - 1, g.stride_w}, reach) ||
      __builtin_add_overflow(reach, g.FW, &reach))
    return -1;
  wpe = std::max(g.W + g.pad_left + g.pad_right, reach);
  return product_fits({wpe, g.C}, values) ? values : -1;
}

/// Whether the direct forward of g runs on the 2-vector stride-1 kernel (direct_s1_two): stride
/// 1 along rows of at least 24 pixels (in blocks of 8 and 4; the indirect kernel walks pixels
/// flat across rows, and on rows of 14 its 12 x 2 tile was 11% faster: (8,14,14,64->64, 7x7)
/// 1.66-1.71 vs 1.87-1.90 ms), where the 3-vector tile does not take the filters. The choice of
/// the direct forward for its kernel's panels (select_forward) asks the same.
template <typename T>
inline bool direct_s1_two_for(const ConvKernels<T>& cfg, const Conv2dGeometry& g) {
  return g.stride_w == 1 && g.Wo >= 24 && direct_s1_two(cfg, g.FW) && !use_direct_three(cfg, g.Q);
}

/// What forward_direct runs for g on the kernels cfg_in: the tile (cfg: the 3-vector tile where
/// the filters fill its panels, use_direct_three; the blocks of 8 and 4 of the 2-vector
/// stride-1 kernel where direct_s1_two_for), the stride-1 kernels that broadcast each input
/// value once (s1 for blocks of cfg.MR, s1_tail for the tails; nullptr where there are none)
/// and the blocks of an output row (rb).
template <typename T>
struct DirectForwardPlan {
  ConvKernels<T> cfg;
  DirectS1Kernel<T> s1 = nullptr, s1_tail = nullptr;
  DirectRowBlocks rb{};
};
template <typename T>
inline DirectForwardPlan<T> direct_forward_plan(const ConvKernels<T>& cfg_in, const Conv2dGeometry& g) {
  DirectForwardPlan<T> p;
  // Filters that fill 3-vector panels: the 8 x 3-vector tile (use_direct_three), also over
  // the 24 x 1-vector tile's stride-1 kernel below. Filters of at most one AVX2 vector: the
  // 1-vector ymm tiles (use_direct_one). Else where the 2-vector stride-1 kernel
  // applies (7 wide): its blocks of 8 pixels, the rest of a row in its blocks of 4 (s1_tail),
  // no direct blocks.
  // (Neither swapped tile is the 12 x 2-vector one that direct_s1_two_for asks for.)
  p.cfg = with_direct_tiles_for(cfg_in, g.Q);
  const bool two = direct_s1_two_for(p.cfg, g);
  // Stride 1 and a tile that has one: the kernel that broadcasts each input value once.
  p.s1 = g.stride_w == 1 ? direct_s1_kernel(p.cfg, g.FW) : nullptr;
#if NABLAGRAD_X86
  if (two) {
    p.cfg.MR = kDirectS1TwoRows;
    p.cfg.MR_direct_tail = kDirectS1TwoTail;
    p.cfg.MR_direct_wide = 0;
    p.s1 = &direct_s1_two_kernel_avx512<T, 7>;
    p.s1_tail = &direct_s1_two_kernel_avx512<T, 7, static_cast<int>(kDirectS1TwoTail)>;
  }
#endif
  // Each output row in blocks of MR pixels, the last ones of MR_direct_tail where the tile
  // has a shorter variant (beside s1, the remainder past its whole blocks: the tails then sum
  // in the direct kernel's order, (h, kx, c), where s1 sums (h, c, kx)).
  p.rb = p.s1 ? direct_row_blocks_s1(g.Wo, p.cfg.MR, p.cfg.MR_direct_tail)
              : direct_row_blocks(g.Wo, p.cfg.MR, p.cfg.MR_direct_tail, p.cfg.MR_direct_wide);
  return p;
}

// Direct forward (small depth K = FH*FW*C, or a K x NR kernel panel of <= 64 KiB; at least
// NR/4 filters; the choice is in select.h): no im2col. Each task of output rows copies the
// input rows it reads into a zero-padded buffer of its thread (extra zero columns on the
// right so the last block of MR output columns never reads past a row), then for each output row and
// each block of MR consecutive output columns the direct micro-kernel reads the FH runs of
// FW*C values of its MR pixels in place (pixel stride S_w*C, kernel-row stride Wpe*C) and
// the results are stored with the bias added: one pass over the output, no C tile to zero
// and re-read. Work is split over (n, ho) output rows; every output element is computed by
// one thread in the same order for any thread count.
template <typename T>
void forward_direct(const ConvKernels<T>& cfg_in, const Conv2dGeometry& g, const T* x, const T* w,
                    const T* bias, T* y) {
  const DirectForwardPlan<T> plan = direct_forward_plan(cfg_in, g);
  const ConvKernels<T>& cfg = plan.cfg;
  const DirectS1Kernel<T> s1 = plan.s1, s1_tail = plan.s1_tail;
  const DirectRowBlocks& rb = plan.rb;
  const int64_t NR = cfg.NR, MR = cfg.MR;
  const int64_t C = g.C, FH = g.FH, FW = g.FW, Q = g.Q, S_h = g.stride_h, S_w = g.stride_w;
  const int64_t len = FW * C, K = FH * len;
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom;
  const int64_t prow = forward_direct_row_values(g, MR);  // values per padded row (>= 0: see caller)
  PackedB<T> B;
  B.pack_strided(cfg, K, Q, w, 1, K);
  const int64_t panels = (Q + NR - 1) / NR;
  const DirectKernel<T> direct = direct_kernel_for(cfg, rb.mr, S_w * C);
  const int64_t row_work = std::max<int64_t>(1, g.Wo * Q * K);
  // Tasks of consecutive output rows (>= ~64K multiply-adds, at most ~64 tasks), claimed
  // dynamically. A thread's rows stay together: they share most of their input rows (a 7x7
  // stride-2 layer's next row reuses 5 of 7), and with single-row tasks the two threads took
  // alternate rows and each row ran 40% slower (8,64,64,3->32,7,2,3: 0.325 -> 0.27 ms at 2
  // threads; the 5x5 (4,96,96,16->16): 1.73 -> 1.53 ms).
  // Each task copies the padded input rows its output rows read (copy_padded_row) into a
  // buffer of its thread, and reads them there: no copy of the whole input before the tasks
  // (a parallel region of its own and a pass through memory). At 2 threads (C++ harness, same
  // run): (8,64,64,3->32, 7x7 S 2) 0.29 -> 0.27-0.28 ms, (4,96,96,16->16, 5x5) 1.50-1.61 ->
  // 1.43-1.48, its flipped dX 1.60 -> 1.50, (64,28,28,1->32) 0.28 -> 0.25-0.27. Rows shared
  // by neighbouring tasks (FH - S_h per boundary) are copied twice: at 1 thread the 7x7 runs
  // ~3% slower (0.48-0.50 -> 0.50-0.52 ms), the others as before.
  const int64_t rows = g.N * g.Ho;
  const int64_t chunk = std::max<int64_t>(std::max<int64_t>(1, (1 << 16) / row_work), (rows + 63) / 64);
  const int64_t window = checked_product({std::min(chunk, g.Ho) - 1, S_h}, "conv2d: padded input rows") + FH;
  parallel_chunks(rows, chunk, [&](int64_t, int64_t lo, int64_t hi) {
    alignas(64) T out[kMaxTileValues];
    T* xl = scratch<T, 2>(static_cast<size_t>(window * prow));  // padded rows base.. of image held
    int64_t held = -1, base = 0;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / g.Ho, ho = r % g.Ho;
      if (n != held) {  // the padded rows of this image's output rows r .. (at most hi - 1)
        const int64_t last = std::min(g.Ho - 1, ho + (hi - 1 - r));
        base = ho * S_h;
        for (int64_t i = 0; i < (last - ho) * S_h + FH; ++i) copy_padded_row(g, x, prow, n * Hp + base + i, xl + i * prow);
        held = n;
      }
      // Kernel rows wholly in the top or bottom padding add nothing: the tiles of this output
      // row run rows h0 .. h1 only (as oneDNN skips them). Where a 5x5 meets a 28-row image,
      // 4 of 28 output rows skip 1-2 of their 5 kernel rows.
      const int64_t top = ho * S_h - g.pad_top;  // the input row of kernel row 0
      const int64_t h0 = std::min(FH, std::max<int64_t>(0, -top));
      const int64_t nh = std::max<int64_t>(0, std::min(FH, g.H - top) - h0);
      const T* xrow = xl + (ho * S_h - base + h0) * prow;
      T* yrow = y + r * g.Wo * Q;
      for (int64_t blk = 0, wb = 0; wb < g.Wo; ++blk) {
        const bool tail = blk >= rb.full;
        const int64_t rows_b = tail ? cfg.MR_direct_tail : rb.mr, nw = std::min(rows_b, g.Wo - wb);
        const T* a = xrow + wb * S_w * C;
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t q0 = p * NR, nq = std::min(NR, Q - q0);
          // A whole tile goes from the registers to y; a partial one through out.
          const bool whole = nw == rows_b && nq == NR;
          T* dst = whole ? yrow + wb * Q + q0 : out;
          const int64_t ldd = whole ? Q : NR;
          const T* bq = whole && bias ? bias + q0 : nullptr;
          const T* bp = B.data.data() + p * K * NR + h0 * len * NR;
          if (tail && s1_tail)
            s1_tail(nh, C, a, prow, bp, dst, ldd, bq);
          else if (tail)
            cfg.direct_tail(nh, len, a, S_w * C, prow, bp, dst, ldd, bq);
          else if (s1)
            s1(nh, C, a, prow, bp, dst, ldd, bq);
          else
            direct(nh, len, a, S_w * C, prow, bp, dst, ldd, bq);
          if (!whole) cfg.store_tile(out, nw, NR, yrow + wb * Q + q0, Q, bias ? bias + q0 : nullptr, nq);
        }
        wb += rows_b;
      }
    }
  });
}


// Input gradient for C <= 4 with AVX2: the phase decomposition of conv2d_backward_input,
//   dX[n,y,x,c] = sum_{fh = yp mod S_h, fw = xp mod S_w} sum_q dY[n, (yp-fh)/S_h, (xp-fw)/S_w, q] W[q,fh,fw,c]
// computed as dot products straight from dY's Q-runs (no im2col, no dY.W buffer, no col2im).
// In the interior columns of a phase row every tap is inside [0, Wo), so NP pixels share each
// kernel load (smallc_dx_block); the few edge pixels, where some taps read the padding, go
// through narrow_row one by one. Work is split over (n, phase row); each dX element is written
// by one thread in a fixed order.
template <typename T>
void backward_input_smallc(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* dy,
                           const T* w, T* dx) {
  const int64_t S_h = g.stride_h, S_w = g.stride_w, Q = g.Q, C = g.C;
  const int64_t NP = smallc_dx_np(C);
  for (int64_t y0 = 0; y0 < std::min(S_h, g.H); ++y0) {  // the phases that own rows
    const int64_t Hph = (g.H - 1 - y0) / S_h + 1;
    const PhaseTaps ph_h = phase_taps(y0, g.pad_top, S_h, g.FH);
    const std::vector<int64_t>& taps_h = ph_h.taps;
    const std::vector<int64_t>& off_h = ph_h.off;
    for (int64_t x0 = 0; x0 < std::min(S_w, g.W); ++x0) {
      const int64_t Wph = (g.W - 1 - x0) / S_w + 1;
      if (g.N * Hph * Wph == 0) continue;
      const PhaseTaps ph_w = phase_taps(x0, g.pad_left, S_w, g.FW);
      const std::vector<int64_t>& taps_w = ph_w.taps;
      const std::vector<int64_t>& off_w = ph_w.off;
      const int64_t nth = static_cast<int64_t>(taps_h.size()), ntw = static_cast<int64_t>(taps_w.size());
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
      AlignedVector<T> bt(static_cast<size_t>(std::max<int64_t>(C * K, 1)));
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
            cfg.narrow_row(src.data(), nth * ntw, Q, bt.data(), K, C, dxrow + ix * S_w * C);
          };
          int64_t ix = 0;
          for (; ix < ix_lo; ++ix) one(ix);
          for (; ix + NP <= ix_hi; ix += NP) {
            set_src(ix, false);
            cfg.smallc_dx(C, src.data(), nth * ntw, Q, bt.data(), K, dxrow + ix * S_w * C,
                            S_w * C);
          }
          for (; ix < Wph; ++ix) one(ix);
        }
      });
    }
  }
}

template <typename T>
void backward_weight_smallc(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* x,
                            const T* dy, T* dw, T* db) {
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
  copy_padded_input(g, x, pl.prow, xp.get());
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
  const int64_t VL = cfg.VL;  // filters per block: one AVX2 vector, two AVX-512 ones
  parallel_chunks(out_rows, chunk_rows, [&](int64_t ci, int64_t r0, int64_t r1) {
    T* P = partial.get() + ci * K * Q;  // P[k*Q + q], k = fh*len + j
    T* dbp = dbpartial.get() + ci * Q;
    alignas(64) T acc[12 * kSmallCAccStride];
    alignas(64) T accb[kSmallCAccStride];
    for (int64_t q0 = 0; q0 < Q; q0 += VL) {
      const int64_t nq = std::min(VL, Q - q0);
      for (size_t ri = 0; ri < pl.row_start.size(); ++ri)
        for (size_t cj = 0; cj < pl.col_start.size(); ++cj) {
          const int64_t fh0 = pl.row_start[ri], nrw = pl.row_count[ri];
          const int64_t j0 = pl.col_start[cj], ncl = pl.col_count[cj];
          T* accb_p = (ri == 0 && cj == 0) ? accb : nullptr;  // db with the first tap block
          cfg.smallc_dw(pl, xp.get(), dy, g.Ho, g.Wo, S_h, Q, r0, r1, fh0, nrw, j0, ncl, q0, nq, acc,
                        accb_p);
          for (int64_t a = 0; a < nrw; ++a)
            for (int64_t b = 0; b < ncl; ++b) {
              const int64_t k = (fh0 + a) * pl.len + j0 + b;
              for (int64_t l = 0; l < nq; ++l) P[k * Q + q0 + l] = acc[(a * ncl + b) * kSmallCAccStride + l];
            }
          if (accb_p)
            for (int64_t l = 0; l < nq; ++l) dbp[q0 + l] = accb[l];
        }
    }
  });
  // Partials in chunk order: dW[q, k] = sum_c P_c[k, q], db[q] = sum_c dbP_c[q].
  sum_weight_partials(partial.get(), nchunks, K * Q, Q, K, Q, [](int64_t k) { return k; }, dw);
  if (db) sum_bias_partials(dbpartial.get(), nchunks, Q, db);
}


/// Whether the stride-1 input gradient can run as a forward convolution of dY (pads F-1-P
/// must not be negative: a padding of a kernel's full size or more would need a crop).
inline bool flipped_applies(const Conv2dGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_top < g.FH && g.pad_bottom < g.FH &&
         g.pad_left < g.FW && g.pad_right < g.FW;
}

/// The geometry of that forward convolution: input dY (N, Ho, Wo, Q), kernel (C, FH, FW, Q),
/// padding F-1-P on each side, stride 1; its output is (N, H, W, C).
inline Conv2dGeometry flipped_geometry(const Conv2dGeometry& g) {
  return {g.N,  g.Ho, g.Wo, g.Q, g.C, g.FH, g.FW, 1, 1, g.FH - 1 - g.pad_top, g.FH - 1 - g.pad_bottom,
          g.FW - 1 - g.pad_left, g.FW - 1 - g.pad_right, g.H, g.W};
}

/// The forward kernel that runs a stride-1 input gradient (backward_input_flipped).
enum class FlippedBy { Direct, Indirect, Narrow };

/// Stride-1 input gradient by a forward kernel (see select.h): dX = conv(dY padded by F-1-P,
/// Wf) with Wf[c, i, j, q] = W[q, FH-1-i, FW-1-j, c], the kernel flipped in space and
/// transposed in its channels, run by the direct forward kernel, the pointer-table one
/// (forward.h) or, for few channels, the narrow one (narrow.h).
template <typename T>
void backward_input_flipped(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* dy, const T* w,
                            T* dx, FlippedBy by) {
  const Conv2dGeometry gf = flipped_geometry(g);
  Scratch<T> wf(std::max<int64_t>(g.Q * g.FH * g.FW * g.C, 1), "conv2d backward: flipped kernel");
  parallel_for(0, g.FH * g.FW, 1, [&](int64_t lo, int64_t hi) {  // flip_kernel, tap by tap
    for (int64_t t = lo; t < hi; ++t) flip_kernel_tap(w, g.Q, g.FH, g.FW, g.C, t / g.FW, t % g.FW, wf.get());
  });
  const T* const none = nullptr;  // no bias
  switch (by) {
    case FlippedBy::Direct: forward_direct(cfg, gf, dy, wf.get(), none, dx); return;
    case FlippedBy::Indirect: forward_indirect(cfg, gf, dy, wf.get(), none, dx); return;
    case FlippedBy::Narrow: forward_narrow(narrow_kernels<T>(cfg.level, gf.Q), gf, dy, wf.get(), none, dx); return;
  }
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
