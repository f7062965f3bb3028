// nablagrad/kernels/conv2d/gather_gemm.h - the "gather GEMM" driver of the convolution passes.
//
// Every im2col-style pass is out(r, j) = sum_k A(r, k) B(k, j), where the rows r are pixels,
// A's row r is gathered from an NHWC tensor (one contiguous run of channels per kernel tap:
// im2col of a tile of rows, never of the whole matrix) and B is (a part of) the kernel, packed
// once into panels of NR columns. The arithmetic is the `tile` kernel of the ConvKernels<T>
// table (microkernel.h); narrow outputs (few columns) use its `dot` kernel instead.
//
// Determinism: each output element is produced by one thread, summed in a fixed order over
// fixed tiles (the tiling depends on the shape and the kernel table only).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../checked.h"
#include "../../threading.h"
#include "../gemm.h"
#include "geometry.h"
#include "microkernel.h"

namespace nablagrad {
namespace kernels {
namespace conv_detail {

// The kernel matrix B (K x ncols) of a gather GEMM, packed for the micro-kernel (panels of NR
// columns, zero-padded: panel p holds B(k, p*NR + j) at [p*K*NR + k*NR + j]) or, when the
// output is narrow (few columns), transposed for dot products (B(k, j) at [j*K + k]).
// With last_nr > 0 the last panel is packed last_nr columns wide ([p*K*NR + k*last_nr + j]),
// for a narrower kernel that covers it (forward_indirect's indirect_last).
template <typename T>
struct PackedB {
  int64_t K = 0, ncols = 0, NR = 0;
  bool narrow = false;
  AlignedVector<T> data;  // whole vectors from line starts (AlignedAllocator)
  template <typename F>
  void pack(const ConvKernels<T>& cfg, int64_t K_, int64_t ncols_, const F& at, int64_t last_nr = 0) {
    set_shape(cfg, K_, ncols_);
    if (narrow) {
      data.assign(static_cast<size_t>(K * ncols), T(0));
      for (int64_t j = 0; j < ncols; ++j)
        for (int64_t k = 0; k < K; ++k) data[j * K + k] = at(k, j);
    } else {
      const int64_t panels = (ncols + NR - 1) / NR;
      data.assign(static_cast<size_t>(panels * K * NR), T(0));
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t width = p == panels - 1 && last_nr > 0 ? last_nr : NR;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < width && p * NR + j < ncols; ++j)
            data[p * K * NR + k * width + j] = at(k, p * NR + j);
      }
    }
  }
  // The same for B(k, j) = src[k * rs + j * cs], the kernel read through its strides: the
  // panels by gemm.h's pack_b (8 x 8 blocks transposed in registers where src runs along k,
  // as a convolution kernel (Q, K) does), the same values as pack(). The forward's kernel
  // (1600 x 64 floats, 5x5 on 64 channels) 46 -> 27 us, (288 x 64) 8.2 -> 4.7 us: it is packed
  // before the parallel region of every call, shared out among the threads by whole panels
  // where they are >= 128 KiB each (a deep kernel's 1-5 MB took 2% of a forward at one thread,
  // 4% at two: (8,28,28,128->256, 3x3 S 2) 2.54 -> 2.38 ms at 2 threads, AVX-512, C++).
  void pack_strided(const ConvKernels<T>& cfg, int64_t K_, int64_t ncols_, const T* src, int64_t rs, int64_t cs,
                    int64_t last_nr = 0) {
    set_shape(cfg, K_, ncols_);
    if (narrow) {
      pack(cfg, K_, ncols_, [&](int64_t k, int64_t j) { return src[k * rs + j * cs]; }, last_nr);
      return;
    }
    const int64_t panels = (ncols + NR - 1) / NR;
    const int64_t full = last_nr > 0 ? panels - 1 : panels;  // panels NR wide
    data.resize(static_cast<size_t>(panels * K * NR));       // every value is written below
    const int64_t panel_bytes = std::max<int64_t>(1, K * NR * static_cast<int64_t>(sizeof(T)));
    parallel_for(0, full, std::max<int64_t>(1, (int64_t{128} << 10) / panel_bytes), [&](int64_t p0, int64_t p1) {
      gemm_detail::pack_b<T>(K, std::min(ncols, p1 * NR) - p0 * NR, src + p0 * NR * cs, rs, cs, NR,
                             data.data() + p0 * K * NR);
    });
    if (full < panels)
      gemm_detail::pack_b<T>(K, ncols - full * NR, src + full * NR * cs, rs, cs, last_nr, data.data() + full * K * NR);
  }

 private:
  void set_shape(const ConvKernels<T>& cfg, int64_t K_, int64_t ncols_) {
    NR = cfg.NR;
    K = K_;
    ncols = ncols_;
    narrow = ncols * 4 <= NR;
    // K x ncols is (a part of) the kernel, already allocated: these sizes fit in int64.
    checked_product({K, (ncols + NR - 1) / NR * NR}, [] { return "conv2d: packed kernel"; });
  }
};

// Rows per tile: the gathered A tile (rows x K) should stay in L2 (~192 KiB of it).
template <typename T>
inline int64_t tile_rows(int64_t K, int64_t MR) {
  int64_t rows = (192 * 1024) / (std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(T)));
  rows = rows / MR * MR;
  return std::max<int64_t>(MR, std::min<int64_t>(rows, 20 * MR));
}

// out rows [0, rows): C(r, :) = A(r, :) B. build(r0, r1, tile, lda) writes A's rows r0..r1-1
// (K values each) into tile; store(r0, r1, ctile, ldc) consumes the finished rows.
// Tiles are fixed (shape-only) and handed to the threads with parallel_chunks.
template <typename T, typename Build, typename Store>
void gather_gemm(const ConvKernels<T>& cfg, int64_t rows, const PackedB<T>& B, const Build& build,
                 const Store& store) {
  const int64_t NR = B.NR, KC = cfg.KC, MR = cfg.MR;
  const int64_t K = B.K, ncols = B.ncols;
  const int64_t lda = std::max<int64_t>(K, 1);
  const int64_t MT = tile_rows<T>(K, MR);
  const int64_t ntiles = (rows + MT - 1) / MT;
  const int64_t panels = (ncols + NR - 1) / NR;
  const int64_t ldc = B.narrow ? ncols : panels * NR;
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
            ctile[r * ldc + j] = cfg.dot(tile + r * lda, B.data.data() + j * K, K);
      } else {
        const int64_t nr_pad = round_up(nr, MR);
        if (nr_pad > nr)
          std::fill(tile + nr * lda, tile + nr_pad * lda, T(0));
        std::fill(ctile, ctile + nr_pad * ldc, T(0));
        // Depth slices of about KC: K split into equal parts (288 = 2 x 144, not 256 + 32).
        const int64_t kslices = (K + KC - 1) / KC, kstep = (K + kslices - 1) / kslices;
        for (int64_t k0 = 0; k0 < K; k0 += kstep) {
          const int64_t kc = std::min(kstep, K - k0);
          for (int64_t p = 0; p < panels; ++p) {
            const T* bp = B.data.data() + (p * K + k0) * NR;
            for (int64_t i = 0; i < nr_pad; i += MR)
              cfg.tile(kc, tile + i * lda + k0, lda, int64_t{1}, bp, ctile + i * ldc + p * NR, ldc);
          }
        }
      }
      store(r0, r1, ctile, ldc);
    }
  });
}

// A 1x1 convolution without padding is a plain GEMM over pixel rows (kernels/gemm.h). With
// stride 1 the input (N*H*W x C) is that matrix as it lies; with a stride the rows of the
// output pixels, X[n, ho*S_h, wo*S_w, :], are first gathered into rows (N*Ho*Wo x C).
inline bool is_pointwise(const Conv2dGeometry& g) {
  return g.FH == 1 && g.FW == 1 && g.pad_top == 0 && g.pad_bottom == 0 && g.pad_left == 0 &&
         g.pad_right == 0;
}

// Gathers (stride > 1) or scatters (back) the rows of a strided 1x1 convolution:
// rows[(n, ho, wo), :] <-> x[n, ho*S_h, wo*S_w, :].
template <typename T>
void pointwise_gather(const Conv2dGeometry& g, const T* x, T* rows) {
  const int64_t C = g.C;
  parallel_for(0, g.N * g.Ho, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, g.Wo * C)),
               [&](int64_t lo, int64_t hi) {
                 for (int64_t r = lo; r < hi; ++r) {
                   const int64_t n = r / g.Ho, ho = r % g.Ho;
                   const T* src = x + ((n * g.H + ho * g.stride_h) * g.W) * C;
                   T* dst = rows + r * g.Wo * C;
                   for (int64_t wo = 0; wo < g.Wo; ++wo)
                     copy_run(dst + wo * C, src + wo * g.stride_w * C, C);
                 }
               });
}

}  // namespace conv_detail
}  // namespace kernels
}  // namespace nablagrad
