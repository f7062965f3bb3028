// nablagrad/kernels/conv2d/backward_weight.h - the kernel (and bias) gradient as a GEMM that
// reduces over output pixels in fixed chunks (the small-C variant is in small_c.h; select.h
// decides which one runs). See docs/convolution.md, "Kernel gradient".
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../checked.h"
#include "../../threading.h"
#include "../gemm.h"
#include "forward.h"
#include "geometry.h"
#include "microkernel.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

/// Kernel gradient (and bias gradient when db != nullptr):
///   dW[q, (fh,fw,c)] = sum_{(n,ho,wo)} dY[n,ho,wo,q] * X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c]
///   db[q]            = sum_{(n,ho,wo)} dY[n,ho,wo,q]
/// This is the document's dk(h,c,d,r) = sum_{w,i,j} gamma(i,j) dR(w,i,j,h) I(w,c+i,d+j,r)
/// summed only over the non-zero (gamma = 1) entries i = ho*S, j = wo*S of the dilated dY.
/// As a GEMM: dW^T (K x Q) = im2col(X)^T (K x pixels) * dY (pixels x Q). The pixel reduction is
/// split into fixed chunks (a function of the shape only); each chunk accumulates into its own
/// partial buffer, the partials are added in chunk order. db is fused into the dY packing.
template <typename T>
void backward_weight_gemm(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* x,
                          const T* dy, T* dw, T* db) {
  const int64_t NR = cfg.NR, MR = cfg.MR;
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q;
  const int64_t Kpad = round_up(K, MR);
  const int64_t panels = (Q + NR - 1) / NR, ldq = panels * NR;
  const int64_t pixels = g.N * g.Ho * g.Wo;
  // Pixel sub-tile: the im2col tile (PT x Kpad) stays in L2.
  int64_t PT = (160 * 1024) / (Kpad * static_cast<int64_t>(sizeof(T)));
  PT = std::max<int64_t>(16, std::min<int64_t>(256, PT / 16 * 16));
  // Fixed chunks of whole sub-tiles (dw_pixel_chunks).
  const PixelChunks chunks = dw_pixel_chunks(pixels, PT, Kpad * ldq * static_cast<int64_t>(sizeof(T)));
  const int64_t chunk = chunks.size, nchunks = chunks.count;
  const char* const what_p = "conv2d backward: weight partial sums";
  const char* const what_b = "conv2d backward: bias partial sums";
  Scratch<T> partial_buf(checked_product({nchunks, Kpad, ldq}, what_p), what_p, true);
  Scratch<T> dbpartial_buf(checked_product({nchunks, Q}, what_b), what_b, true);
  T* const partial = partial_buf.get();
  T* const dbpartial = dbpartial_buf.get();
  parallel_chunks(pixels, chunk, [&](int64_t ci, int64_t lo, int64_t hi) {
    AlignedVector<T> tile(static_cast<size_t>(PT * Kpad), T(0));  // columns K..Kpad stay zero
    AlignedVector<T> dyp(static_cast<size_t>(panels * PT * NR), T(0));
    T* P = partial + ci * Kpad * ldq;
    T* dbp = dbpartial + ci * Q;
    for (int64_t p0 = lo; p0 < hi; p0 += PT) {
      const int64_t p1 = std::min(hi, p0 + PT), np = p1 - p0;
      forward_im2col(g, x, p0, p1, tile.data(), Kpad);
      for (int64_t p = p0; p < p1; ++p) {  // pack dY rows into NR-wide panels; fused db
        const T* src = dy + p * Q;
        for (int64_t q = 0; q < Q; ++q) dbp[q] += src[q];
        for (int64_t pn = 0; pn < panels; ++pn)  // a last panel's columns past Q stay zero
          std::copy(src + pn * NR, src + std::min(Q, (pn + 1) * NR), dyp.data() + (pn * PT + (p - p0)) * NR);
      }
      for (int64_t pn = 0; pn < panels; ++pn)
        for (int64_t i = 0; i < Kpad; i += MR)
          cfg.tile(np, tile.data() + i, int64_t{1}, Kpad, dyp.data() + pn * PT * NR,
                       P + i * ldq + pn * NR, ldq);
    }
  });
  // Partials in chunk order: dW[q, k] = sum_c P_c[k, q].
  sum_weight_partials(partial, nchunks, Kpad * ldq, ldq, K, Q, [](int64_t k) { return k; }, dw);
  if (db) sum_bias_partials(dbpartial, nchunks, Q, db);
}

/// Rows of partial sums per kernel row in backward_weight_direct: the run of len = FW*C values
/// in blocks of MR, the last one in blocks of the level's shorter tile (MR_tail) where that
/// pads less; lenp - len < MR rows are padding.
template <typename T>
inline int64_t direct_dw_rows(const ConvKernels<T>& cfg, int64_t len) {
  const int64_t full = len / cfg.MR * cfg.MR, rest = len - full;
  if (rest > 0 && cfg.MR_tail > 0 && round_up(rest, cfg.MR_tail) < cfg.MR)
    return full + round_up(rest, cfg.MR_tail);
  return round_up(len, cfg.MR);
}

/// Kernel gradient (and bias gradient) without im2col, read in place from a zero-padded copy of
/// the input (blocks of rows: direct_dw_rows). For kernel row fh the document's sum is
///   dW[q, fh, j] = sum_{pixels (n,ho,wo)} X_p[n, ho*S_h + fh, wo*S_w*C + j] * dY[n, ho, wo, q]
/// for j < FW*C: a GEMM whose depth is the pixels and whose column for pixel p is the run of
/// FW*C values of X_p at which it starts. The column micro-kernel (microkernel.h) takes one
/// pointer per depth step, so a call's depth runs on across output rows (blocks of up to 64
/// pixels: its MR x NR sums are loaded and stored once per block, not once per output row);
/// im2col would write and re-read FH*FW*C values per pixel. The run is cut into blocks of MR
/// (the last one reads up to MR-1 values past it, into the next pixels or the copy's zero
/// tail, which only feed rows of the partial sums that are dropped). Fixed chunks of pixels (a
/// function of the shape only) sum into their own partials, added in chunk order: the same
/// result for any thread count. db is summed with the dY packing. Long rows go per row (the
/// tile kernel at a fixed pixel stride), and at stride 1 rows of enough pixels go per row
/// through dw_s1_kernel_avx512 where the tile has one for FW (dw_s1_kernels: 3 and 5 on one
/// vector of filters, 7 on two; see the block comment below).
template <typename T>
void backward_weight_direct(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* x,
                            const T* dy, T* dw, T* db) {
  const int64_t NR = cfg.NR, MR = cfg.MR;
  const int64_t C = g.C, FH = g.FH, Q = g.Q;
  const int64_t len = g.FW * C, lenp = direct_dw_rows(cfg, len), K = FH * len, Kp = FH * lenp;
  const int64_t full = len / MR * MR;  // blocks of MR rows up to here, then of MR_tail
  const int64_t panels = (Q + NR - 1) / NR, ldq = panels * NR;
  const int64_t Hp = g.H + g.pad_top + g.pad_bottom, prow = (g.W + g.pad_left + g.pad_right) * C;
  // Blocks: whole output rows when they are long (Wo >= 64), each one a strided GEMM of depth
  // Wo (the tile micro-kernel with column stride S_w*C: measured ~10% faster than the column
  // kernel there, which loads a pointer per step), or at stride 1 with a tile that has them
  // and rows long enough for them, per output row through the kernels that broadcast each input
  // value once (dw_s1_kernel_avx512, in balanced blocks of <= cb channels; dw_s1_kernels says
  // for which tiles, kernel widths and rows); else 64 pixels across rows through the column
  // kernel, in fixed chunks of whole 256-pixel groups
  // (dw_pixel_chunks). A column-kernel call reads its block's MR values of each pixel's run
  // (a cache line or two per pixel) against the NR-wide dY panel: at 256 pixels that was
  // 48-64 KiB, past L1, at 64 a quarter. 2 threads, ms, 256 -> 64 (3 runs, C++ harness):
  // AVX-512 (8,56,56,64->128, 3x3 S 2) 3.41-3.54 -> 3.27-3.52, (16,32,32,32->64, S 2)
  // 0.56-0.61 -> 0.54-0.57, (8,56,56,32->64, S 2) 0.88-0.90 -> 0.83-0.86; AVX2 5.49-5.84 ->
  // 4.89-5.31, 0.93-0.99 -> 0.86-0.88, 1.41-1.49 -> 1.30-1.34. (32 was slower than 64.)
  DwS1Kernels<T> s1 = g.stride_w == 1 ? dw_s1_kernels(cfg, g.FW) : DwS1Kernels<T>{};
  if (g.Wo < s1.min_wo) s1 = DwS1Kernels<T>{};
  const int64_t nblk = s1.cb > 0 ? (C + s1.cb - 1) / s1.cb : 0;  // channel blocks, balanced sizes
  const bool by_rows = g.Wo >= 64 || s1.cb > 0;
  const int64_t PT = by_rows ? g.Wo : 64, group = by_rows ? PT : 256;
  // The stride-1 kernels take up to kDwS1Rows (4) output rows of one image a call: their sums
  // go into the partials once per 4 rows instead of every row. AVX-512, 2 threads, C++, ms,
  // alternated in one process: (8,28,28,32->32, 7x7) 1.99 -> 1.89, (8,32,32,64->64, 7x7)
  // 10.2 -> 9.6, (8,32,32,16->16, 5x5) 0.345 -> 0.330 (8 rows: within 3% of 4).
  const int64_t rows_per_block = s1.cb > 0 ? kDwS1Rows : 1;
  // The padded copy, and lenp - len zeros after it for the last block of the last pixel.
  // Where the blocks end with the runs (lenp = len), no copy: without padding the copy would
  // be x itself, read in place; with padding, blocks across rows take their pointers from the
  // indirect forward's table (indirect_block_table: runs in x, zero runs above and below the
  // image, copies of the few runs that straddle its left or right border). In a training step
  // the copy of a large input is not in the cache. Forward, dX and dW in sequence, AVX-512,
  // 2 threads, 3 runs, ms: (16,64,64,64->64, 2x2 S 2) 7.0-8.2 -> 6.1-6.7; (8,64,64,64->64,
  // 2x2 S 2) 3.4-3.6 -> 2.9-3.2; by the table: (16,32,32,32->64, 3x3 S 2) 1.79-1.84 ->
  // 1.63-1.64; (8,112,112,32->64, S 2) 13.1-13.7 -> 10.9-12.1; even where the copy was small.
  const bool unpadded = g.pad_top == 0 && g.pad_bottom == 0 && g.pad_left == 0 && g.pad_right == 0;
  // (The table's border copies take FH x PT runs a thread, kept for later calls: at most 2 MiB;
  // the limit is the one measured with 256-pixel blocks, 8 MiB of runs.)
  const bool in_place = unpadded && lenp == len;
  const bool by_table = !in_place && !by_rows && lenp == len &&
                        saturating_mul(K, group * static_cast<int64_t>(sizeof(T))) <= (int64_t{8} << 20);
  Scratch<T> copy(in_place || by_table ? 0 : g.N * Hp * prow + (lenp - len), "conv2d backward: padded input copy");
  if (!in_place && !by_table) {
    copy_padded_input(g, x, prow, copy.get());
    std::fill(copy.get() + g.N * Hp * prow, copy.get() + g.N * Hp * prow + (lenp - len), T(0));
  }
  const T* const xp = in_place ? x : copy.get();
  const std::vector<T> zeros(by_table ? static_cast<size_t>(len) : 0, T(0));
  const int64_t pixels = g.N * g.Ho * g.Wo;
  const PixelChunks chunks = dw_pixel_chunks(pixels, group, Kp * ldq * static_cast<int64_t>(sizeof(T)));
  const int64_t chunk = chunks.size, nchunks = chunks.count;
  const char* const what_p = "conv2d backward: weight partial sums";
  const char* const what_b = "conv2d backward: bias partial sums";
  // Each chunk zeroes its own partials: in parallel, and into the cache it is about to sum in
  // (zeroed up front on one thread, 16 x 288 x 64 values were 3.5% of the (16,32,32,32->64,
  // S 2) kernel gradient). No pixels, no chunk runs: then the one partial is zeroed here.
  Scratch<T> partial(checked_product({nchunks, Kp, ldq}, what_p), what_p, /*zero=*/pixels == 0);
  Scratch<T> dbpartial(checked_product({nchunks, Q}, what_b), what_b, /*zero=*/pixels == 0);
  const bool packed = panels == 1 && Q == NR;  // dY rows are already an NR-wide panel
  parallel_chunks(pixels, chunk, [&](int64_t ci, int64_t lo, int64_t hi) {
    T* P = partial.get() + ci * Kp * ldq;  // P[(fh*lenp + j) * ldq + q]
    T* dbp = dbpartial.get() + ci * Q;
    std::fill(P, P + Kp * ldq, T(0));
    std::fill(dbp, dbp + Q, T(0));
    const T** cols = by_rows ? nullptr : scratch<const T*, 0>(static_cast<size_t>(FH * PT));
    T* edge = by_table ? scratch<T, 2>(static_cast<size_t>(FH * PT * len)) : nullptr;  // border runs
    const int64_t BT = rows_per_block * PT;  // pixels per block, at most
    T* dyp = packed ? nullptr : scratch<T, 1>(static_cast<size_t>(panels * BT * NR));
    for (int64_t p0 = lo, np = 0; p0 < hi; p0 += np) {
      const int64_t n = p0 / (g.Ho * g.Wo), ho = (p0 / g.Wo) % g.Ho;
      // (A block of several rows stays in one image: its input rows lie S_h padded rows apart.)
      np = std::min(hi - p0, rows_per_block > 1 ? std::min(rows_per_block, g.Ho - ho) * PT : PT);
      // by_rows: the block is one output row, read through its padded input row; else each
      // pixel's run of kernel row 0 (and fh rows down) goes into the pointer table.
      const T* row = by_rows ? xp + (n * Hp + ho * g.stride_h) * prow : nullptr;
      if (by_table) {
        int64_t h0 = 0, h1 = 0;  // (the rows outside [h0, h1) point at zeros and add nothing)
        indirect_block_table(g, x, zeros.data(), PT, p0, np, cols, edge, h0, h1);
      } else if (!by_rows) {
        for_each_window(g, xp, Hp, prow, p0, np, [&](int64_t i, const T* run) {
          for (int64_t fh = 0; fh < FH; ++fh) cols[fh * PT + i] = run + fh * prow;
        });
      }
      const T* drows = dy + p0 * Q;
      sum_rows(drows, np, Q, Q, dbp);
      if (!packed)  // NR-wide panels of the block's dY, zeros past Q
        for (int64_t pn = 0; pn < panels; ++pn)
          for (int64_t i = 0; i < np; ++i) {
            T* dst = dyp + (pn * BT + i) * NR;
            const int64_t q0 = pn * NR, nq = std::min(NR, Q - q0);
            std::copy(drows + i * Q + q0, drows + i * Q + q0 + nq, dst);
            std::fill(dst + nq, dst + NR, T(0));
          }
      for (int64_t fh = 0; fh < FH; ++fh)
        for (int64_t pn = 0; pn < panels; ++pn) {
          const T* bp = packed ? drows : dyp + pn * BT * NR;
          if (s1.cb > 0) {
            for (int64_t b = 0; b < nblk; ++b) {
              const int64_t c0 = C * b / nblk, nc = C * (b + 1) / nblk - c0;
              s1.by_count[nc](PT, np / PT, row + fh * prow + c0, g.stride_h * prow, C, bp, PT * NR,
                              P + (fh * lenp + c0) * ldq + pn * NR, C * ldq, ldq);
            }
            continue;
          }
          for (int64_t j = 0; j < lenp;) {
            const bool tail = j >= full && cfg.MR_tail > 0 && lenp - full < MR;
            const TileKernel<T> tile = tail ? cfg.tile_tail : cfg.tile;
            const ColumnKernel<T> column = tail ? cfg.column_tail : cfg.column;
            T* c = P + (fh * lenp + j) * ldq + pn * NR;
            if (by_rows)
              tile(np, row + fh * prow + j, int64_t{1}, g.stride_w * C, bp, c, ldq);
            else
              column(np, cols + fh * PT, j, bp, c, ldq);
            j += tail ? cfg.MR_tail : MR;
          }
        }
    }
  });
  // Partials in chunk order: dW[q, fh*len + j] = sum_c P_c[fh*lenp + j, q].
  sum_weight_partials(partial.get(), nchunks, Kp * ldq, ldq, K, Q,
                      [&](int64_t k) { return (k / len) * lenp + k % len; }, dw);
  if (db) sum_bias_partials(dbpartial.get(), nchunks, Q, db);
}

/// The bias gradient db[q] = sum over pixels of dY[p, q], in fixed chunks of pixels whose
/// partial sums are added in chunk order (the same result for any thread count).
template <typename T>
void bias_gradient(int64_t pixels, int64_t Q, const T* dy, T* db) {
  const int64_t chunk = std::max<int64_t>(256, (pixels + 15) / 16);
  const int64_t nchunks = std::max<int64_t>(1, (pixels + chunk - 1) / chunk);
  const char* const what = "conv2d backward: bias partial sums";
  Scratch<T> partial(checked_product({nchunks, Q}, what), what, true);
  parallel_chunks(pixels, chunk, [&](int64_t ci, int64_t lo, int64_t hi) {
    sum_rows(dy + lo * Q, hi - lo, Q, Q, partial.get() + ci * Q);
  });
  sum_bias_partials(partial.get(), nchunks, Q, db);
}

/// dW (Q x Kw, row-major) = sum over blocks of dY_b^T B_b, each block a gemm() over its
/// pixel rows (dY_b: rows x Q, B_b: rows x Kw with row stride ldb, both row-major), added in
/// order. gemm() runs its output's longer side as rows faster, so where Kw > Q and the pixel
/// sum is long enough to pay for a transpose of the result, the blocks accumulate
/// W^T = B^T dY (Kw x Q) in a buffer, transposed into dW by finish(). Measured at AVX-512,
/// 2 threads (ms, dY^T B -> B^T dY; pixels last): 64 x 256 x 25088 (a 1x1 256->64 layer) 3.12
/// -> 2.32 (+0.004 transpose); 32 x 800 x 6272 1.37 -> 1.13; 256 x 2304 x 1568 4.96 -> 4.57;
/// but 512 x 2304 x 392 2.40 -> 2.18 + 0.32 transposing (4.7 MB, out of L2): the transpose
/// costs about 50 / pixels of the product, so the buffer is used from 1024 pixels on. The
/// same bits either way: each element is one chain of FMAs over the same K slices in the same
/// order (fma(a, b, c) = fma(b, a, c)), whichever operand is A.
template <typename T>
class WeightGradientProduct {
 public:
  /// pixels: the whole sum's length (all blocks together).
  WeightGradientProduct(int64_t Q, int64_t Kw, int64_t pixels, T* dw)
      : Q_(Q), Kw_(Kw), dw_(dw), transposed_(Kw > Q && pixels >= 1024),
        t_(transposed_ ? saturating_mul(Kw, Q) : 1, "conv2d backward: transposed kernel gradient") {}
  void add(int64_t rows, const T* dy, const T* b, int64_t ldb, bool accumulate) {
    const int64_t P = rows;
    if (transposed_)
      gemm<T>(Kw_, Q_, P, b, 1, ldb, dy, Q_, 1, t_.get(), Q_, accumulate);
    else
      gemm<T>(Q_, Kw_, P, dy, 1, Q_, b, ldb, 1, dw_, Kw_, accumulate);
  }
  /// dW from the buffer (a no-op where the product went straight to dW).
  void finish() {
    if (!transposed_) return;
    const T* t = t_.get();
    const int64_t Q = Q_, Kw = Kw_;
    T* dw = dw_;
    // Tiles of 32 rows q x 64 columns k of dW, 8 x 8 register transposes inside where the level
    // has them (a scalar copy took as long as the GEMM saved: 2304 x 512, 0.25 ms). The tile
    // bounds the lines written at once: dW's rows are often a multiple of 4 KiB apart and
    // alias in L1 (whole strips of 8 columns down all of Q ran 2.5x slower).
    constexpr int64_t TQ = 32, TK = 64;
    const int64_t qt = (Q + TQ - 1) / TQ, kt = (Kw + TK - 1) / TK;
    parallel_for(0, qt * kt, 4, [&](int64_t lo, int64_t hi) {
      for (int64_t tile = lo; tile < hi; ++tile) {
        const int64_t q0 = tile / kt * TQ, q1 = std::min(Q, q0 + TQ);
        const int64_t k0 = tile % kt * TK, k1 = std::min(Kw, k0 + TK);
        int64_t kv = k0;
#if NABLAGRAD_X86
        if (std::is_same<T, float>::value && q1 - q0 == TQ && simd_at_least(SimdLevel::AVX2))
          for (; kv + 8 <= k1; kv += 8)
            gemm_detail::pack_b_cols8_avx2(TQ, reinterpret_cast<const float*>(t + kv * Q + q0), Q, Kw,
                                           reinterpret_cast<float*>(dw + q0 * Kw + kv));
#endif
        for (int64_t q = q0; q < q1; ++q)
          for (int64_t k = kv; k < k1; ++k) dw[q * Kw + k] = t[k * Q + q];
      }
    });
  }

 private:
  int64_t Q_, Kw_;
  T* dw_;
  bool transposed_;
  Scratch<T> t_;
};

/// Kernel gradient as blocks of im2col rows and gemm(), for kernels over 1 MiB (deep layers,
/// where backward_weight_direct / _gemm would write and add ~16 partial sums of the whole
/// kernel): dW (Q x K) += dY_b^T (Q x pixels of the block) im2col_b (pixels x K), the blocks of
/// pixels (<= ~8 MiB of im2col rows each) in order, dY^T read in place through its strides.
/// gemm splits Q x K, never the pixel sum, so the result is the same for any thread count.
/// (8,14,14,256->512, 3x3 S 2) at AVX-512, 2 threads: 5.4 -> 2.6 ms.
template <typename T>
void backward_weight_im2col_gemm(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, T* db) {
  const int64_t K = g.FH * g.FW * g.C, Q = g.Q, pixels = g.N * g.Ho * g.Wo;
  const int64_t block = gemm_path_block<T>(K, pixels);
  Scratch<T> a(checked_product({block, std::max<int64_t>(K, 1)}, "conv2d backward: im2col rows"),
               "conv2d backward: im2col rows");
  WeightGradientProduct<T> prod(Q, K, pixels, dw);
  if (pixels == 0) std::fill(dw, dw + Q * K, T(0));
  for (int64_t p0 = 0; p0 < pixels; p0 += block) {
    const int64_t nb = std::min(block, pixels - p0);
    im2col_rows_parallel(g, x, p0, nb, a.get());
    prod.add(nb, dy + p0 * Q, a.get(), K, /*accumulate=*/p0 > 0);
  }
  if (pixels > 0) prod.finish();
  if (db) bias_gradient(pixels, Q, dy, db);
}

/// From this many pixels the 1x1 kernel gradient (a C x Q product over all of them) splits
/// the pixel sum into fixed chunks run side by side, their partials added in chunk order, and
/// sums the bias gradient from the same rows: gemm() splits only its C x Q output, whose few
/// tiles each thread packed from the whole pixel sum, and the bias sums then read all of dY
/// again. AVX-512 / AVX2, 2 threads, dW and db (ms, before -> after): (8,112,112,32->16)
/// 1.07 -> 0.81 / 1.70 -> 1.18, (8,56,56,24->144) 1.47 -> 1.00 / 1.59 -> 1.32,
/// (8,56,56,64->64) 1.17 -> 1.00 / 1.63 -> 1.42, (8,112,112,16->96) 3.17 -> 2.43 / 3.98 ->
/// 3.85. Not below 16384 pixels: with 6272 (8,28,28,144->40) 0.38 -> 0.41 / 0.55 -> 0.63,
/// 3136 (16,14,14,128->256) 0.77 -> 1.02 / 1.18 -> 1.57 (each chunk's product too short).
/// Only for kernels of at most kPointwiseChunkedValues (256 KiB of floats): a wider product
/// has tiles enough for every thread, and 16 partials of it would be megabytes.
constexpr int64_t kPointwiseChunkedPixels = 16384, kPointwiseChunkedValues = 65536;

/// 1x1 kernel gradient without padding, straight to the GEMM: dW (Q x C) = dY^T X over the
/// N*Ho*Wo pixel rows (dY read transposed through its strides; X gathered first when strided).
/// gemm splits the Q x C output, never the pixel sum; from kPointwiseChunkedPixels on, fixed
/// chunks of pixels (a function of the shape) are summed in chunk order. Either way the
/// result is thread-count invariant.
template <typename T>
void backward_weight_pointwise(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, T* db) {
  const int64_t C = g.C, Q = g.Q, rows = g.N * g.Ho * g.Wo;
  const T* b = x;
  Scratch<T> gathered(g.stride_h == 1 && g.stride_w == 1 ? 1 : rows * C, "conv2d backward: 1x1 gathered rows");
  if (g.stride_h != 1 || g.stride_w != 1) {
    pointwise_gather(g, x, gathered.get());
    b = gathered.get();
  }
  if (rows >= kPointwiseChunkedPixels && C * Q <= kPointwiseChunkedValues) {
    // Per chunk of pixels P_c (C x Q) = X_c^T dY_c, one gemm() per chunk on one thread, the
    // partials added in chunk order (dw_pixel_chunks: ~16 chunks, fixed by the shape).
    const char* const what = "conv2d backward: 1x1 partial sums";
    const PixelChunks ch = dw_pixel_chunks(rows, 1, saturating_mul(saturating_mul(C, Q), static_cast<int64_t>(sizeof(T))));
    Scratch<T> partial(checked_product({ch.count, C, Q}, what), what);
    Scratch<T> dbpartial(db ? ch.count * Q : 1, what, true);
    // Sub-blocks of ~512 KiB of X and dY rows: the bias sums read dY's rows while the product
    // has them in cache (read apart, they streamed all of dY again: a third of the time at
    // (8,112,112,16->96)).
    const int64_t sub = std::max<int64_t>(64, (int64_t{1} << 19) / ((C + Q) * static_cast<int64_t>(sizeof(T))));
    parallel_chunks(rows, ch.size, [&](int64_t ci, int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r += sub) {
        const int64_t n = std::min(sub, hi - r);
        gemm<T>(C, Q, n, b + r * C, 1, C, dy + r * Q, Q, 1, partial.get() + ci * C * Q, Q, /*accumulate=*/r > lo);
        if (db) sum_rows(dy + r * Q, n, Q, Q, dbpartial.get() + ci * Q);
      }
    });
    sum_weight_partials(partial.get(), ch.count, C * Q, Q, C, Q, [](int64_t k) { return k; }, dw);
    if (db) sum_bias_partials(dbpartial.get(), ch.count, Q, db);
    return;
  }
  WeightGradientProduct<T> prod(Q, C, rows, dw);
  prod.add(rows, dy, b, C, /*accumulate=*/false);
  prod.finish();
  if (db) bias_gradient(rows, Q, dy, db);
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
