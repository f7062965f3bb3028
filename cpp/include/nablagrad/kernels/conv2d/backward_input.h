// nablagrad/kernels/conv2d/backward_input.h - the input gradient dL/dX without the zeros of
// the dilated output gradient:
//   backward_input_phases   S_h x S_w phase decomposition, one gather GEMM per phase
//   backward_input_col2im   few channels: dY.W as one GEMM, then col2im
//   backward_input_col2im_gemm  kernels over 1 MiB: the same with gemm(), by blocks of images
// (the small-C dot-product variant is in small_c.h; select.h decides which one runs).
// See docs/convolution.md, "Backward, in my own words" and "From the equations to fast kernels".
#pragma once

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../threading.h"
#include "../gemm.h"
#include "forward.h"
#include "gather_gemm.h"
#include "geometry.h"
#include "microkernel.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// col2im of images [n0, n1): dX[n] = 0, then dX[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] +=
// dcol[(n-n0,ho,wo), (fh,fw,c)] (dc holds images n0.. from its start). One thread per image, so every dX
// element receives its contributions in the same (ho, wo, fh) order for any thread count: the
// FW taps of kernel row fh of output pixel (ho, wo) land on FW consecutive input columns, so
// each (pixel, fh) adds one contiguous run of FW*C values (clipped at the left/right padding).
template <typename T>
void col2im_images(const Conv2dGeometry& g, const T* dc, int64_t n0, int64_t n1, T* dx) {
  const int64_t C = g.C, FW = g.FW, K = g.FH * FW * C, run = FW * C;
  parallel_chunks(n1 - n0, 1, [&](int64_t, int64_t lo, int64_t hi) {
    for (int64_t n = n0 + lo; n < n0 + hi; ++n) {
      T* dxn = dx + n * g.H * g.W * C;
      std::memset(dxn, 0, sizeof(T) * static_cast<size_t>(g.H * g.W * C));
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const T* src = dc + (((n - n0) * g.Ho + oh) * g.Wo + ow) * K;
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

// Input gradient for few input channels (C*4 <= NR), in two passes instead of per-phase dot
// products:
//   1. dcol = dY (N*Ho*Wo x Q) . W (Q x FH*FW*C): one gather GEMM whose rows are dY's
//      contiguous Q-runs (the depth Q is the long axis, the columns FH*FW*C fill whole panels);
//   2. dX[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] += dcol[(n,ho,wo), (fh,fw,c)] (col2im): each
//      dcol entry is the contribution of one tap of one output pixel, i.e. the terms of the
//      phase sums of backward_input_phases, added in output-pixel order instead of gathered.
// The products with the dilation zeros are never formed here either; input rows the forward
// pass never reached receive nothing and stay 0.
template <typename T>
void backward_input_col2im(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* dy,
                           const T* w, T* dx) {
  const int64_t C = g.C, Q = g.Q, FW = g.FW, K = g.FH * FW * C;
  const int64_t rows = g.N * g.Ho * g.Wo;
  Scratch<T> dcol(std::max<int64_t>(rows * K, 1), "conv2d backward: dY.W columns");  // <= 2^26 (caller)
  PackedB<T> B;
  B.pack_strided(cfg, Q, K, w, K, 1);
  gather_gemm<T>(
      cfg, rows, B,
      [&](int64_t r0, int64_t r1, T* tile, int64_t lda) {
        if (lda == Q)
          std::memcpy(tile, dy + r0 * Q, sizeof(T) * static_cast<size_t>((r1 - r0) * Q));
        else
          for (int64_t r = r0; r < r1; ++r) copy_run(tile + (r - r0) * lda, dy + r * Q, Q);
      },
      [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
        for (int64_t r = r0; r < r1; ++r) copy_run(dcol.get() + r * K, ctile + (r - r0) * ldc, K);
      });
  col2im_images(g, dcol.get(), 0, g.N, dx);
}

/// backward_input_col2im_gemm's dY.W product by gemm_indirect on `images` images: its rows (dY's
/// pixels, read in place) ordered and tiled by pixel_rows_plan so that a tile's pixels share
/// the taps that fall in the padding, whose columns of the product col2im never reads: a tile
/// of rows and a panel of NR columns all of such taps is not computed (keep). valid[c *
/// panels + p]: whether panel p holds a tap of class c inside the input; tile_keep the same
/// for each tile of the planned rows. The depth slices are gemm()'s (k_slice_depth), so each
/// product element is gemm()'s chain: the same bits.
template <typename T>
struct DyColumnsPlan {
  int64_t images = -1, NR = 1;
  size_t panels = 0;
  std::vector<KSlice> slices;
  std::vector<char> valid;
  PixelRowsPlan rows;
  bool skip = false;           // whether the plan skips enough to run instead of gemm()
  std::vector<char> tile_keep;  // [tile * panels + panel]: the keep predicate, per tile of rows
};

template <typename T>
DyColumnsPlan<T> dy_columns_plan(const Conv2dGeometry& g, const PixelClasses& pc, int64_t images) {
  constexpr int64_t kScatter = 16;  // multiply-adds per row of a tile stored row by row
  constexpr int64_t kTile = 8;      // per row and panel of a tile run: its pointers and keep test
  DyColumnsPlan<T> plan;
  plan.images = images;
  const int64_t Q = g.Q, C = g.C, FW = g.FW, K = g.FH * FW * C, M = images * g.Ho * g.Wo;
  const gemm_detail::GemmConfig<T> cfg = gemm_detail::gemm_config_for<T>(M, K);
  plan.NR = cfg.NR;
  plan.panels = static_cast<size_t>((K + cfg.NR - 1) / cfg.NR);
  const int64_t depth = gemm_detail::k_slice_depth(Q, cfg.KC);
  for (int64_t k = 0; k < Q; k += depth) plan.slices.push_back({k, std::min(depth, Q - k)});
  plan.valid.assign(pc.taps.size() * plan.panels, 0);
  for (size_t c = 0; c < pc.taps.size(); ++c) {
    const auto& t = pc.taps[c];
    for (size_t p = 0; p < plan.panels; ++p) {
      const int64_t j0 = static_cast<int64_t>(p) * cfg.NR, j1 = std::min(K, j0 + cfg.NR);
      for (int64_t tap = j0 / C; tap <= (j1 - 1) / C; ++tap) {
        const int64_t fh = tap / FW, fw = tap % FW;
        if (fh >= t[0] && fh < t[1] && fw >= t[2] && fw < t[3]) plan.valid[c * plan.panels + p] = 1;
      }
    }
  }
  // The same as bits, 64 panels a word, for the pricing: a tile's panels are the union of its
  // classes' (the pricing visits every tile of every candidate).
  const size_t words = (plan.panels + 63) / 64;
  std::vector<uint64_t> bits(pc.taps.size() * words, 0);
  for (size_t c = 0; c < pc.taps.size(); ++c)
    for (size_t p = 0; p < plan.panels; ++p)
      if (plan.valid[c * plan.panels + p]) bits[c * words + p / 64] |= uint64_t{1} << (p % 64);
  std::vector<int64_t> tile_rows = {cfg.MR};
  if (gemm_detail::gemm_indirect_config<T>(M, K, 4).MR == 4) tile_rows.push_back(4);
  Conv2dGeometry gb = g;
  gb.N = images;
  const int64_t panels = static_cast<int64_t>(plan.panels);
  plan.rows = pixel_rows_plan(gb, pc, tile_rows, K <= cfg.NR ? get_num_threads() : 1,
                              [&](const int32_t* ids, int64_t nid, bool even) {
                                int64_t live = 0;
                                for (size_t wi = 0; wi < words; ++wi) {
                                  uint64_t u = 0;
                                  for (int64_t j = 0; j < nid; ++j) u |= bits[static_cast<size_t>(ids[j]) * words + wi];
                                  live += static_cast<int64_t>(std::bitset<64>(u).count());
                                }
                                return live * (Q + kTile + (even ? 0 : kScatter)) + (panels - live);
                              });
  // Worth it at AVX-512 where it leaves out 6% of gemm()'s multiply-adds: (2,32,32,480->64,
  // 3x3 S 2), 2% of them, ran 1.86 -> 2.07 ms (short 64-deep chains, tiles stored row by row).
  // The pointer tile is charged kTile more per row and panel, so that short chains (depth Q)
  // need more left out: (32,16,16,64->128, 3x3 S 2), 8% at depth 128, ran 1.75 by gemm() and
  // 1.96 through the plan (Zen 4, 2 threads, alternating processes); (8,14,14,256->512, S 2),
  // 9% at 256, gains 4.50 -> 4.32, and (16,14,14,64->64, 7x7 S 2), 23% at 64, 1.64 -> 1.48.
  // At the other levels gemm()'s packed tile (AVX2's hand-written 6 x 16) is quicker than the
  // pointer tile, so 25%: AVX2, 2 threads, ms, (4,7,7,64->256, 7x7 P 3), 43% left out, 1.91-1.99
  // -> 1.61-1.72, but (16,14,14,64->64, 7x7 S 2), 23%, 2.12-2.18 -> 2.62-2.70 and
  // (32,8,8,256->512, 3x3 S 2), 16%, 5.9-6.3 -> 6.2-7.0.
  const int64_t full = M * static_cast<int64_t>(plan.panels) * Q;
  plan.skip = plan.rows.price * 100 <= full * (simd_at_least(SimdLevel::AVX512) ? 94 : 75);
  if (!plan.skip) return plan;
  const int64_t MR = plan.rows.tile_rows, P = g.Ho * g.Wo, tiles = (M + MR - 1) / MR;
  plan.tile_keep.assign(static_cast<size_t>(tiles) * plan.panels, 0);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t pix = plan.rows.order.empty() ? i : plan.rows.order[static_cast<size_t>(i)];
    const char* v = plan.valid.data() + static_cast<size_t>(pc.cls[static_cast<size_t>(pix % P)]) * plan.panels;
    char* k = plan.tile_keep.data() + static_cast<size_t>(i / MR) * plan.panels;
    for (size_t p = 0; p < plan.panels; ++p) k[p] = static_cast<char>(k[p] | v[p]);
  }
  return plan;
}

/// Input gradient as dY.W with gemm() then col2im, in blocks of whole images (<= ~8 MiB of dY.W
/// rows each), for kernels over 1 MiB (deep layers): the phase GEMMs read all of their
/// sub-kernels once per tile of pixels. dcol = dY_b (pixels x Q) W (Q x K) by gemm() (W
/// row-major, packed once per block), then col2im_images. (8,14,14,256->512, 3x3 S 2) at
/// AVX-512, 2 threads: phases 9.5 -> 2.9 ms. Where some pixels' taps fall in the padding (and
/// not with skip_padding false), by gemm_indirect instead, which leaves out the tiles of
/// those taps' columns (dy_columns_plan): the same bits.
template <typename T>
void backward_input_col2im_gemm(const Conv2dGeometry& g, const T* dy, const T* w, T* dx, bool skip_padding = true) {
  const int64_t Q = g.Q, K = g.FH * g.FW * g.C, per_image = g.Ho * g.Wo;
  const int64_t images = gemm_path_block<T>(per_image * K, g.N);
  Scratch<T> dcol(checked_product({images, std::max<int64_t>(per_image, 1), std::max<int64_t>(K, 1)},
                                  "conv2d backward: dY.W columns"),
                  "conv2d backward: dY.W columns");
  const PixelClasses pc = pixel_classes(g);
  DyColumnsPlan<T> plan;
  for (int64_t n0 = 0; n0 < g.N; n0 += images) {
    const int64_t nb = std::min(images, g.N - n0);
    const T* dyb = dy + n0 * per_image * Q;
    if (skip_padding && pc.taps.size() >= 2 && plan.images != nb) plan = dy_columns_plan<T>(g, pc, nb);
    if (!skip_padding || pc.taps.size() < 2 || !plan.skip) {
      gemm<T>(nb * per_image, K, Q, dyb, Q, 1, w, K, 1, dcol.get(), K, /*accumulate=*/false);
    } else {
      const int64_t* order = plan.rows.order.empty() ? nullptr : plan.rows.order.data();
      const int64_t MR = plan.rows.tile_rows;
      gemm_indirect<T>(
          nb * per_image, K, plan.slices,
          [&](size_t s, int64_t i0, int64_t m, const T** ptrs, KSpan*, T*, const T*) {
            for (int64_t i = 0; i < m; ++i) ptrs[i] = dyb + (order ? order[i0 + i] : i0 + i) * Q + plan.slices[s].k0;
            return false;
          },
          w, K, 1, dcol.get(), K, nullptr, order, plan.rows.tile_rows,
          [&](int64_t i0, int64_t, int64_t j0, int64_t) {
            return plan.tile_keep[static_cast<size_t>(i0 / MR) * plan.panels + static_cast<size_t>(j0 / plan.NR)] != 0;
          });
    }
    col2im_images(g, dcol.get(), n0, n0 + nb, dx);
  }
}

/// Input gradient by S_h x S_w phase decomposition. The document computes
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
void backward_input_phases(const ConvKernels<T>& cfg, const Conv2dGeometry& g, const T* dy,
                           const T* w, T* dx) {
  const int64_t S_h = g.stride_h, S_w = g.stride_w, Q = g.Q, C = g.C;
  // Phases are visited by their first row y0 (first column x0): only the min(S, H) phases
  // that own input rows exist (a stride of 2^40 has 2^40 phases, all but H of them empty).
  for (int64_t y0 = 0; y0 < std::min(S_h, g.H); ++y0) {
    // Rows y of this phase: (y + pad_top) mod S_h == ph; its taps and their dY row offsets
    // (for y = y0 + iy*S_h and a tap fh, ho = iy + off_h[th], exactly: phase_taps).
    const int64_t Hph = (g.H - 1 - y0) / S_h + 1;
    const PhaseTaps ph_h = phase_taps(y0, g.pad_top, S_h, g.FH);
    const std::vector<int64_t>& taps_h = ph_h.taps;
    const std::vector<int64_t>& off_h = ph_h.off;
    for (int64_t x0 = 0; x0 < std::min(S_w, g.W); ++x0) {
      const int64_t Wph = (g.W - 1 - x0) / S_w + 1;
      const int64_t rows = g.N * Hph * Wph;
      if (rows == 0) continue;
      const PhaseTaps ph_w = phase_taps(x0, g.pad_left, S_w, g.FW);
      const std::vector<int64_t>& taps_w = ph_w.taps;
      const std::vector<int64_t>& off_w = ph_w.off;
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
            zero_run(dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C, C);
        });
        continue;
      }
      // Sub-kernel of this phase: B((th, tw, q), c) = W[q, taps_h[th], taps_w[tw], c].
      const int64_t K = nth * ntw * Q;
      PackedB<T> B;
      B.pack(cfg, K, C, [&](int64_t k, int64_t c) {
        const int64_t q = k % Q, t = k / Q;
        const int64_t fh = taps_h[t / ntw], fw = taps_w[t % ntw];
        return w[((q * g.FH + fh) * g.FW + fw) * C + c];
      });
      if (B.narrow) {  // few input channels: dot products straight from dY, no im2col
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
            cfg.narrow_row(src.data(), nth * ntw, Q, B.data.data(), K, C,
                                    dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C);
          }
        });
        continue;
      }
      gather_gemm<T>(
          cfg, rows, B,
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
                    copy_run(dst, src_row + wo * Q, Q);
                  else
                    zero_run(dst, Q);
                }
              }
            }
          },
          [&](int64_t r0, int64_t r1, const T* ctile, int64_t ldc) {
            int64_t n, iy, ix;
            pixel(r0, n, iy, ix);
            for (int64_t r = r0; r < r1; ++r, next_pixel(n, iy, ix))
              copy_run(dx + ((n * g.H + y0 + iy * S_h) * g.W + x0 + ix * S_w) * C,
                                    ctile + (r - r0) * ldc, C);
          });
    }
  }
}

/// How far the phases of one axis (input size n, padding pad, stride S, kernel F, output
/// size no) read dY outside [0, no): phase z0's pixels iz = 0 .. nph-1 read iz + off for its
/// taps' offsets, so lo = max(-off) before the start and hi = max(nph - 1 + off - (no - 1))
/// past the end (both >= 0).
inline void phase_reach(int64_t n, int64_t pad, int64_t S, int64_t F, int64_t no, int64_t& lo, int64_t& hi) {
  for (int64_t z0 = 0; z0 < std::min(S, n); ++z0) {
    const int64_t nph = (n - 1 - z0) / S + 1;
    for (int64_t o : phase_taps(z0, pad, S, F).off) {
      lo = std::max(lo, -o);
      hi = std::max(hi, nph - 1 + o - (no - 1));
    }
  }
}

/// Strided input gradient, phase by phase, read in place from a zero-padded copy of dY (no
/// gather): in phase (y0, x0) the dX pixel (iy, ix) sums, over its taps (th, tw), dY at
/// (iy + off_h[th], ix + off_w[tw]); taps in descending order have ascending offsets (+1 each),
/// so one kernel row of taps reads ntw*Q consecutive values of a dY row, and the next kernel
/// row the same values one dY row further: the direct micro-kernel's access (small_c.h's
/// forward_direct) on the padded dY, with the sub-kernel of the phase (reversed taps) as B.
/// The pixels of a phase are walked flat over the padded dY rows (position p = iy*Wp + ix,
/// Wp = padded width), so blocks of MR pixels run on across rows; the few positions with
/// ix >= Wph (the padding columns) are computed and dropped, where a per-row walk would leave
/// most of a last block of each row empty. Each dX element is written once, by one thread.
/// Where no phase reads outside dY (no padding: 2x2 S 2 on even sizes, say) there is no copy:
/// the blocks read dY itself, and only the last ones, whose reads run past its end, a copy of
/// what they read with zeros after it. The copy of a 4 MiB dY, read back once per phase,
/// was ~10% of the time of (32,32,32,32->64, 2x2 S 2) (AVX-512, 2 threads, 0.61 -> 0.55 ms).
template <typename T>
void backward_input_phases_direct(const ConvKernels<T>& cfg_in, const Conv2dGeometry& g, const T* dy,
                                  const T* w, T* dx) {
  const ConvKernels<T> cfg = with_direct_tiles_for(cfg_in, g.C);
  const int64_t S_h = g.stride_h, S_w = g.stride_w, Q = g.Q, C = g.C, NR = cfg.NR, MR = cfg.MR;
  const int64_t nph = std::min(S_h, g.H), npw = std::min(S_w, g.W);
  // Padding of dY that every phase's reads fit in.
  int64_t pt = 0, pb = 0, pl = 0, pr = 0;
  phase_reach(g.H, g.pad_top, S_h, g.FH, g.Ho, pt, pb);
  phase_reach(g.W, g.pad_left, S_w, g.FW, g.Wo, pl, pr);
  const int64_t Hp = pt + g.Ho + pb, Wp = pl + g.Wo + pr, img = Hp * Wp * Q;
  const bool in_place = pt == 0 && pb == 0 && pl == 0 && pr == 0;
  // Flat positions of a phase run to a whole block of MR past its last row, and from there a
  // kernel window reaches at most Hp*Wp + MR + Wp*FH positions into the next image: zeros after
  // the last image cover it.
  const int64_t tail = (MR + Wp * (g.FH + 1) + g.FW) * Q;
  Scratch<T> dyp(in_place ? 0 : g.N * img + tail, "conv2d backward: padded output gradient copy");
  if (!in_place) {
    const Conv2dGeometry gp{g.N, g.Ho, g.Wo, Q, 0, 0, 0, 1, 1, pt, pb, pl, pr, 0, 0};
    copy_padded_input(gp, dy, Wp * Q, dyp.get());
    std::fill(dyp.get() + g.N * img, dyp.get() + g.N * img + tail, T(0));
  }
  const T* const dyb = in_place ? dy : dyp.get();
  // The A of a block of `rows` pixels at a (its kernel rows Wp*Q apart): a itself, or in place
  // for a block whose reads run past the end of dY, a copy of what it reads (zeros past the end).
  auto block_a = [&](const T* a, int64_t rows, int64_t nth, int64_t len) -> const T* {
    if (!in_place) return a;
    const int64_t reach = (rows - 1 + (nth - 1) * Wp) * Q + len, left = dy + g.N * img - a;
    if (reach <= left) return a;
    T* copy = scratch<T, 0>(static_cast<size_t>(reach));
    std::copy_n(a, left, copy);
    std::fill(copy + left, copy + reach, T(0));
    return copy;
  };
  // The phases, their packed sub-kernels and their tasks (blocks of MR flat positions of one
  // image), all run in one parallel region: task t belongs to the phase whose range holds it.
  struct Phase {
    int64_t y0 = 0, x0 = 0, Hph = 0, Wph = 0, nth = 0, ntw = 0, first = 0, blocks = 0, task0 = 0;
    bool by_rows = false;        // tasks are the phase's rows (rb), else blocks of MR flat positions
    DirectRowBlocks rb{0, 0, 0, 0};  // the blocks of a row (by_rows)
    PackedB<T> B;
  };
  std::vector<Phase> phases;
  int64_t ntasks = 0;
  std::vector<T> sub;
  for (int64_t y0 = 0; y0 < nph; ++y0) {
    const PhaseTaps th = phase_taps(y0, g.pad_top, S_h, g.FH);
    for (int64_t x0 = 0; x0 < npw; ++x0) {
      const PhaseTaps tw = phase_taps(x0, g.pad_left, S_w, g.FW);
      Phase ph;
      ph.y0 = y0;
      ph.x0 = x0;
      ph.Hph = (g.H - 1 - y0) / S_h + 1;
      ph.Wph = (g.W - 1 - x0) / S_w + 1;
      ph.nth = static_cast<int64_t>(th.taps.size());
      ph.ntw = static_cast<int64_t>(tw.taps.size());
      ph.task0 = ntasks;
      ph.first = ph.blocks = 0;
      if (ph.nth * ph.ntw > 0) {
        // Sub-kernel, taps reversed: row (th', tw', q) = W[q, fh(nth-1-th'), fw(ntw-1-tw'), :].
        const int64_t K = ph.nth * ph.ntw * Q;
        sub.resize(static_cast<size_t>(K * C));
        T* dst = sub.data();
        for (int64_t a = ph.nth; a-- > 0;)
          for (int64_t b = ph.ntw; b-- > 0;)
            for (int64_t q = 0; q < Q; ++q, dst += C)
              std::copy_n(w + ((q * g.FH + th.taps[a]) * g.FW + tw.taps[b]) * C, C, dst);
        ph.B.pack_strided(cfg, K, C, sub.data(), C, 1);
        // dX pixel (iy, ix) reads from flat padded position iy*Wp + ix + first.
        ph.first = (th.off[ph.nth - 1] + pt) * Wp + tw.off[ph.ntw - 1] + pl;
        // Row by row, in full and tail blocks, where that computes no more positions per row
        // than the flat walk (Wp): then every block lies in one row, goes from the registers
        // to dX (pixels S_w*C apart) and no padding column is computed. (16,32,32,32->64, 3x3
        // S 2) at AVX-512: rows of 16 = 8 + 8 against 17 flat positions per row.
        ph.rb = direct_row_blocks(ph.Wph, MR, cfg.MR_direct_tail, cfg.MR_direct_wide);
        ph.by_rows = ph.rb.span <= Wp;
        ph.blocks = ph.by_rows ? ph.Hph : ((ph.Hph - 1) * Wp + ph.Wph + MR - 1) / MR;
        ntasks += g.N * ph.blocks;
      } else {
        ntasks += g.N * ph.Hph;  // no kernel tap ever reaches these pixels: zero rows
      }
      phases.push_back(std::move(ph));
    }
  }
  const int64_t panels = (C + NR - 1) / NR;
  // Where the phases have as many tasks each (sizes a multiple of the stride), their tasks
  // alternate: task t is task t / P of phase t % P. The phases' blocks over the same dY rows
  // then run together (dY is read from memory once, not once per phase) and dX's rows are
  // written whole, not in S_w strided passes: (8,112,112,32->64, 3x3 S 2) 3.7 -> 3.35 ms,
  // (8,64,64,64->64, 2x2 S 2) 1.18 -> 1.10 (AVX-512, 2 threads, caches flushed before each).
  const int64_t nphases = static_cast<int64_t>(phases.size());
  bool alternate = nphases > 0 && ntasks % nphases == 0;
  for (int64_t i = 0; i < nphases; ++i)
    alternate = alternate && (i + 1 < nphases ? phases[i + 1].task0 : ntasks) - phases[i].task0 == ntasks / nphases;
  // About 64 chunks of consecutive tasks (claimed dynamically; each dX element is written by
  // one task, so the split does not change the result).
  parallel_chunks(ntasks, std::max<int64_t>(1, (ntasks + 63) / 64), [&](int64_t, int64_t lo, int64_t hi) {
    alignas(64) T out[kMaxTileValues];
    size_t pi = 0;
    for (int64_t t = lo; t < hi; ++t) {
      int64_t u = 0;  // the task's index in its phase
      if (alternate) {
        pi = static_cast<size_t>(t % nphases);
        u = t / nphases;
      } else {
        while (pi + 1 < phases.size() && phases[pi + 1].task0 <= t) ++pi;
        u = t - phases[pi].task0;
      }
      const Phase& ph = phases[pi];
      auto dx_at = [&](int64_t n, int64_t iy, int64_t ix) {
        return dx + ((n * g.H + ph.y0 + iy * S_h) * g.W + ph.x0 + ix * S_w) * C;
      };
      if (ph.blocks == 0) {
        for (int64_t ix = 0; ix < ph.Wph; ++ix) zero_run(dx_at(u / ph.Hph, u % ph.Hph, ix), C);
        continue;
      }
      const int64_t n = u / ph.blocks, len = ph.ntw * Q, K = ph.nth * len;
      if (ph.by_rows) {
        const int64_t iy = u % ph.blocks;
        for (int64_t blk = 0, ix = 0; ix < ph.Wph; ++blk) {
          const bool tail = blk >= ph.rb.full;
          const int64_t rows_b = tail ? cfg.MR_direct_tail : ph.rb.mr, nw = std::min(rows_b, ph.Wph - ix);
          const DirectKernel<T> direct = tail ? cfg.direct_tail : ph.rb.mr == MR ? cfg.direct : cfg.direct_wide;
          const T* a = block_a(dyb + n * img + (iy * Wp + ix + ph.first) * Q, rows_b, ph.nth, len);
          for (int64_t pn = 0; pn < panels; ++pn) {
            const int64_t c0 = pn * NR, nc = std::min(NR, C - c0);
            T* const d = dx_at(n, iy, ix) + c0;
            const T* const b = ph.B.data.data() + pn * K * NR;
            if (nw == rows_b && nc == NR) {  // whole: >= 4 pixels, S_w*C apart (below W*C)
              direct(ph.nth, len, a, Q, Wp * Q, b, d, S_w * C, nullptr);
            } else {  // (the pixel stride only for two pixels or more, as below)
              direct(ph.nth, len, a, Q, Wp * Q, b, out, NR, nullptr);
              cfg.store_tile(out, nw, NR, d, nw > 1 ? S_w * C : 0, nullptr, nc);
            }
          }
          ix += rows_b;
        }
        continue;
      }
      const int64_t p0 = (u % ph.blocks) * MR;
      const T* a = block_a(dyb + n * img + (p0 + ph.first) * Q, MR, ph.nth, len);
      for (int64_t pn = 0; pn < panels; ++pn) {
        cfg.direct(ph.nth, len, a, Q, Wp * Q, ph.B.data.data() + pn * K * NR, out, NR, nullptr);
        const int64_t c0 = pn * NR, nc = std::min(NR, C - c0);
        // The block's pixels in runs along padded rows: the valid ones (ix < Wph) of a run are
        // dX pixels S_w*C apart.
        int64_t iy = p0 / Wp, ix = p0 % Wp;
        for (int64_t i = 0; i < MR && iy < ph.Hph;) {
          const int64_t run = std::min(MR - i, Wp - ix), valid = std::max<int64_t>(0, std::min(run, ph.Wph - ix));
          // (The pixel stride only when a run has two pixels: then it is below W*C. With a
          // stride as large as int64 allows every phase row has one pixel.)
          if (valid > 0)
            cfg.store_tile(out + i * NR, valid, NR, dx_at(n, iy, ix) + c0, valid > 1 ? S_w * C : 0, nullptr, nc);
          i += run;
          ix += run;
          if (ix == Wp) {
            ix = 0;
            ++iy;
          }
        }
      }
    }
  });
}

/// 1x1 input gradient without padding, straight to the GEMM: dX rows (N*Ho*Wo x C) = dY W,
/// dY (N*Ho*Wo x Q) and W (Q x C) as they lie. With a stride the rows are computed into a
/// buffer and scattered to X[n, ho*S_h, wo*S_w, :]; the pixels no output reads get zeros.
template <typename T>
void backward_input_pointwise(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const int64_t C = g.C, Q = g.Q, rows = g.N * g.Ho * g.Wo;
  if (g.stride_h == 1 && g.stride_w == 1) {
    gemm<T>(rows, C, Q, dy, Q, 1, w, C, 1, dx, C, false);
    return;
  }
  Scratch<T> drows(std::max<int64_t>(rows * C, 1), "conv2d backward: 1x1 gradient rows");
  gemm<T>(rows, C, Q, dy, Q, 1, w, C, 1, drows.get(), C, false);
  parallel_for(0, g.N * g.H, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, g.W * C)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t r = lo; r < hi; ++r) {
                   const int64_t n = r / g.H, ih = r % g.H;
                   T* dst = dx + r * g.W * C;
                   const int64_t ho = ih / g.stride_h;
                   if (ih % g.stride_h != 0 || ho >= g.Ho) {
                     std::memset(dst, 0, sizeof(T) * static_cast<size_t>(g.W * C));
                     continue;
                   }
                   const T* src = drows.get() + ((n * g.Ho + ho) * g.Wo) * C;
                   for (int64_t iw = 0; iw < g.W; ++iw) {
                     const int64_t wo = iw / g.stride_w;
                     if (iw % g.stride_w == 0 && wo < g.Wo)
                       copy_run(dst + iw * C, src + wo * C, C);
                     else
                       zero_run(dst + iw * C, C);
                   }
                 }
               });
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
