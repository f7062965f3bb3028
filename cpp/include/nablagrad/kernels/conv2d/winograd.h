// nablagrad/kernels/conv2d/winograd.h - Winograd minimal filtering for 3x3 and 5x5, stride-1
// convolutions in NHWC (float, double): F(2x2,3x3), F(4x4,3x3) and F(2x2,5x5) (Lavin & Gray
// 2015).
//
// Overview
// --------
// F(m x m, r x r) computes an m x m block of outputs from an a x a block of input
// (a = m + r - 1: 4 for F(2x2,3x3), 6 for F(4x4,3x3) and F(2x2,5x5)):
//
//     Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) = element-wise product
//
// and, summed over the C input channels, the a*a element-wise products become a*a
// independent GEMMs (P = a*a = 16 for m = 2, 36 for m = 4):
//
//     M[p](tile, q) = sum_c V[p](tile, c) * U[p](c, q)
//     V[p](tile, c) = (B^T d_{tile,c} B)[p]     input transform (per tile and channel)
//     U[p](c, q)    = (G g_{q,c} G^T)[p]        kernel transform (once per call)
//     Y(tile, q)    = A^T M(tile, q) A + b[q]   output transform, bias fused
//
// Multiplies per m x m output block and (c, q) pair: a*a instead of r*r*m*m (2.25x fewer for
// F(2x2,3x3), 4x for F(4x4,3x3), 2.8x for F(2x2,5x5)). The code is written once over (m, r)
// (M, R template parameters; with_variant picks the instance). The transforms are additions (and multiplications by small
// constants), vectorised over channels: in NHWC a tile's values for consecutive channels are
// contiguous, so every load and store of the transforms is a full vector.
//
// Work is cut into blocks of `tb` tiles (a function of the shape only). One thread owns a
// block from start to end: it transforms the block's input tiles into V (tb x P x C, in a
// thread-local buffer sized for L2), runs the P GEMMs M[p] = V[p] U[p] with gemm.h's
// machinery (gemm_detail: its register-tile variant for the SIMD level, its K slicing,
// macro_kernel and micro-kernels, AVX-512 included; V[p] is read in place by the in-place
// micro-kernels (AMode::Rows, and AMode::Cols for the kernel gradient's V[p]^T) where the level
// has them, packed by pack_v otherwise: packing was 10-20% of the forward and input gradient),
// and transforms M (tb x P x Q) straight into the output. The kernel transform U is computed once
// per call straight into gemm.h's packed-B panel layout, so no GEMM call repacks it. Every
// output value is computed by one thread in a fixed order that does not depend on the block
// size or on the thread count: results are bitwise identical for any thread count (for a
// given simd_level()). Where U passes 2 MiB (deep layers), conv_tiles_panels runs the same
// steps in another order (all input transforms; per panel of filters its part of U and the P
// GEMMs over all tiles; all output transforms): the same bits, without writing U out whole.
//
// Backward-input: for stride 1 the design document's input gradient is the stride-1
// convolution of dY, zero-padded by F-1 = 2 on each side, with the flipped kernel
// Kr[c, a', d', q] = K[q, 2-a', 2-d', c] (Q and C exchanged), cropped by the forward padding.
// So dX[n, y, x, c] = sum_{a',d',q} dY[n, y + pt + a' - 2, x + pl + d' - 2, q] Kr[c, a', d', q]
// is this same routine with input dY (N, Ho, Wo, Q), kernel Kr (C filters over Q channels),
// read offsets (2 - pt, 2 - pl) and output (N, H, W, C). Reads outside dY are the padding
// zeros. See docs/convolution.md ("Winograd") for the derivation and the accuracy table.
//
// Kernel gradient: the adjoint of the forward. Per tile dg = G^T [ (A e A^T) (.) (B^T d B) ] G
// (e the tile of dY), so S[p](c, q) = sum_tiles V[p](tile, c) E[p](tile, q) with the same
// input transform V and E = A e A^T, then dW[q, :, :, c] = G^T S(c, q) G; the sum over tiles
// runs in fixed chunks (kernel_grad).
//
//     if (winograd_applicable(g)) {
//       winograd_conv2d_forward(g, x, w, bias, y);           // m by winograd_forward_tile_size
//       winograd_conv2d_backward_input(g, dy, w, dx);
//       winograd_conv2d_backward_weight(g, x, dy, dw);
//     }
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../../threading.h"
#include "../gemm.h"
#include "../simd.h"
#include "geometry.h"
#include "microkernel.h"  // kAvx512OneVectorRows
#include "../vec.h"

namespace nablagrad {
namespace kernels {

/// True when the Winograd path can compute this convolution: a 3x3 or 5x5 kernel with stride 1
/// (any padding, any N, H, W, C, Q). Whether it is *faster* is winograd_preferred's call.
inline bool winograd_applicable(const Conv2dGeometry& g) {
  return g.FH == g.FW && (g.FH == 3 || g.FH == 5) && g.stride_h == 1 && g.stride_w == 1;
}

namespace winograd_detail {

// ---------------------------------------------------------------------------------------
// Thread-local, 64-byte aligned scratch (one per slot), grown on demand and kept for reuse.
// ---------------------------------------------------------------------------------------
// (gemm.h's AlignedBuffer, one per slot: contents are not kept when it grows.)
template <int Slot>
inline void* scratch_bytes(size_t bytes) {
  static thread_local gemm_detail::AlignedBuffer buf;
  return buf.get(bytes);
}

// ---------------------------------------------------------------------------------------
// Vector types the transforms are written over: vec.h's VecPortable (a fixed array the
// compiler vectorises), VecAvx2F/D and VecAvx512F/D, and XScalar below. X::W lanes of X::T in
// an X::VT; madd(a, k, b) = a*k + b.
// ---------------------------------------------------------------------------------------
// One lane: kernel_run's double sums, lane by lane in loops the compiler vectorises.
template <typename T_>
struct XScalar {
  using T = T_;
  using VT = T_;
  static constexpr int W = 1;
  static VT load(const T* p) { return *p; }
  static void store(T* p, VT a) { *p = a; }
  static VT add(VT a, VT b) { return a + b; }
  static VT sub(VT a, VT b) { return a - b; }
  static VT madd(VT a, T k, VT b) { return a * k + b; }
  static VT mul(VT a, T k) { return a * k; }
};

/// The kernel as the transforms read it: element (f, c, a, d) (filter f, channel c, tap row a,
/// tap column d) at base[f * fs + c * cs + a * as + d * ds]. The forward reads w (Q, r, r, C)
/// as it lies (cs = 1); dX reads it flipped, with filters and channels exchanged (fs = 1,
/// negative tap strides).
template <typename T>
struct KernelView {
  const T* base;
  int64_t fs, cs, as, ds;
  const T* at(int64_t f, int64_t c, int a, int d) const { return base + f * fs + c * cs + a * as + d * ds; }
};

/// Arguments of one tile block (shared by the input and output transforms).
template <typename T>
struct BlockArgs {
  const T* x;            // input (N, H, W, C)
  int64_t H, W, C;       // input extents
  int64_t off_h, off_w;  // input row of output row 0 is -off_h (the padding), same for columns
  int64_t Ho, Wo, Q;     // output extents
  int64_t tiles_h, tiles_w;
  int64_t t0, nt;        // first tile and tile count of the block
  int64_t tb;            // rows of each of the P matrices in the block buffers
  T* V;                  // tb x P x C: V[p](tile, c) at V[(tile * P + p) * C + c]
  const T* Mm;           // tb x P x Q: M[p](tile, q) at Mm[(tile * P + p) * Q + q]
  const T* bias;         // Q values or nullptr
  T* y;                  // output (N, Ho, Wo, Q)
};

/// G of F(m x m, r x r) (A x r: winograd_transforms.inc's gcol as a table), for the kernel
/// gradient's G^T S G.
template <int M, int R>
inline double g_entry(int i, int a) {
  static const double g25[6][5] = {{0.25, 0, 0, 0, 0},
                                   {-1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 2.0 / 24, 4.0 / 24, 8.0 / 24, 16.0 / 24},
                                   {1.0 / 24, -2.0 / 24, 4.0 / 24, -8.0 / 24, 16.0 / 24},
                                   {0, 0, 0, 0, 1}};
  if (R == 5) return g25[i][a];
  static const double g2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static const double g4[6][3] = {{0.25, 0, 0},
                                  {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                  {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                  {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                  {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                  {0, 0, 1}};
  return M == 2 ? g2[i][a] : g4[i][a];
}

// The transforms, once per instruction set (see winograd_transforms.inc).
namespace portable {
#define NABLAGRAD_WINO_TARGET
#include "winograd_transforms.inc"
#undef NABLAGRAD_WINO_TARGET
}  // namespace portable
#if NABLAGRAD_X86
#define NABLAGRAD_WINO_AVX2_SHUFFLES 1  // gather_transposed8 with AVX2 shuffles (both x86 levels)
namespace avx2 {
#define NABLAGRAD_WINO_TARGET NABLAGRAD_VEC_AVX2
#include "winograd_transforms.inc"
#undef NABLAGRAD_WINO_TARGET
}  // namespace avx2
namespace avx512 {
#define NABLAGRAD_WINO_TARGET NABLAGRAD_VEC_AVX512
#include "winograd_transforms.inc"
#undef NABLAGRAD_WINO_TARGET
}  // namespace avx512
#undef NABLAGRAD_WINO_AVX2_SHUFFLES
#endif

template <typename T>
using BlockFn = void (*)(const BlockArgs<T>&);

/// The input and output transforms of one block for T at the current SIMD level: vectors of
/// 16/8 (AVX-512), 8/4 (AVX2) or 8/4 (portable, plain loops) floats/doubles, at AVX-512 then
/// an AVX2 vector for a half vector left over, then scalars for the channels left. (With
/// scalars for the half vector, 24 and 40 channels ran slower than 32 and 48 at AVX-512:
/// (8,56,56,24->24) forward 1.04 ms against 0.66 for 32->32.)
template <typename T, int M, int R>
inline void block_fns(BlockFn<T>* in, BlockFn<T>* out) {
  using S = VecPortable<T, 1>;
  using XP = VecPortable<T, 32 / sizeof(T)>;
  *in = &portable::input_block<XP, XP, S, M, R>;
  *out = &portable::output_block<XP, XP, S, M, R>;
#if NABLAGRAD_X86
  using X512 = VecAvx512<T>;
  using X2 = VecAvx2<T>;
  if (simd_at_least(SimdLevel::AVX512)) {
    *in = &avx512::input_block<X512, X2, S, M, R>;
    *out = &avx512::output_block<X512, X2, S, M, R>;
  } else if (simd_at_least(SimdLevel::AVX2)) {
    *in = &avx2::input_block<X2, X2, S, M, R>;
    *out = &avx2::output_block<X2, X2, S, M, R>;
  }
#endif
}

/// The kernel gradient's dY-tile transform of one block for T at the current SIMD level.
template <typename T, int M, int R>
inline BlockFn<T> grad_block_fn() {
  using S = VecPortable<T, 1>;
  using XP = VecPortable<T, 32 / sizeof(T)>;
#if NABLAGRAD_X86
  using X512 = VecAvx512<T>;
  using X2 = VecAvx2<T>;
  if (simd_at_least(SimdLevel::AVX512)) return &avx512::grad_block<X512, X2, S, M, R>;
  if (simd_at_least(SimdLevel::AVX2)) return &avx2::grad_block<X2, X2, S, M, R>;
#endif
  return &portable::grad_block<XP, XP, S, M, R>;
}

/// gemm_detail::pack_a for the block's row-major V[p] (rows = tiles, unit column stride) with
/// the register-tile height MR known at compile time, so the interleaving loop is unrolled.
/// Rows past mc repeat the last row: those lanes of the micro-kernel are computed and dropped
/// (macro_kernel keeps only the first mc rows), so their values never reach a result.
template <typename T, int MR>
inline void pack_rows(int64_t mc, int64_t kc, const T* A, int64_t lda, T* out) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const T* r[MR];
    for (int i = 0; i < MR; ++i) r[i] = A + (ir + std::min<int64_t>(i, mc - ir - 1)) * lda;
    for (int64_t k = 0; k < kc; ++k)
      for (int i = 0; i < MR; ++i) out[k * MR + i] = r[i][k];
    out += MR * kc;
  }
}

template <typename T>
inline void pack_v(int64_t MR, int64_t mc, int64_t kc, const T* A, int64_t lda, T* out) {
  switch (MR) {
    case 4: pack_rows<T, 4>(mc, kc, A, lda, out); return;
    case 6: pack_rows<T, 6>(mc, kc, A, lda, out); return;
    case 8: pack_rows<T, 8>(mc, kc, A, lda, out); return;
    default: gemm_detail::pack_a(mc, kc, A, lda, int64_t{1}, MR, out); return;
  }
}

/// The distance between the P blocks (Cc x Npad values each) of a transformed kernel U: one
/// cache line more than a block. At a multiple of 4 KiB (128 KiB at 512 channels and 64
/// filters) the P stores of each kernel's transform all fell in one set of L1 and of L2 and
/// evicted each other: (8,7,7,512->512)'s kernel transform, 1 thread, alone, 2.7 -> 2.4 ms.
template <typename T>
inline int64_t u_block_stride(int64_t Cc, int64_t Npad) {
  return Cc * Npad + 64 / static_cast<int64_t>(sizeof(T));
}

/// The P GEMMs' shared plan: gemm.h's variant cfg (register tile MR x NR, micro-kernel),
/// and its slicing of the depth K (= input channels) into slices of kc.
template <typename T>
struct GemmPlan {
  gemm_detail::GemmConfig<T> cfg;
  int64_t K, Nc, Npad;  // depth, columns (filters), columns rounded up to whole NR panels
  int64_t kc_max;       // depth of each K slice but the last (gemm_detail::k_slice_depth)
  GemmPlan(const gemm_detail::GemmConfig<T>& cfg_, int64_t K_, int64_t N_)
      : cfg(cfg_), K(K_), Nc(N_),
        Npad((N_ + cfg.NR - 1) / cfg.NR * cfg.NR), kc_max(gemm_detail::k_slice_depth(K_, cfg.KC)) {}
  // The packed kernel U: per p a K x Npad block (u_block_stride apart); in it, K slice s
  // (rows k0 = s * kc_max .. k0 + kc) is a run of Npad/NR panels of kc x NR values, as
  // gemm_detail::pack_b lays them out for the micro-kernel: U[p](k, n) at
  // p * u_block_stride(K, Npad) + k0 * Npad + (n / NR) * NR * kc + (k - k0) * NR + n % NR.
};

/// The kernel transform's step for T at the current SIMD level and the run of channels it
/// takes: for float at AVX2 and AVX-512, kernel_run_vec on runs of 16 channels (whole cache
/// lines of the forward's w), with 8 filters a vector where the kernel's channels are
/// contiguous (the forward's w, transposed in 8 x 8 blocks, by scalar loads at the edges),
/// else a whole vector of contiguous filters (dX's flipped kernel); elsewhere kernel_run (in
/// double) on runs of 8, through a staging block of P x L x NR values (staging() takes it from
/// the thread's scratch; kernel_run_vec needs none).
template <typename T, typename Kern>
struct KernelRun {
  void (*fn)(const Kern&, int64_t, int64_t, int64_t, int, T*, int64_t, int64_t, T*);
  int L;
  bool staged;
  T* staging(int64_t P, int64_t NR) const {
    return staged ? static_cast<T*>(scratch_bytes<4>(sizeof(T) * static_cast<size_t>(P * L * NR))) : nullptr;
  }
};
template <typename T, int M, int R, typename Kern>
inline KernelRun<T, Kern> kernel_run_fn(const Kern& kern) {
#if NABLAGRAD_X86
  if constexpr (std::is_same<T, float>::value) {
    if (kern.cs == 1 || kern.fs == 1) {
      if (simd_at_least(SimdLevel::AVX512))
        return {kern.cs == 1 ? &avx512::kernel_run_vec<VecAvx2F, T, M, R, Kern>
                             : &avx512::kernel_run_vec<VecAvx512F, T, M, R, Kern>,
                16, false};
      if (simd_at_least(SimdLevel::AVX2)) return {&avx2::kernel_run_vec<VecAvx2F, T, M, R, Kern>, 16, false};
    }
  }
  if (simd_at_least(SimdLevel::AVX512)) return {&avx512::kernel_run<T, M, R, 8, Kern>, 8, true};
  if (simd_at_least(SimdLevel::AVX2)) return {&avx2::kernel_run<T, M, R, 8, Kern>, 8, true};
#endif
  (void)kern;
  return {&portable::kernel_run<T, M, R, 8, Kern>, 8, true};
}

/// The kernel gradient's last step (grad_reduce) for T at the current SIMD level.
template <typename T, int M, int R>
inline auto grad_reduce_fn() -> void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, T*) {
#if NABLAGRAD_X86
  if (simd_at_least(SimdLevel::AVX512)) return &avx512::grad_reduce<T, M, R>;
  if (simd_at_least(SimdLevel::AVX2)) return &avx2::grad_reduce<T, M, R>;
#endif
  return &portable::grad_reduce<T, M, R>;
}

/// Kernel transform into the packed GEMM operand: U[p](c, f) = (G g_{f,c} G^T)[p] for
/// filters f < F over channels c < Cc, where g_{f,c}(a, d) = *kern.at(f, c, a, d). Computed in
/// double and rounded to T once, but for float at AVX2 and AVX-512 in float (kernel_run_vec:
/// a few units in the last place of U, under the transforms' own rounding, docs/convolution.md).
/// Up must hold P blocks u_block_stride(Cc, plan.Npad) apart, zeros.
template <typename T, int M, int R, typename Kern>
void transform_kernel(int64_t F, int64_t Cc, const Kern& kern, const GemmPlan<T>& plan, T* Up) {
  const KernelRun<T, Kern> run = kernel_run_fn<T, M, R>(kern);
  const int64_t L = run.L;  // channels at a time
  const int64_t NR = plan.cfg.NR, Npad = plan.Npad, pstride = u_block_stride<T>(Cc, Npad);
  // Tasks are runs of L channels (within one K slice), each for every filter: a task writes
  // whole rows of the packed panels. Split by filters, two threads wrote neighbouring columns
  // of the same rows (cache lines passed back and forth: 12% of a (32,16,16,48->96) input
  // gradient's time at 1 thread became 18% at 2).
  const int64_t per_slice = (plan.kc_max + L - 1) / L, slices = (Cc + plan.kc_max - 1) / plan.kc_max;
  parallel_for(0, slices * per_slice, 1, [&](int64_t b0, int64_t b1) {
    T* st = run.staging((M + R - 1) * (M + R - 1), NR);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k0 = b / per_slice * plan.kc_max, c0 = b % per_slice * L;  // slice start, run in it
      const int64_t kc = std::min(plan.kc_max, Cc - k0);
      if (c0 >= kc) continue;
      const int n = static_cast<int>(std::min<int64_t>(L, kc - c0));
      // U[p](k0 + c0 + l, jp + jf) at Up[p * pstride + k0 * Npad + jp * kc + (c0 + l) * NR + jf]
      for (int64_t jp = 0; jp < F; jp += NR)
        run.fn(kern, jp, std::min(NR, F - jp), k0 + c0, n, Up + k0 * Npad + jp * kc + c0 * NR, pstride, NR, st);
    }
  });
}

/// Tiles per block: the block's V and M buffers (P x tb x (C + Q) values) within `budget`
/// bytes of L2 (512 KiB: 128 KiB..4 MiB measured within noise for 64 channels), rounded to a
/// multiple of the GEMM's register tile. A speed knob only for the forward (the kernel
/// gradient's reduction is chunked by it).
template <typename T>
inline int64_t block_tiles(int A, int64_t C, int64_t Q, int64_t tiles, int64_t mr = gemm_detail::gemm_config<T>().MR,
                           int64_t budget = int64_t{512} << 10) {
  const int64_t P = A * A;  // A = m + r - 1, the tile's extent
  int64_t tb = budget / (P * (C + Q) * static_cast<int64_t>(sizeof(T)));
  tb = std::max<int64_t>(2 * mr, tb / mr * mr);
  tb = std::min<int64_t>(tb, 32 * mr);
  return std::min<int64_t>(tb, std::max<int64_t>(1, tiles));
}

/// Tiles per block of the forward (and input gradient), whose output values do not depend on
/// the block size: block_tiles, but where the transformed kernel U (P x C x Q values) is past
/// 1 MiB, blocks of up to U's half (at most 32 register tiles): every block runs all of U
/// through its P GEMMs, so small blocks streamed U from L3 once per few tiles, and the GEMMs'
/// wider register tile needs more rows. Then the block count is rounded up to a multiple of
/// the thread count, so no thread runs one block more than the others. Measured at AVX-512
/// (ms, 1 / 2 threads): (8,14,14,256->256, 5x5) forward 18.5 / 11.2 -> 15.0 / 9.2.
/// The blocks' V and M within 128 KiB (not block_tiles' 512): on few channels a block was
/// then 112 tiles of 252 KiB each of V and M per thread, which a 1 MiB L2 (Zen 4) held or
/// not by where the pages fell: the same (4,96,96,16->16, 5x5) forward ran 1.7 or 2.4-5 ms
/// from one process to the next (1.6 on 2 MiB huge pages). AVX-512, Zen 4, 2 threads, C++,
/// ms, forward / dX, 512 -> 128 KiB: (4,96,96,16->16, 5x5) 2.4-5.0 -> 1.7-2.3 (24 tiles a
/// block), (32,32,32,16->16, 3x3) 0.57 / 0.57 -> 0.40 / 0.40, (8,28,28,32->64, 5x5) 1.51-1.61
/// -> 1.43-1.50; even on 64 channels and more ((8,56,56,64->64) 3.5-3.6, (32,16,16,48->96)
/// 1.05-1.15 either way) and (8,28,28,24->24) 0.21.
template <typename T>
inline int64_t forward_block_tiles(int A, int64_t C, int64_t Q, int64_t tiles, int64_t mr) {
  const int64_t P = A * A, bytes = static_cast<int64_t>(sizeof(T));
  int64_t tb = block_tiles<T>(A, C, Q, tiles, mr, int64_t{128} << 10);
  const int64_t u_bytes = P * C * Q * bytes;
  if (u_bytes > (int64_t{1} << 20)) {
    const int64_t big = std::max<int64_t>(2 * mr, u_bytes / 2 / (P * (C + Q) * bytes) / mr * mr);
    tb = std::min<int64_t>(std::max(tb, std::min<int64_t>(big, 32 * mr)), std::max<int64_t>(1, tiles));
  }
  const int64_t threads = std::max(1, get_num_threads());
  int64_t blocks = (tiles + tb - 1) / tb;
  if (blocks % threads != 0 && tiles >= threads * mr) {
    blocks = (blocks + threads - 1) / threads * threads;
    tb = std::max<int64_t>(1, ((tiles + blocks - 1) / blocks + mr - 1) / mr * mr);
  }
  return tb;
}

/// Whether conv_tiles runs by filter panels (conv_tiles_panels): where the transformed kernel
/// U (P x Cc x Qf) is past 2 MiB (an L2), the whole V and M (tiles x P x (Cc + Qf)) stay
/// within 64 MiB, and the tiles are fewer than 4 Qf at AVX-512 (Qf below): every panel reads
/// all of V (tiles x P x Cc), every block all of U (P x Cc x Qf). Measured at AVX-512, 2
/// threads, forward (ms, blocks -> panels): (8,7,7,512->512) 9.8 -> 5.4, (8,7,7,256->256) 2.1
/// -> 1.6, (8,14,14,256->256) 3.6 -> 3.3, (8,7,7,256->256, 5x5) 5.0 -> 3.6; F(4x4)
/// (8,28,28,256->256, 392 tiles) 11.4 -> 10.3, (8,28,28,128->128, 392) 3.2 -> 3.0, but
/// (4,56,56,128->128, 784) 6.0 -> 7.2. AVX2: (8,28,28,256->256, 392) 17.7 -> 19.8,
/// (16,14,14,256->256, 256) 10.9 -> 11.3, (8,28,28,128->128) 4.2 -> 6.2, but
/// (16,12,12,256->256, 144) 7.1 -> 6.4, (2,28,28,512->512, 98) 28.5 -> 20.4.
template <typename T>
inline bool use_filter_panels(int64_t P, int64_t Cc, int64_t Qf, int64_t tiles) {
  const int64_t bytes = static_cast<int64_t>(sizeof(T));
  const int64_t per_filter = simd_level() >= SimdLevel::AVX512 ? 4 : 1;
  return saturating_mul(saturating_mul(P, Cc), saturating_mul(Qf, bytes)) > (int64_t{2} << 20) &&
         saturating_mul(saturating_mul(tiles, P), saturating_mul(Cc + Qf, bytes)) <= (int64_t{64} << 20) &&
         tiles < saturating_mul(per_filter, Qf);
}

/// conv_tiles for few tiles and a large transformed kernel (a deep layer on small images):
/// filter panels instead of tile blocks. Every tile's input transform goes to V (tiles x P x
/// Cc) first; then each task takes one panel of NR filters, transforms the kernel of those
/// filters alone (P x Cc x NR values, about L2's size at 512 channels) and runs the P GEMMs
/// over all the tiles into M (tiles x P x Qf); then the output transform. The blocked
/// schedule streams all of U (P x Cc x Qf: 16.8 MB for 512 -> 512 at F(2x2)) through every
/// block after writing it out, which is memory traffic where this keeps each panel in cache.
/// Same arithmetic as conv_tiles (the same transforms, and each M value the same FMA chain
/// per K slice of the same depth): the same bits.
template <typename T, int M, int R, typename Kern>
void conv_tiles_panels(int64_t N, int64_t H, int64_t W, int64_t Cc, int64_t off_h, int64_t off_w,
                       int64_t Ho, int64_t Wo, int64_t Qf, const T* x, const Kern& kern, const T* bias, T* y) {
  constexpr int A = M + R - 1;
  constexpr int64_t P = A * A;
  const KernelRun<T, Kern> run = kernel_run_fn<T, M, R>(kern);
  const int64_t L = run.L;  // kernel_run's run of channels
  const int64_t tiles_h = (Ho + M - 1) / M, tiles_w = (Wo + M - 1) / M;
  const int64_t tiles = N * tiles_h * tiles_w;
  if (tiles == 0) return;
  // The panels are the tasks: where the register tile's do not split evenly among the
  // threads, the 8 x 2-vector tile's where they do and it pads no more (192 filters at AVX-512:
  // 6 panels of 32, not 3 of 64, 2 against 1 on 2 threads). The same K slices and FMA chains:
  // the same bits. AVX-512, 2 threads, forward (ms): (1,14,14,192->192) 0.46-0.49 -> 0.40-0.41,
  // (2,14,14,192->192) 0.78-0.99 -> 0.68-0.70, (8,14,14,192->192) 2.41 -> 2.04-2.07,
  // (1,14,14,320->320) 1.26-1.28 -> 1.17.
  GemmPlan<T> plan(gemm_detail::gemm_config_for<T>(tiles, Qf), Cc, Qf);
  const int64_t threads = std::max(1, get_num_threads());
  if (plan.Npad / plan.cfg.NR % threads != 0) {
    const GemmPlan<T> alt(gemm_detail::gemm_config<T>(0), Cc, Qf);
    if (alt.Npad <= plan.Npad && alt.kc_max == plan.kc_max && alt.Npad / alt.cfg.NR % threads == 0) plan = alt;
  }
  const int64_t NR = plan.cfg.NR, MR = plan.cfg.MR, panels = plan.Npad / NR;
  conv_detail::Scratch<T> V(checked_product({tiles, P, Cc}, "winograd: transformed input"), "winograd: transformed input");
  conv_detail::Scratch<T> Mm(checked_product({tiles, P, Qf}, "winograd: products"), "winograd: products");
  BlockFn<T> in_fn, out_fn;
  block_fns<T, M, R>(&in_fn, &out_fn);
  const int64_t tb = std::max<int64_t>(1, (tiles + 4 * get_num_threads() - 1) / (4 * get_num_threads()));
  const int64_t blocks = (tiles + tb - 1) / tb;
  auto args = [&](int64_t b) {
    const int64_t t0 = b * tb;
    return BlockArgs<T>{x, H, W, Cc, off_h, off_w, Ho, Wo, Qf, tiles_h, tiles_w, t0, std::min(tb, tiles - t0), tb,
                        V.get() + t0 * P * Cc, Mm.get() + t0 * P * Qf, bias, y};
  };
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) in_fn(args(b));
  });
  const int64_t mpad = (tiles + MR - 1) / MR * MR;
  // The panel's U: per p a Cc x NR block (u_block_stride apart), in it the K slices' kc x NR
  // runs (GemmPlan's layout with Npad = NR); zeros in the columns past the last filter.
  const int64_t ustride = u_block_stride<T>(Cc, NR);
  parallel_for(0, panels, 1, [&](int64_t j0, int64_t j1) {
    T* Up = static_cast<T*>(scratch_bytes<5>(sizeof(T) * static_cast<size_t>(P * ustride)));
    T* st = run.staging(P, NR);
    T* Ap = static_cast<T*>(scratch_bytes<2>(sizeof(T) * static_cast<size_t>(mpad * plan.kc_max)));
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t f0 = j * NR, nf = std::min(NR, Qf - f0);
      if (nf < NR) std::fill(Up, Up + P * ustride, T(0));
      for (int64_t k0 = 0; k0 < Cc; k0 += plan.kc_max) {
        const int64_t kc = std::min(plan.kc_max, Cc - k0);
        for (int64_t c0 = 0; c0 < kc; c0 += L)
          run.fn(kern, f0, nf, k0 + c0, static_cast<int>(std::min<int64_t>(L, kc - c0)), Up + (k0 + c0) * NR,
                 ustride, NR, st);
      }
      for (int64_t p = 0; p < P; ++p)
        for (int64_t k0 = 0; k0 < Cc; k0 += plan.kc_max) {
          const int64_t kc = std::min(plan.kc_max, Cc - k0);
          const T* vp = V.get() + p * Cc + k0;
          const T* up = Up + p * ustride + k0 * NR;
          T* mp = Mm.get() + p * Qf + f0;
          if (plan.cfg.kernel_rows != nullptr) {
            gemm_detail::macro_kernel_rows(plan.cfg, tiles, nf, kc, vp, P * Cc, Ap, up, mp, P * Qf, k0 > 0);
          } else {
            pack_v(MR, tiles, kc, vp, P * Cc, Ap);
            gemm_detail::macro_kernel(plan.cfg, tiles, nf, kc, Ap, up, mp, P * Qf, k0 > 0);
          }
        }
    }
  });
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) out_fn(args(b));
  });
}

/// conv_tiles by blocks of tiles: one thread per block, from its input transform to its
/// output transform (the schedule of the header comment).
template <typename T, int M, int R, typename Kern>
void conv_tiles_blocks(int64_t N, int64_t H, int64_t W, int64_t Cc, int64_t off_h, int64_t off_w,
                int64_t Ho, int64_t Wo, int64_t Qf, const T* x, const Kern& kern, const T* bias, T* y) {
  constexpr int A = M + R - 1;
  constexpr int64_t P = A * A;
  const int64_t tiles_h = (Ho + M - 1) / M, tiles_w = (Wo + M - 1) / M;
  const int64_t tiles = N * tiles_h * tiles_w;
  if (tiles == 0) return;
  // The GEMM tile: by the block's rows, or by Qf where another width pads it less (a 48 -> 96
  // channel forward's products ran 25% of their multiply-adds on zero columns); then blocks
  // of whole tiles of its height.
  int64_t tb = forward_block_tiles<T>(A, Cc, Qf, tiles, gemm_detail::gemm_config<T>().MR);
  const GemmPlan<T> plan(gemm_detail::gemm_config_for<T>(tb, Qf), Cc, Qf);
  if (plan.cfg.MR != gemm_detail::gemm_config<T>().MR) tb = forward_block_tiles<T>(A, Cc, Qf, tiles, plan.cfg.MR);
  const int64_t ustride = u_block_stride<T>(Cc, plan.Npad);
  conv_detail::Scratch<T> Up(checked_product({P, ustride}, "winograd: transformed kernel"),
                             "winograd: transformed kernel", /*zero=*/true);
  transform_kernel<T, M, R>(Qf, Cc, kern, plan, Up.get());
  const int64_t blocks = (tiles + tb - 1) / tb;
  const int64_t MR = plan.cfg.MR, mpad = (tb + MR - 1) / MR * MR;
  BlockFn<T> in_fn, out_fn;
  block_fns<T, M, R>(&in_fn, &out_fn);
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    T* Vb = static_cast<T*>(scratch_bytes<0>(sizeof(T) * static_cast<size_t>(P * tb * Cc)));
    T* Mb = static_cast<T*>(scratch_bytes<1>(sizeof(T) * static_cast<size_t>(P * tb * Qf)));
    T* Ap = static_cast<T*>(scratch_bytes<2>(sizeof(T) * static_cast<size_t>(mpad * plan.kc_max)));
    for (int64_t b = b0; b < b1; ++b) {
      BlockArgs<T> a{x, H, W, Cc, off_h, off_w, Ho, Wo, Qf, tiles_h, tiles_w,
                     b * tb, std::min(tb, tiles - b * tb), tb, Vb, Mb, bias, y};
      in_fn(a);
      // M[p] (nt x Qf) = V[p] (nt x Cc) * U[p] (Cc x Qf), K slices in ascending order.
      for (int64_t p = 0; p < P; ++p)
        for (int64_t k0 = 0; k0 < Cc; k0 += plan.kc_max) {
          const int64_t kc = std::min(plan.kc_max, Cc - k0);
          const T* vp = Vb + p * Cc + k0;
          const T* up = Up.get() + p * ustride + k0 * plan.Npad;
          if (plan.cfg.kernel_rows != nullptr) {  // V[p] read in place (rows P*Cc apart)
            gemm_detail::macro_kernel_rows(plan.cfg, a.nt, Qf, kc, vp, P * Cc, Ap, up, Mb + p * Qf, P * Qf, k0 > 0);
          } else {
            pack_v(MR, a.nt, kc, vp, P * Cc, Ap);
            gemm_detail::macro_kernel(plan.cfg, a.nt, Qf, kc, Ap, up, Mb + p * Qf, P * Qf, k0 > 0);
          }
        }
      out_fn(a);
    }
  });
}

/// The core: y (N, Ho, Wo, Qf) = valid R x R correlation of x (N, H, W, Cc) read with offsets
/// (off_h, off_w) (zeros outside) with the kernel *kern.at(f, c, a, d), plus bias: by filter panels
/// where use_filter_panels says so, else by blocks of tiles. Both give the same bits.
template <typename T, int M, int R, typename Kern>
void conv_tiles(int64_t N, int64_t H, int64_t W, int64_t Cc, int64_t off_h, int64_t off_w,
                int64_t Ho, int64_t Wo, int64_t Qf, const T* x, const Kern& kern, const T* bias, T* y) {
  const int64_t tiles = N * ((Ho + M - 1) / M) * ((Wo + M - 1) / M);
  if (use_filter_panels<T>((M + R - 1) * (M + R - 1), Cc, Qf, tiles))
    conv_tiles_panels<T, M, R>(N, H, W, Cc, off_h, off_w, Ho, Wo, Qf, x, kern, bias, y);
  else
    conv_tiles_blocks<T, M, R>(N, H, W, Cc, off_h, off_w, Ho, Wo, Qf, x, kern, bias, y);
}

/// Kernel gradient dw (Q, R, R, C) of y = conv(x, w) (R x R, stride 1, g's padding) from dy:
/// the adjoint of the forward's F(m x m, r x r). Per output tile,
///   y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A   gives   dg = G^T [ (A e A^T) (.) (B^T d B) ] G
/// (e the tile of dY), so with S[p](c, q) = sum_tiles V[p](tile, c) * E[p](tile, q),
/// V = B^T d B (the forward's input transform) and E = A e A^T, dw[q, :, :, c] = G^T S(c, q) G.
/// The P products S[p] = V[p]^T E[p] reduce over tiles: blocks of tb tiles are grouped into
/// fixed chunks (a function of the shape only); each chunk sums its blocks in order into its
/// own partial S, and the partials are added in chunk order (in double, with G^T . G):
/// bitwise identical for any thread count.
template <typename T, int M, int R>
void kernel_grad(const Conv2dGeometry& g, const T* x, const T* dy, T* dw) {
  constexpr int A = M + R - 1;
  constexpr int64_t P = A * A;
  const int64_t C = g.C, Q = g.Q;
  const int64_t tiles_h = (g.Ho + M - 1) / M, tiles_w = (g.Wo + M - 1) / M;
  const int64_t tiles = g.N * tiles_h * tiles_w;
  if (tiles == 0) {
    std::fill(dw, dw + Q * R * R * C, T(0));
    return;
  }
  const int64_t tb = block_tiles<T>(A, C, Q, tiles);
  const gemm_detail::GemmConfig<T> cfg = gemm_detail::gemm_config_for<T>(C, Q);
  const int64_t MR = cfg.MR, NR = cfg.NR;
  const int64_t Cpad = (C + MR - 1) / MR * MR, Qpad = (Q + NR - 1) / NR * NR;
  const int64_t blocks = (tiles + tb - 1) / tb;
  // Fixed chunks: up to 8, fewer when the partials (P x C x Q each) would pass ~64 MiB.
  const int64_t partial_values = checked_product({P, C, Q}, "winograd: kernel-gradient partial sums");
  int64_t target = std::min<int64_t>(8, (int64_t{64} << 20) / std::max<int64_t>(1, partial_values * static_cast<int64_t>(sizeof(T))));
  target = std::max<int64_t>(1, std::min(target, blocks));
  const int64_t chunk_blocks = (blocks + target - 1) / target;
  const int64_t nchunks = (blocks + chunk_blocks - 1) / chunk_blocks;
  conv_detail::Scratch<T> partial(checked_product({nchunks, partial_values}, "winograd: kernel-gradient partial sums"),
                                  "winograd: kernel-gradient partial sums");
  BlockFn<T> in_fn, out_fn;
  block_fns<T, M, R>(&in_fn, &out_fn);
  const BlockFn<T> grad_fn = grad_block_fn<T, M, R>();
  parallel_chunks(blocks, chunk_blocks, [&](int64_t ci, int64_t b0, int64_t b1) {
    T* Vb = static_cast<T*>(scratch_bytes<0>(sizeof(T) * static_cast<size_t>(P * tb * C)));
    T* Eb = static_cast<T*>(scratch_bytes<1>(sizeof(T) * static_cast<size_t>(P * tb * Q)));
    T* Ap = static_cast<T*>(scratch_bytes<2>(sizeof(T) * static_cast<size_t>(Cpad * tb)));
    T* Bp = static_cast<T*>(scratch_bytes<3>(sizeof(T) * static_cast<size_t>(Qpad * tb)));
    T* S = partial.get() + ci * partial_values;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * tb, nt = std::min(tb, tiles - t0);
      in_fn(BlockArgs<T>{x, g.H, g.W, C, g.pad_top, g.pad_left, g.Ho, g.Wo, Q, tiles_h, tiles_w, t0, nt, tb, Vb,
                         nullptr, nullptr, nullptr});
      grad_fn(BlockArgs<T>{dy, g.Ho, g.Wo, Q, 0, 0, g.Ho, g.Wo, Q, tiles_h, tiles_w, t0, nt, tb, Eb, nullptr,
                           nullptr, nullptr});
      // S[p] (C x Q) (+)= V[p]^T (C x nt) * E[p] (nt x Q): the block is one K slice of nt <= KC.
      for (int64_t p = 0; p < P; ++p) {
        gemm_detail::pack_b(nt, Q, Eb + p * Q, P * Q, int64_t{1}, NR, Bp);
        if (cfg.kernel_cols != nullptr) {  // V[p]^T read in place (columns P*C apart)
          gemm_detail::macro_kernel_cols(cfg, C, Q, nt, Vb + p * C, P * C, Ap, Bp, S + p * C * Q, Q, b > b0);
        } else {
          gemm_detail::pack_a(C, nt, Vb + p * C, int64_t{1}, P * C, MR, Ap);
          gemm_detail::macro_kernel(cfg, C, Q, nt, Ap, Bp, S + p * C * Q, Q, b > b0);
        }
      }
    }
  });
  // dw[q, a, d, c] = sum_{i,j} G[i][a] S[i*A+j](c, q) G[j][d], S = the partials in chunk order.
  const auto reduce = grad_reduce_fn<T, M, R>();
  parallel_for(0, C, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, Q * P)), [&](int64_t c0, int64_t c1) {
    reduce(partial.get(), nchunks, partial_values, C, Q, c0, c1, dw);
  });
}

}  // namespace winograd_detail

/// The "auto" rule (measured crossovers against the direct kernels, docs/convolution.md
/// "Winograd"). 3x3: the forward pass runs Winograd where it applies and C, Q >= 16, or C >= 64
/// with Q >= 10; the input gradient from C, Q >= 16. Since the GEMMs run up to 16 filters on
/// gemm.h's 8 x 1-vector tile (not 8 x 2, half padding), at AVX-512, 2 threads (ms, direct ->
/// Winograd; Winograd before that tile in brackets): 16 -> 16 (16,14,14) 0.070 -> 0.074
/// [0.113], (8,28,28) 0.117 -> 0.095, (4,56,56) 0.200 -> 0.159 [0.245]; 32 -> 16 0.134 ->
/// 0.102 [0.150], 0.220 -> 0.150, 0.387 -> 0.285 [0.413]; 32 -> 20 (8,28,28) 0.464 -> 0.272;
/// 64 -> 12 (16,14,14) 0.273 -> 0.224, (8,28,28) 0.498 -> 0.359 (narrow 0.41); 64 -> 10
/// (4,56,56) 0.842 -> 0.706; but 32 -> 12 (8,28,28) 0.231 -> 0.248, 8 -> 16 0.063 -> 0.129.
/// The measurements that set the rule before that tile, forward at AVX-512,
/// 2 threads, N x H x W of 16x14x14, 8x28x28 and 4x56x56 (ms, direct -> Winograd):
/// 32 -> 32 0.217 -> 0.173, 0.412 -> 0.276, 0.841 -> 0.440 (and (16,32,32,32->32) 1.08 -> 0.64,
/// (4,112,112,32->32) 3.2 -> 1.5); 16 -> 24 0.164 -> 0.137, 0.257 -> 0.213, 0.446 -> 0.387;
/// 48 -> 16 0.233 -> 0.230, 0.402 -> 0.353, 0.686 -> 0.566; 24 -> 24 (the worst inside the
/// rule) 0.229 -> 0.190, 0.387 -> 0.381, 0.659 -> 0.732. Outside it the direct kernel wins:
/// 32 -> 16 0.163 vs 0.166, 0.270 vs 0.257, 0.456 vs 0.466; 16 -> 16 0.099 vs 0.138, 0.144 vs
/// 0.159, 0.241 vs 0.276; 8 -> 64 0.128 vs 0.170, 0.222 vs 0.274, 0.459 vs 0.547. (An older rule,
/// C, Q >= 32 with C*Q >= 2048, predates the Winograd filter panels and left 32 -> 32 direct.)
/// 5x5 (F(2x2,5x5): 2.8x fewer multiplies than direct, against 2.25x for F(2x2,3x3)): both
/// passes by the depth K and width N of their GEMMs (forward K = C, N = Q; input gradient
/// K = Q, N = C): N >= 32 and K >= 16, or N >= 24 and K >= 48. A narrower N pads the GEMM's
/// register tile and leaves the output transform to few lanes. Measured at AVX-512, 2 threads
/// (ms, direct kernels -> Winograd), forward: (8,32,32,16->32) 0.48 -> 0.41, 16->64 0.97 ->
/// 0.69, 32->48 1.54 -> 0.87, (8,28,28,64->64) 3.15 -> 1.67, but 24->24 0.77 -> 1.09, 32->16
/// 0.53 -> 0.68, 8->64 0.48 -> 0.85, (4,96,96,16->16) 1.12 -> 1.83; input gradient: 32->16
/// 0.50 -> 0.40, 24->48 1.93 -> 1.10, 32->32 1.11 -> 0.69, but 16->32 0.59 -> 0.70, 16->24
/// 0.40 -> 0.91, 16->16 1.13 -> 1.80. Since the transforms' half-vector fix (block_fns), at
/// AVX-512 from 24 output columns on 16 (filters for the forward, channels for dX; portable
/// keeps the rule above): AVX-512, 2 threads, ms, direct -> Winograd, forward / dX:
/// (8,56,56,24->24) 2.77 / 2.68 -> 2.15 / 2.15, (8,32,32,24->24) 0.96 / 0.87 -> 0.73 / 0.73,
/// 16->24 0.59 -> 0.52 (dX 0.45 vs 0.46), 24->16 dX 0.60 -> 0.51 (forward 0.44 vs 0.46),
/// 16->16 (4,96,96) 1.28 vs 1.29 (kept direct). And from 16 columns where the depth is at
/// least 32, or where the output rows (dX: the input's) fill under 85% of the direct kernels'
/// 24-pixel tiles (their blocks stop at each row's end: 14 pixels fill 58%, 28 58%, 32 67%,
/// 40 and 20 83%, 56 78%, but 24, 48 and 96 all): AVX-512, 2 threads, ms, direct -> Winograd,
/// forward / dX: 16 -> 16 (32,12,12) 0.307 -> 0.212 / 0.319 -> 0.221, (32,14,14) 0.351 ->
/// 0.276, (32,16,16) 0.412 -> 0.366 / 0.435 -> 0.392, (16,20,20) 0.315 -> 0.288 / 0.332 ->
/// 0.304, (16,28,28) 0.644 -> 0.564, (8,32,32) 0.372 -> 0.358 / 0.368 -> 0.356, (6,56,56)
/// 0.836 -> 0.823 / 0.812 -> 0.805, (8,40,40) 0.593 vs 0.603 / 0.602 -> 0.581; 32 -> 16 and
/// dX 16 -> 32: (32,14,14) 0.742 -> 0.511 / 0.745 -> 0.500, (16,28,28) 1.399 -> 0.993 /
/// 1.293 -> 0.959, (8,48,48) 1.548 -> 1.445 / 1.520 -> 1.415, (4,96,96) 3.01 -> 2.83 / 3.09 ->
/// 2.81, (16,24,24) 0.721 -> 0.700 / 0.756 -> 0.693; 64 -> 16 (8,32,32) 1.82 -> 1.16, dX
/// 16 -> 64 (8,28,28) 1.44 -> 0.89, (32,14,14) 1.49 -> 0.90. Kept direct, 16 -> 16 on rows
/// that fill the tiles: (8,48,48) 0.865 vs 1.083 / 0.735 vs 0.800, (16,24,24) dX 0.383 vs
/// 0.422, (4,96,96) 1.59 vs 1.64 / 1.58 vs 1.60, and (4,64,64) 0.755 vs 0.734 (89%).
/// Where AVX-512 runs at half rate (avx512_half_rate: Zen 4), the direct kernels' multiply-adds
/// cost twice as much against the transforms, and 16 -> 16 takes Winograd on rows that fill
/// the tiles too. AVX-512, Zen 4, 2 threads, C++, ms, direct -> Winograd, forward / dX (with
/// forward_block_tiles' blocks of 128 KiB): (4,96,96) 2.09 / 2.10 -> 1.69 / 1.69, (8,96,96)
/// 4.22 -> 3.42, (8,48,48) 1.04-1.05 -> 0.84-0.87, (4,64,64) 0.92 -> 0.76, (16,24,24) 0.51 ->
/// 0.43 (forward and dX alike).
///
/// At AVX2 (8-lane vectors: the direct kernels do half the multiply-adds per load of the
/// AVX-512 ones, while the transforms stay memory-bound) both passes, 3x3 and 5x5, run
/// Winograd from C, Q >= 8. AVX2, 2 threads (ms, direct kernels -> Winograd): forward
/// (16,32,32,16->16, 3x3) 0.34 -> 0.22, 8->8 0.195 -> 0.160, 24->24 0.47 -> 0.29, (4,96,96,16->16,
/// 5x5) 1.93 -> 1.59, (8,32,32,8->32, 5x5) 0.46 -> 0.40; dX (16,32,32,8->16) 0.36 -> 0.22,
/// (4,96,96,16->16, 5x5) 1.93 -> 1.59.
inline bool winograd_preferred(const Conv2dGeometry& g, bool backward_input = false) {
  if (!winograd_applicable(g)) return false;
  if (simd_level() == SimdLevel::AVX2) return g.C >= 8 && g.Q >= 8;
  if (g.FH == 5) {
    const int64_t K = backward_input ? g.Q : g.C, N = backward_input ? g.C : g.Q;
    if (simd_level() >= SimdLevel::AVX512) {
      // 16 columns (one vector of floats): the direct kernels' tile is then 24 pixels of a
      // row (kAvx512OneVectorRows), so where the output rows (dX: the input's) fill those
      // tiles poorly, or the depth is 32 or more, Winograd's 2.8x fewer multiplies win.
      // (Saturated products: geometry's checks bound a row's width, but not this rule's input.)
      constexpr int64_t mr = conv_detail::kAvx512OneVectorRows;
      const int64_t Wout = backward_input ? g.W : g.Wo, tiles = Wout / mr + (Wout % mr != 0 ? 1 : 0);
      const bool rows_fill_tiles =  // at least 85% of the tiles' rows
          saturating_mul(Wout, int64_t{20}) >= saturating_mul(tiles, int64_t{mr * 17});
      return K >= 16 && (N >= 24 || (N >= 16 && (K >= 32 || !rows_fill_tiles || avx512_half_rate())));
    }
    return (N >= 32 && K >= 16) || (N >= 24 && K >= 48);
  }
  if (backward_input) return g.C >= 16 && g.Q >= 16;
  return (g.C >= 16 && g.Q >= 16) || (g.C >= 64 && g.Q >= 10);
}

/// Output tile size m of F(m x m, r x r) for an output of Ho x Wo from K input to Nf output
/// channels: 4 (4x fewer multiplies than direct, ~30x the rounding error of F(2) in float32,
/// see the accuracy table) where it measured faster: outputs of at least 16 x 16 and at most
/// 96 channels on either side; else 2 (2.25x fewer multiplies, float32 error as direct). Bigger
/// channel counts favour F(2): its 16 transformed kernels (C x Q each) stream from cache
/// instead of 36, and small outputs waste less of a 2 x 2 tile.
/// A 5x5 kernel (r = 5) always takes m = 2: F(2x2,5x5) has the 6 x 6 tile of F(4x4,3x3).
inline int winograd_tile_size(int64_t Ho, int64_t Wo, int64_t K, int64_t Nf, int64_t r = 3) {
  if (r == 5) return 2;
  return (Ho >= 16 && Wo >= 16 && K <= 96 && Nf <= 96) ? 4 : 2;
}

/// The tile size of the forward and the input gradient (N images of Ho x Wo outputs):
/// winograd_tile_size, and F(4x4) also for more channels where its tiles are many, at least
/// 64 (N ceil(Ho/4) ceil(Wo/4)) on outputs of at least 7 x 7. With such counts the transformed
/// kernel's 36 matrices are repaid, and where it is large the filter panels (use_filter_panels)
/// stream the 2.25x fewer tiles' V. Measured forward, 2 threads (ms, F(2) -> F(4), AVX-512 /
/// AVX2): (8,28,28,256->256) 16.4 -> 10.5 / 36.5 -> 17.7, (2,56,56,256->256) 15.6 -> 9.7 /
/// 34.9 -> 16.5, (4,28,28,256->256) 7.7 -> 5.0 / 16.6 -> 9.2, (2,28,28,512->512) 15.1 -> 11.5 /
/// 29.3 -> 19.6, (32,7,7,512->512) 18.1 -> 13.1 / 38.6 -> 24.0, (16,14,14,256->256) 8.0 ->
/// 6.4 / 15.4 -> 10.9, (8,14,14,256->256) 4.1 -> 3.5 / 6.8 -> 5.8, (16,12,12,256->256) 5.5 ->
/// 3.8 / 10.5 -> 6.3, (16,7,7,256->256) 2.6 -> 2.3 / 4.6 -> 3.2, (4,56,56,128->128) 6.9 -> 6.0
/// / 10.1 -> 8.2, (8,28,28,128->128) 3.6 -> 2.9 / 5.3 -> 4.2, (32,14,14,64->64) 0.96 -> 0.83
/// / 1.34 -> 1.15, (32,14,14,48->96) 0.99 -> 0.96 / 1.41 -> 1.26. Slower: (16,14,14,128->128)
/// 2.0 -> 2.0 / 2.6 -> 2.8, (8,14,14,128->128) 1.16 -> 1.14 / 1.39 -> 1.60, (4,14,14,256->256)
/// 2.04 -> 2.23 / 3.4 -> 3.1; kept at F(2) with fewer tiles: (8,7,7,512->512), 32 tiles, 5.6
/// vs 7.0 (AVX2 10.1 vs 8.7). (The kernel gradient keeps winograd_tile_size: its F(4) was
/// slower at 256 and 512 channels, e.g. (4,28,28,512->512) 75 vs 133 ms.)
/// Below AVX-512, where the GEMMs weigh more against the transforms, from 32 tiles where
/// F(4x4)'s tiles cover no more of the plane than F(2x2)'s (7, 12, 28: the full 1.78x fewer
/// multiplies; not 13 or 14 x 14, 1.36x): AVX2 (8,7,7,512->512) 10.1 -> 8.3, (8,7,7,256->256)
/// 2.18 -> 1.75; not (2,14,14,256->256) 1.61 vs 1.76, (2,14,14,512->512) 7.6 vs 8.3.
/// With at most 96 channels on both sides (outputs under 16 x 16, where winograd_tile_size
/// says F(2)) the kernel is cheap to transform and F(2)'s GEMMs are efficient: F(4) from 256
/// tiles only. F(2) -> F(4) there, 2 threads (ms, AVX-512 / AVX2): (8,14,14,64->64), 128
/// tiles, 0.224 vs 0.263; (8,12,12,64->64), 72 tiles, 0.165 vs 0.198 / 0.251 vs 0.278;
/// (8,12,12,96->96) 0.423 vs 0.467; (8,8,8,64->64), 32 tiles, AVX2 0.155 vs 0.208;
/// (8,7,7,64->64) AVX2 0.158 vs 0.211; even at (16,8,8,64->64) and (32,8,8,64->64); F(4)
/// from 256: (16,14,14,48->48) 0.243 -> 0.231, (32,14,14,64->64) 0.96 -> 0.83 / 1.34 -> 1.15.
inline int winograd_forward_tile_size(int64_t N, int64_t Ho, int64_t Wo, int64_t K, int64_t Nf, int64_t r = 3) {
  if (r == 5) return 2;
  if (winograd_tile_size(Ho, Wo, K, Nf, r) == 4) return 4;
  if (Ho < 7 || Wo < 7) return 2;
  const int64_t tiles4 = saturating_mul(N, saturating_mul((Ho + 3) / 4, (Wo + 3) / 4));
  const bool same_cover = (Ho + 3) / 4 * 2 == (Ho + 1) / 2 && (Wo + 3) / 4 * 2 == (Wo + 1) / 2;
  const int64_t least = K <= 96 && Nf <= 96                              ? 256
                        : simd_level() < SimdLevel::AVX512 && same_cover ? 32
                                                                         : 64;
  return tiles4 >= least ? 4 : 2;
}

/// The "auto" rule for the kernel gradient (measured against the im2col GEMM, 2 threads,
/// docs/convolution.md "Winograd"): C, Q >= 16 (about 2x faster from 16 -> 16 to 256 -> 256
/// channels; a wash at 8), and at least 4 blocks of tiles: the tiles are the reduction, split
/// into chunks of whole blocks, so fewer blocks leave threads idle (2 x 7 x 7, 512 -> 512 ran
/// 14 ms by GEMM, 17 by Winograd on one block). Against the direct kernel-gradient kernel
/// (backward_weight_direct, which came later) Winograd lost where both C and Q are below 32
/// (AVX-512, 2 threads, ms, Winograd vs direct: (16,32,32,16->16) 0.335 vs 0.294,
/// (8,28,28,24->24) 0.353 vs 0.335) and won from 32 on either side ((16,32,32,16->32)
/// 0.40 vs 0.51, (16,32,32,32->32) 0.54 vs 0.98). Re-measured on 2026-12-05, after the
/// transforms began to run the half vector of 24 or 40 channels in an AVX2 vector (block_fns),
/// it wins from 16 on both sides at AVX-512 as well, 16 -> 16 included, which has no half
/// vector (so that gain is not the fix's; the code had changed since the first measurement):
/// (16,32,32,16->16) 0.23 vs 0.28, (8,56,56,16->16) 0.34 vs 0.41, (8,28,28,24->24) 0.25 vs
/// 0.35, 16->24 0.41 vs 0.57, 24->16 0.33 vs 0.43; (4,28,28,24->24) 0.195 vs 0.185. The
/// portable level keeps the old limit (not re-measured).
///
/// 5x5: C, Q >= 32 (AVX-512, 2 threads, ms, direct -> Winograd: (8,32,32,32->32) 1.12 -> 0.90,
/// 48->48 2.45 -> 1.70, (8,28,28,64->64) 3.54 -> 2.46, but 24->48 1.24 -> 1.46, 32->16 0.58 ->
/// 0.88, 16->32 0.60 -> 0.59).
///
/// At AVX2, C, Q >= 16, and 24 for 5x5 (AVX2, 2 threads, ms, direct -> Winograd: 16->8 on
/// (16,32,32) 0.42 -> 0.33, (8,32,32,24->24) 0.58 -> 0.34, 5x5 24->24 1.50 -> 1.17; but 8->16
/// 0.22 -> 0.26, 5x5 (8,32,32,8->32) 0.54 -> 0.76, (4,96,96,16->16) 2.36 -> 2.59).
///
/// Blocks of tiles: at least 8 for F(2x2) tiles at AVX-512 (and portable), else 4. Batch-1
/// and small-batch F(2) layers with 6.5 blocks lost to the im2col GEMM at AVX-512 (2 threads,
/// ms, Winograd vs im2col_gemm: (1,28,28,128->128) 1.62 vs 1.17, (4,14,14,128->128) 1.64 vs
/// 1.19); 8.5 blocks tied ((16,8,8,128->128) 1.49 vs 1.45), 13 won ((2,28,28,128->128) 2.04
/// vs 2.22). F(4) tiles win from fewer blocks ((4,32,32,32->32), 4.7 blocks: 0.26 vs direct
/// 0.35; (8,28,28,32->32), 7.3: 0.45 vs 0.55) and lose only a little below 6
/// ((2,32,32,64->64), 5.3: 0.78 vs 0.71). At AVX2, F(2) at 6.5 blocks beats the direct
/// kernel ((1,28,28,128->128) 2.08 vs 2.21) but not the im2col GEMM (1.84), which select.h's
/// rule for 128 channels reaches only where Winograd does not run.
///
/// 5x5 (F(2x2, 5x5), 36 products per tile) needs 16 blocks at every level, and at AVX-512 (and
/// portable) blocks of at least 24 tiles, about C Q <= 4096: the tiles are the depth of its
/// GEMMs, and shorter blocks reload the accumulators too often (2 threads, ms, Winograd vs
/// direct, AVX-512: (4,16,16,64->64) 10.7 blocks 0.95 vs 0.80, (4,16,16,128->64) 14.2 blocks
/// of 18: 1.92 vs 1.57, (2,28,28,64->128) 21.8 of 18: 2.91 vs 2.59; but (8,16,16,64->64) 21.3
/// of 24: 1.44 vs 1.57, (4,24,24,48->48) 16 of 36: 0.83 vs 1.01, (4,32,32,64->64) 43 of 24: 2.35
/// vs 3.07. AVX2: (2,16,16,64->64) 5.3 blocks 0.89 vs 0.68, 10.7: 1.32 vs 1.35, 14.2 of 18:
/// 2.89 vs 2.76; 21.8 of 18: 4.04 vs 4.37, (4,24,24,48->48) 1.13 vs 1.62).
/// Re-measured at AVX-512 on 2026-12-05 (Xeon, 2 threads, ms, Winograd vs the kernel chosen
/// then; "blocks" counts block_tiles blocks): the 24-tile block limit kept out 14 x 14 layers
/// that now win; from 10 blocks whatever the block size: (8,14,14,96->96) 21.8 blocks of 18:
/// 2.02-2.08 vs 2.50-2.57 direct, (4,14,14,96->96) 10.9 of 18: 1.26-1.39 vs 1.59-1.64,
/// (8,14,14,48->48) 10.9 of 36: 0.52 vs 0.76, (8,14,14,112->112) 32.7 of 12: 3.17-3.19 vs
/// 3.70-3.89 im2col_gemm (see winograd_amortized), (16,16,16,128->64) 3.95 vs 5.96,
/// (4,28,28,64->128) 3.53 vs 4.55; (2,28,28,64->128) ties (2.23-2.40 vs 2.32-2.39). Lost by
/// the rule: (4,16,16,64->64), 10.7 blocks of 24, 0.75-0.83 vs 0.67-0.74 (its rows of 16 suit
/// the direct kernel); below it (2,16,16,64->64), 5.3 blocks: 0.63 vs 0.38. At AVX2 from 8
/// blocks (was 16): (4,14,14,64->64) 8.2 blocks of 24: 0.89 vs 1.25-1.29 direct, (4,14,14,96->96)
/// 10.9 of 18: 1.85-1.90 vs 2.90-3.12, (8,14,14,48->48) 0.72 vs 1.10-1.12, (4,16,16,64->64)
/// 10.7 of 24: 1.10 vs 1.27-1.31, (4,22,22,48->48) 13.4 of 36: 0.90 vs 1.31-1.35; not
/// (2,16,16,64->64), 5.3 blocks: 0.77-0.79 vs 0.66.
template <typename T>
inline bool winograd_preferred_weight(const Conv2dGeometry& g) {
  const bool avx2 = simd_level() == SimdLevel::AVX2;
  if (!winograd_applicable(g) || g.C < 16 || g.Q < 16) return false;
  if (simd_level() < SimdLevel::AVX2 && g.C < 32 && g.Q < 32) return false;
  const int64_t five = avx2 ? 24 : 32;
  if (g.FH == 5 && (g.C < five || g.Q < five)) return false;
  const int m = winograd_tile_size(g.Ho, g.Wo, g.C, g.Q, g.FH);
  const int64_t tiles = g.N * ((g.Ho + m - 1) / m) * ((g.Wo + m - 1) / m);
  const int64_t tb = winograd_detail::block_tiles<T>(static_cast<int>(m + g.FH - 1), g.C, g.Q, tiles);
  if (g.FH == 5) {
    if (avx2) return tiles >= 8 * tb;
    if (simd_level() >= SimdLevel::AVX512) return tiles >= 10 * tb;
    return tiles >= 16 * tb && tb >= 24;
  }
  return tiles >= ((avx2 || m == 4) ? 4 : 8) * tb;
}

namespace winograd_detail {
/// The entry points' checks: g must be winograd_applicable (std::invalid_argument naming
/// `who` otherwise); m = 2 or 4 for a 3x3 kernel, 2 for a 5x5 one, or 0 for `automatic`.
inline int checked_tile_size(const char* who, const Conv2dGeometry& g, int m, int automatic) {
  if (!winograd_applicable(g))
    throw std::invalid_argument(std::string(who) + ": needs a 3x3 or 5x5 kernel with stride 1, got " +
                                std::to_string(g.FH) + "x" + std::to_string(g.FW) + " stride (" +
                                std::to_string(g.stride_h) + "," + std::to_string(g.stride_w) + ")");
  if (m == 0) m = automatic;
  if (g.FH == 5 && m != 2)
    throw std::invalid_argument("winograd: tile size m must be 2 for a 5x5 kernel, got " + std::to_string(m));
  if (m != 2 && m != 4) throw std::invalid_argument("winograd: tile size m must be 2 or 4, got " + std::to_string(m));
  return m;
}

/// Runs f(std::integral_constant<int, M>, std::integral_constant<int, R>) for the variant
/// F(m x m, r x r) of tile size m (checked_tile_size's) and kernel size r = g.FH.
template <typename F>
inline void with_variant(const Conv2dGeometry& g, int m, const F& f) {
  using I2 = std::integral_constant<int, 2>;
  if (g.FH == 5)
    f(I2{}, std::integral_constant<int, 5>{});
  else if (m == 2)
    f(I2{}, std::integral_constant<int, 3>{});
  else
    f(std::integral_constant<int, 4>{}, std::integral_constant<int, 3>{});
}
}  // namespace winograd_detail

/// Forward pass y = conv(x, w) + bias by Winograd F(m x m, r x r) (r = 3 or 5); m = 2 or 4
/// for 3x3 (2 for 5x5), or 0 to let winograd_tile_size choose. Requires winograd_applicable(g)
/// (std::invalid_argument otherwise). Same contract as conv2d_forward: y is overwritten,
/// buffers must not alias.
template <typename T>
void winograd_conv2d_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y,
                             int m = 0) {
  m = winograd_detail::checked_tile_size("winograd_conv2d_forward", g, m,
                                         winograd_forward_tile_size(g.N, g.Ho, g.Wo, g.C, g.Q, g.FH));
  if (g.N == 0) return;
  const int64_t C = g.C, Q = g.Q, r = g.FH;
  const winograd_detail::KernelView<T> kern{w, r * r * C, 1, r * C, C};  // w[((f * r + a) * r + d) * C + c]
  winograd_detail::with_variant(g, m, [&](auto M, auto R) {
    winograd_detail::conv_tiles<T, decltype(M)::value, decltype(R)::value>(
        g.N, g.H, g.W, C, g.pad_top, g.pad_left, g.Ho, g.Wo, Q, x, kern, bias, y);
  });
}

/// Input gradient dx (N, H, W, C) from dy (N, Ho, Wo, Q) by the same Winograd routine: the
/// stride-1 convolution of dY zero-padded by r-1 with the flipped kernel
/// Kr[c, a', d', q] = K[q, r-1-a', r-1-d', c] (flip_kernel), cropped by the forward padding.
/// m as for the forward (winograd_forward_tile_size of dX). Requires winograd_applicable(g).
template <typename T>
void winograd_conv2d_backward_input(const Conv2dGeometry& g, const T* dy, const T* w, T* dx, int m = 0) {
  m = winograd_detail::checked_tile_size("winograd_conv2d_backward_input", g, m,
                                         winograd_forward_tile_size(g.N, g.H, g.W, g.Q, g.C, g.FH));
  if (g.N == 0) return;
  const int64_t C = g.C, Q = g.Q, r = g.FH;
  // Kr as a kernel of C filters over Q channels: Kr(f = c, ch = q, a', d') = K[q, r-1-a', r-1-d', c].
  const winograd_detail::KernelView<T> kern{w + ((r - 1) * r + (r - 1)) * C, 1, r * r * C, -r * C, -C};
  // dX[y, x] reads dY rows y + pt + a' - (r-1): the read offset is r-1 - pt (negative when pt > r-1).
  const int64_t off_h = r - 1 - g.pad_top, off_w = r - 1 - g.pad_left;
  winograd_detail::with_variant(g, m, [&](auto M, auto R) {
    winograd_detail::conv_tiles<T, decltype(M)::value, decltype(R)::value>(
        g.N, g.Ho, g.Wo, Q, off_h, off_w, g.H, g.W, C, dy, kern, nullptr, dx);
  });
}

/// Kernel gradient dw (Q, r, r, C) from x and dy by the adjoint of F(m x m, r x r)
/// (winograd_detail::kernel_grad); m by winograd_tile_size of the output. The
/// bias gradient is not computed here. Requires winograd_applicable(g).
template <typename T>
void winograd_conv2d_backward_weight(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, int m = 0) {
  m = winograd_detail::checked_tile_size("winograd_conv2d_backward_weight", g, m,
                                         winograd_tile_size(g.Ho, g.Wo, g.C, g.Q, g.FH));
  winograd_detail::with_variant(g, m, [&](auto M, auto R) {
    winograd_detail::kernel_grad<T, decltype(M)::value, decltype(R)::value>(g, x, dy, dw);
  });
}

}  // namespace kernels
}  // namespace nablagrad
