// nablagrad/kernels/conv2d/select.h - which kernel runs for which shape (every shape heuristic
// of the convolution lives here, apart from the maths), the process-wide algorithm setting,
// and the public entry points conv2d_forward / conv2d_backward_input / conv2d_backward_weight.
//
// Each entry point takes the kernel table of the current SIMD level once
// (conv_kernels_for_width<T>(), microkernel.h), asks select_* for the kernel, and runs it. The choice
// depends on the shape, the table (register tile, available kernels) and conv_algorithm()
// only, never on the thread count, so results stay bitwise identical for any thread count.
//
// conv_algorithm() (set_conv_algorithm, Python ng.backends.conv_algorithm):
//   Auto      the fastest kernel for the shape, as decided below
//   Direct    never Winograd (implicit GEMM / direct kernels: the exact sums)
//   Winograd  Winograd wherever it applies, the Auto choice elsewhere
//
// Adding a kernel: give it an enumerator in *Kernel below, a name in kernel_name(), a
// condition in select_*() and a case in the entry point. The places where the Winograd
// kernels (winograd.h) join are marked [WINOGRAD].
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../../checked.h"
#include "../gemm.h"
#include "../simd.h"
#include "backward_input.h"
#include "backward_weight.h"
#include "forward.h"
#include "geometry.h"
#include "microkernel.h"
#include "narrow.h"
#include "small_c.h"
#include "winograd.h"  // [WINOGRAD]

namespace nablagrad {
namespace kernels {

// ============================================================================================
// The algorithm setting.
// ============================================================================================

enum class ConvAlgorithm : int { Auto = 0, Direct = 1, Winograd = 2 };

namespace conv_detail {
inline std::atomic<int>& conv_algorithm_setting() {
  static std::atomic<int> setting{static_cast<int>(ConvAlgorithm::Auto)};
  return setting;
}
}  // namespace conv_detail

/// The algorithm setting in force (process-wide; Auto unless set).
inline ConvAlgorithm conv_algorithm() {
  return static_cast<ConvAlgorithm>(conv_detail::conv_algorithm_setting().load(std::memory_order_relaxed));
}

/// Sets the algorithm for every later convolution of the process.
inline void set_conv_algorithm(ConvAlgorithm a) {
  conv_detail::conv_algorithm_setting().store(static_cast<int>(a), std::memory_order_relaxed);
}

/// "auto", "direct" or "winograd".
inline const char* conv_algorithm_name(ConvAlgorithm a) {
  switch (a) {
    case ConvAlgorithm::Direct: return "direct";
    case ConvAlgorithm::Winograd: return "winograd";
    default: return "auto";
  }
}

/// Parses "auto", "direct" or "winograd"; anything else throws std::invalid_argument.
inline ConvAlgorithm parse_conv_algorithm(const std::string& name) {
  if (name == "auto") return ConvAlgorithm::Auto;
  if (name == "direct") return ConvAlgorithm::Direct;
  if (name == "winograd") return ConvAlgorithm::Winograd;
  throw std::invalid_argument("conv algorithm must be 'auto', 'direct' or 'winograd', got '" + name + "'");
}

// ============================================================================================
// Kernel choice per pass.
// ============================================================================================

enum class ForwardKernel { Direct, Pointwise, Winograd, Indirect, Gemm, Narrow };  // [WINOGRAD]
enum class BackwardInputKernel { Phases, Col2im, SmallC, Pointwise, Winograd, FlippedDirect, FlippedIndirect, FlippedNarrow, PhasesDirect, Col2imGemm };  // [WINOGRAD]
enum class BackwardWeightKernel { Gemm, SmallC, Pointwise, Winograd, Direct, Im2colGemm, Narrow };  // [WINOGRAD]

inline const char* kernel_name(ForwardKernel k) {
  switch (k) {
    case ForwardKernel::Direct: return "direct";
    case ForwardKernel::Pointwise: return "1x1_gemm";
    case ForwardKernel::Winograd: return "winograd";
    case ForwardKernel::Indirect: return "indirect";
    case ForwardKernel::Narrow: return "narrow";
    default: return "gemm";
  }
}
inline const char* kernel_name(BackwardInputKernel k) {
  switch (k) {
    case BackwardInputKernel::Col2im: return "col2im";
    case BackwardInputKernel::SmallC: return "smallc";
    case BackwardInputKernel::Pointwise: return "1x1_gemm";
    case BackwardInputKernel::Winograd: return "winograd";
    case BackwardInputKernel::FlippedDirect: return "flipped_direct";
    case BackwardInputKernel::FlippedIndirect: return "flipped_indirect";
    case BackwardInputKernel::FlippedNarrow: return "flipped_narrow";
    case BackwardInputKernel::PhasesDirect: return "phases_direct";
    case BackwardInputKernel::Col2imGemm: return "col2im_gemm";
    default: return "phases";
  }
}
inline const char* kernel_name(BackwardWeightKernel k) {
  switch (k) {
    case BackwardWeightKernel::SmallC: return "smallc";
    case BackwardWeightKernel::Pointwise: return "1x1_gemm";
    case BackwardWeightKernel::Winograd: return "winograd";
    case BackwardWeightKernel::Direct: return "direct";
    case BackwardWeightKernel::Im2colGemm: return "im2col_gemm";
    case BackwardWeightKernel::Narrow: return "narrow";
    default: return "gemm";
  }
}

/// The kernel table for a pass whose GEMM has `ncols` output columns (filters Q for the
/// forward and kernel-gradient passes, channels C for the input gradient): the current
/// level's row; at AVX-512 the 12 x 2-vector tile (32 floats / 16 doubles wide) where it
/// wastes no columns (ncols a multiple of its width, or at least 4 tiles wide), else the
/// 24 x 1-vector one (e.g. 16 or 48 filters, which the wide tile would pad with zeros). At
/// AVX2 the 4 x 3-vector tile (24 floats / 12 doubles) where it fits ncols exactly and the
/// 6 x 2-vector one (16 / 8) does not: 24, 72 or 120 filters, which the 6 x 2 tile pads to
/// 32, 80 and 128 (a quarter of its multiply-adds wasted at 24). Measured at AVX2 (Xeon held to
/// AVX2, 2 threads, C++, ms, 6 x 2 -> 4 x 3): (8,56,56,6->24) forward 0.50 -> 0.35, dW 0.65 ->
/// 0.45; (8,112,112,16->24, 3x3 S 2) forward 1.34 -> 0.96, dW 1.50 -> 1.10-1.17; dX of
/// (16,56,56,24->40, S 2) (24 channels) 1.70 -> 1.21; (8,28,28,24->72, S 2) forward 0.34 ->
/// 0.26, dX 0.47 -> 0.34, dW 0.47 -> 0.31; (16,28,28,120->120, S 2) forward 4.36 -> 4.3.
/// The forward and the input gradient (`weight` false) keep the 12 x 2-vector tile at AVX-512
/// for 17-31 columns (24 filters, 20 channels): its one panel reads each input value once
/// where the 24 x 1-vector tile's two panels read it twice, and the strided forward and dX are
/// bound by those reads. AVX-512, 2 threads (ms, 24 x 1 -> 12 x 2): (8,112,112,16->24, 3x3
/// S 2) forward 1.05 -> 0.87, dX of (16,56,56,24->40, S 2) 1.40 -> 1.14; (8,56,56,6->24) and
/// (8,64,64,3->24, 7x7 S 2) forward unchanged. The kernel gradient keeps 24 x 1 (5x5 24->24
/// direct dW 3.06 -> 3.5 on 12 x 2).
template <typename T>
inline conv_detail::ConvKernels<T> conv_kernels_for_width(int64_t ncols, bool weight = false) {
  const auto cfg = conv_detail::conv_kernels<T>();
  if (cfg.level == SimdLevel::AVX512 && !weight && ncols * 2 > cfg.NR && ncols < cfg.NR) return cfg;
  if (cfg.level == SimdLevel::AVX512 && ncols % cfg.NR != 0 && ncols < 4 * cfg.NR)
    return conv_detail::conv_kernels<T>(SimdLevel::AVX512, /*alt_tile=*/true);
  if (cfg.level == SimdLevel::AVX2 && ncols % cfg.NR != 0 && ncols % (cfg.NR / 2 * 3) == 0)
    return conv_detail::conv_kernels<T>(SimdLevel::AVX2, /*alt_tile=*/true);
  return cfg;
}

/// Whether the kernel (FH*FW*C x Q values) stays within ~1 MiB, half an L2. The gather GEMM,
/// the indirect and direct kernels and the phase GEMMs read all of it (packed) once per block
/// of pixels, and the kernel-gradient kernels write ~16 partial sums of it; beyond that it
/// comes from L3 each time, and each pass goes through blocks of im2col (or dY.W) rows and
/// gemm(), whose cache blocking packs each panel once per block of rows and reuses it for all
/// of them. Measured (8,14,14,256->512, 3x3 S 2; 4.7 MB of kernel) at AVX-512, 2 threads (ms):
/// forward 5.2 -> 2.5, dX 9.5 -> 2.9, dW 5.4 -> 2.6 (PyTorch: forward 2.8-3.3, f+b ~11).
/// (`bytes`: another limit on the same size, forward_kernel_fits_cache's.)
template <typename T>
inline bool kernel_fits_cache(const Conv2dGeometry& g, int64_t bytes = int64_t{1} << 20) {
  const int64_t K = g.FH * g.FW * g.C;  // the kernel is allocated: fits in int64
  return saturating_mul(K, saturating_mul(g.Q, static_cast<int64_t>(sizeof(T)))) <= bytes;
}

/// The forward's own limit for the indirect kernel (forward_indirect), a quarter above
/// kernel_fits_cache: the kernel passes from L2 once per block of MR pixels, and the 2 MiB L2
/// of the machine measured still holds a 1.25 MiB one beside the input runs. (The input
/// gradient's and kernel gradient's paths keep kernel_fits_cache.) 2 threads, ms, gemm ->
/// indirect, AVX-512 / AVX2: (8,28,28,128->256, 3x3 S 2; 1.13 MiB) 2.78-2.83 -> 2.61-2.68 /
/// 4.36-4.52 -> 4.20-4.39; (8,28,28,160->192, S 2) 2.92-2.98 -> 2.54-2.60 / 4.17-4.20 -> 3.91-3.93;
/// (8,56,56,128->256, S 2) 11.8-12.0 -> 11.2-11.3; (8,14,14,160->192, 3x3 S 1) 2.83-2.85 ->
/// 2.48-2.53 / 4.30 -> 4.06; (8,28,28,128->256, S 1) 11.2 -> 10.5 / 18.1 -> 18.5. Ties from
/// 1.3 to 1.8 MiB ((8,56,56,96->384, S 2), (16,28,28,128->320), (8,28,28,192->256)), and at
/// 2.25 MiB the gemm() path wins by a quarter ((8,28,28,256->256, S 2) 7.8 vs 5.9).
template <typename T>
inline bool forward_kernel_fits_cache(const Conv2dGeometry& g) {
  return kernel_fits_cache<T>(g, int64_t{5} << 18);  // 1.25 MiB
}

/// Whether the forward's GEMM (ForwardKernel::Gemm) reads each output pixel's im2col row in
/// place (forward_gemm's gemm_indirect) rather than gathering blocks of rows first: where its
/// depth slices (forward_run_slices) are at least 64 values deep. A border pixel's slices that
/// take taps on both sides of the left or right border are copied (by each thread whose block
/// of the product holds the pixel), and a tile whose pixels' slice is all padding (a kernel row
/// in the top or bottom padding) skips its multiply-adds (gemm_indirect): so padded layers gain
/// most. Zen 4, 2 threads, C++, ms, gathered -> in place, AVX-512 / AVX2: (8,14,14,256->512,
/// 3x3 S 2) 4.41-4.55 -> 4.29-4.36 / 4.48 -> 4.36; (8,16,16,256->16, S 2 P 0) 0.174 -> 0.136 /
/// 0.184 -> 0.141; (2,14,14,128->128, S 2) 0.176 -> 0.146 / 0.174 -> 0.145; (1,7,7,512->512)
/// 1.44 -> 1.39 / 1.39 -> 1.32; (8,16,16,64->64, 2x2 S 2) 0.082 -> 0.079 / 0.107 -> 0.099; and
/// with many border columns, since the skip, AVX-512: (2,14,14,32->256, 7x7 P 3), 6 border
/// columns of 14, 1.47-1.53 -> 1.33-1.37; (32,8,8,32->96, 7x7 S 2), 3 of 4, 0.72-0.74 ->
/// 0.69-0.70; (4,7,7,64->256, 7x7 P 3), all of them, 1.58-1.78 -> 1.27-1.41; (8,14,14,128->256,
/// 5x5 S 2) 3.14-3.34 -> 2.99-3.09; (16,14,14,64->64, 7x7 S 2) 1.74-1.82 -> 1.41-1.46. Not:
/// 48-value slices, (4,224,224,3->192, 16x16 S 16) 1.078 -> 1.099 / 1.10 -> 1.15.
template <typename T>
inline bool gemm_rows_in_place(const Conv2dGeometry& g) {
  const int64_t KC = gemm_detail::gemm_config_for<T>(saturating_mul(g.N, saturating_mul(g.Ho, g.Wo)), g.Q).KC;
  const std::vector<KSlice> slices = conv_detail::forward_run_slices(g, KC);
  return std::all_of(slices.begin(), slices.end(), [](const KSlice& s) { return s.kc >= 64; });
}

/// A strided 1x1 forward (a ResNet block's projection shortcut) by the indirect kernel rather
/// than the pointwise GEMM: the GEMM first gathers the output pixels' rows (C values each,
/// written and read again) for C Q multiply-adds per pixel, the indirect kernel reads them in
/// place but streams the whole packed kernel once per block of MR pixels. So where the filters
/// are at most 128 and at most the channels, and the output has more pixels than the few-rows
/// rule of select_forward sends to the GEMM. Measured (2 threads, C++, ms, pointwise ->
/// indirect), AVX-512: (8,56,56,256->128, S 2) 1.42 -> 1.23, (8,56,56,256->64) 0.86 -> 0.66,
/// (8,56,56,128->128) 0.87 -> 0.77, (16,56,56,64->64) 0.46 -> 0.39, (8,112,112,64->32) 0.72
/// -> 0.54; AVX2 2.18 -> 1.89, 1.25 -> 1.02, 1.14 -> 1.05, 0.70 -> 0.62, 0.89 -> 0.71. Not
/// with more filters: (16,28,28,64->128) 0.171 -> 0.188, (8,28,28,128->256) 0.30 -> 0.36,
/// (8,56,56,256->512) 4.6 -> 5.2, (8,28,28,256->256) 0.61 -> 0.63, (8,28,28,512->256) 1.27 ->
/// 1.34 (AVX2 ties on the last two); nor with 32 channels ((8,56,56,32->32) 0.069 -> 0.073), nor
/// at the portable level (8.0 vs 7.6 at (8,56,56,256->128)). Double as float: 2.94 -> 2.71,
/// 1.79 -> 1.32 at (8,56,56,256->64).
template <typename T>
inline bool strided_pointwise_indirect(const Conv2dGeometry& g, const conv_detail::ConvKernels<T>& cfg) {
  return conv_detail::is_pointwise(g) && (g.stride_h > 1 || g.stride_w > 1) && cfg.indirect != nullptr &&
         cfg.level != SimdLevel::Portable && g.Q * 4 > cfg.NR && g.Q <= 128 && g.Q <= g.C && g.C >= 64 &&
         kernel_fits_cache<T>(g) &&
         saturating_mul(g.N, saturating_mul(g.Ho, g.Wo)) > 800;
}

/// [WINOGRAD] A deep layer on small images: Winograd transforms its kernel ((m+r-1)^2 C Q
/// values) afresh in every call, a cost of C Q that only enough tiles (its GEMMs' rows) repay.
/// Where the kernel is past kernel_fits_cache (the alternative being the gemm() paths), the
/// forward and dX run Winograd from 96 tiles (such 3x3 layers run F(2x2): more than 96 channels
/// on a side); dW where its transformed kernel is at most 4 KB per tile (8 KB for 5x5). Measured at AVX-512,
/// 2 threads, with the filter panels (conv_tiles_panels) (ms, gemm paths -> Winograd, forward /
/// dX): 3x3 (4,7,7,512->512), 64 tiles: 2.75 -> 3.04, 2.78 -> 3.13; (4,7,7,256->256), 64:
/// 0.76 -> 0.71, 0.65 -> 0.73; (2,14,14,256->256), 98: 1.27 -> 0.94, 1.23 -> 0.94;
/// (2,14,14,512->512), 98: 4.98 -> 3.78; (8,7,7,256->256), 128: 1.31 -> 1.11; (8,7,7,512->512),
/// 128: 5.16 -> 4.45, 5.12 -> 4.44; 5x5 (2,7,7,256->256), 32: 1.12 -> 1.48; (4,7,7,256->256),
/// 64: 2.13 -> 2.23, 2.00 -> 2.05; (8,7,7,256->256), 128: 4.2 -> 3.4. dW by Winograd lost on
/// all of them (0.2-0.8x), and at (8,14,14,256->256, 3x3), 11 KB per tile: 5.4 gemm vs 7.4.
/// A 5x5 dW up to 8 KB per tile (each tile saves 100 - 36 multiplies per channel pair, 3x3
/// F(2x2) 36 - 16): (8,14,14,112->112), 4.6 KB, 3.17-3.19 vs 3.70-3.89 im2col_gemm;
/// (8,14,14,128->128), 6 KB, ties (4.29-4.38 vs 4.26-4.33); (4,14,14,128->128), 12 KB, lost
/// (2.77-2.94 vs 2.42-2.43), (8,14,14,160->160), 9.4 KB, won (6.39 vs 6.93) but stays out.
/// AVX2: (8,14,14,112->112) 6.05-6.31 -> 3.76-3.90, 128->128 8.59-8.63 -> 5.79-5.80.
/// Since the float kernel transform (kernel_run_vec) and the balanced filter panels, fewer
/// tiles repay the forward and dX where they cover the output well. AVX-512, 2 threads (ms,
/// gemm paths -> Winograd, forward / dX): (1,14,14,256->256), 49 tiles, 86 KB of transformed
/// kernel per tile, 0.72-0.81 -> 0.64-0.65 / 0.71-0.77 -> 0.57-0.59; (1,16,16,256->256), 64
/// tiles, 0.96-0.99 -> 0.76 / 0.92-1.00 -> 0.67-0.72; (1,14,14,192->192) 0.42 -> 0.40 / 0.42-0.45
/// -> 0.34-0.36; (1,14,14,256->512), 171 KB, 1.34-1.44 -> 1.26-1.29 / 1.46-1.47 -> 1.19-1.29;
/// ties (1,12,12,256->256), 36 tiles, 0.57-0.59 vs 0.58 / 0.54-0.57 -> 0.50-0.52, and
/// (1,14,14,384->384), 193 KB, 1.59-1.63 vs 1.62 / 1.73-1.77 -> 1.53-1.55; lost (kept out):
/// (1,14,14,512->512), 342 KB, 2.76-2.87 vs 2.92; odd outputs, whose tiles reach past them:
/// (4,7,7,256->256) 0.83 vs 0.81 / 0.73-0.75 vs 0.80, (2,7,7,256->256), 32 tiles, 0.45-0.46 vs
/// 0.50 / 0.41-0.42 vs 0.43-0.56, (4,7,7,512->512) 3.25-3.37 vs 3.47-3.52. AVX2, where the
/// GEMMs weigh more: forward / dX (1,14,14,256->256) 1.12-1.17 -> 0.80-0.81 / 1.17 -> 0.92,
/// (1,16,16,256->256) 1.45-1.51 -> 0.97-1.00 / 1.48 -> 1.09, (1,12,12,256->256) 0.80 -> 0.56 /
/// 0.86 -> 0.64, (1,14,14,512->512), 342 KB, 4.60 -> 3.48 / 4.88 -> 4.14, (1,10,10,256->256),
/// 25 tiles, 0.59 -> 0.54 / 0.65 -> 0.58; on 7 x 7 outputs (kept out, as at AVX-512)
/// (4,7,7,256->256) 1.17 -> 1.00 / 1.11 -> 1.10, (4,7,7,512->512) 4.34 vs 4.24-4.27 / 4.90 vs
/// 5.06-5.22, (4,7,7,384->384) 2.44 vs 2.37-2.39 / 2.80 vs 2.65-2.84, and lost (2,7,7,512->512),
/// 524 KB per tile, 2.35 vs 2.61 / 2.75 vs 3.00.
template <typename T>
inline bool winograd_amortized(const Conv2dGeometry& g, bool weight) {
  if (kernel_fits_cache<T>(g)) return true;
  // Tiles counted at winograd_tile_size (F(2x2) for deep layers) even where the forward and dX
  // now run F(4x4) (winograd_forward_tile_size): the 96-tile threshold was measured in them.
  const int64_t m = winograd_tile_size(g.Ho, g.Wo, g.C, g.Q, g.FH);
  const int64_t tiles = saturating_mul(g.N, saturating_mul((g.Ho + m - 1) / m, (g.Wo + m - 1) / m));
  const int64_t u_bytes = saturating_mul(saturating_mul((m + g.FH - 1) * (m + g.FH - 1), g.C),
                                         saturating_mul(g.Q, static_cast<int64_t>(sizeof(T))));  // transformed kernel
  if (!weight) {
    if (tiles >= 96) return true;
    // 5x5 (F(2x2,5x5): 36 multiplies per tile and channel pair against 100) from 24 tiles at
    // the vector levels in float, with C Q >= 16384 (a kernel of 1.6 MB and up). 2 threads, ms,
    // gemm paths -> Winograd, forward / dX, one process alternating, AVX-512: (2,8,8,128->128),
    // 32 tiles, 0.49-0.57 -> 0.29-0.36 / 0.51-0.55 -> 0.28-0.34; (2,8,8,256->256) 1.80-2.02 ->
    // 1.21-1.48 / 2.23-2.62 -> 1.12-1.40; (2,8,8,512->512), 1.2 MB of transformed kernel per
    // tile, 8.07 -> 6.14 / 10.4 -> 6.33; (1,10,10,256->256), 25 tiles, 1.61 -> 1.56 / 2.13 ->
    // 1.70; (1,12,12,192->192) 1.35-1.41 -> 0.83-0.88 / 1.33-1.44 -> 0.86-0.92; (1,16,16,
    // 256->256) 3.94 -> 2.56 / 4.86 -> 2.44; (2,7,7,256->256), 32 tiles past the output,
    // 1.46-1.50 -> 1.34 / 1.93-1.98 -> 1.22-1.33; (4,6,6,256->256) 1.87 -> 1.49 / 2.51 -> 1.55;
    // (4,8,8,96->192) 1.03-1.20 -> 0.53-0.55 / 1.10-1.12 -> 0.54-0.59; (2,8,8,64->256) 0.46
    // -> 0.29 / 0.52 -> 0.32. AVX2: (2,8,8,128->128) 0.55 -> 0.47-0.48 / 0.65-0.66 -> 0.49;
    // (2,8,8,256->256) 2.19 -> 2.01-2.03 / 3.36-3.41 -> 2.15-2.21; (1,12,12,192->192) 1.31 ->
    // 0.82-0.84 / 1.79-1.88 -> 0.87; (1,14,14,128->128) 0.81-0.86 -> 0.59 / 0.97-0.98 -> 0.61;
    // (4,6,6,256->256) 2.21 -> 1.78-1.82 / 3.74-3.83 -> 1.91; (4,8,8,96->192) 1.09-1.11 ->
    // 0.77-0.78 / 1.32-1.35 -> 0.79-0.80; (4,7,7,256->256) 3.20-3.45 -> 3.13-3.20 / 4.72-4.78
    // -> 3.26-3.40; ties (1,10,10,256->256) 1.74-1.77 vs 1.69-1.75 / 2.45-2.58 -> 1.84-1.92,
    // (2,8,8,512->512) 8.96-9.31 vs 8.98-9.11 / 13.4-13.5 -> 9.8-9.9; and (2,7,7,256->256)
    // loses its forward, 1.61-1.67 vs 1.83-1.94, for its dX, 2.30-2.49 -> 2.07-2.10. Not under
    // 24 tiles: (1,8,8,512->512), 16, 5.19 vs 6.34 (dX 7.39 vs 6.74), AVX2 4.59-4.64 vs
    // 6.27-6.46; (1,8,8,256->256) AVX2 1.15-1.20 vs 1.51-1.55; (1,4,4,256->256), 4, 0.36 vs
    // 0.99; nor for C Q just past the kernel_fits_cache limit, where the GEMM in place is quick:
    // (1,10,10,96->128) 0.28 vs 0.39, (2,8,8,96->128) 0.37 vs 0.40, (1,12,12,112->112)
    // 0.48-0.50 vs 0.48.
    if (g.FH == 5)
      return std::is_same<T, float>::value && simd_level() >= SimdLevel::AVX2 && tiles >= 24 &&
             saturating_mul(g.C, g.Q) >= 16384;
    // Batch 1 and small batches (see above; 3x3 in float, the measured cases): on outputs of
    // even height and width (F(2x2)'s tiles cover them whole), from 36 tiles at AVX-512 with a
    // transformed kernel of at most 192 KB per tile, at AVX2 from 24 tiles and up to 384 KB.
    const bool avx512 = simd_level() >= SimdLevel::AVX512;
    if (!std::is_same<T, float>::value || g.FH != 3 || simd_level() < SimdLevel::AVX2 || g.Ho % 2 != 0 ||
        g.Wo % 2 != 0 || tiles < (avx512 ? 36 : 24))
      return false;
    return u_bytes <= saturating_mul(tiles, int64_t{avx512 ? 192 : 384} << 10);
  }
  return u_bytes <= saturating_mul(tiles, int64_t{g.FH == 5 ? 8 : 4} << 10);
}

/// [WINOGRAD] Whether a pass of g runs Winograd (winograd.h): never for Direct; wherever it
/// applies (3x3 or 5x5, stride 1) for Winograd; for Auto where it applies and preferred(), that
/// pass's measured rule (enough channels), says it pays.
template <typename Preferred>
inline bool use_winograd_if(const Conv2dGeometry& g, const Preferred& preferred) {
  const ConvAlgorithm a = conv_algorithm();
  if (a == ConvAlgorithm::Direct || !winograd_applicable(g)) return false;
  return a == ConvAlgorithm::Winograd || preferred();
}
/// [WINOGRAD] Whether a forward (or input gradient) is big enough for Winograd: at least 12M
/// multiply-adds by the direct sums (N Ho Wo Q FH FW C) at AVX-512, 6M below. Under that its
/// transforms (three passes over the data, the kernel's afresh each call) and few tiles per
/// thread cost more than its fewer multiplies save: small images, small batches, inference of
/// one image. Measured forward, 2 threads (Winograd time / the best of the direct, indirect
/// and GEMM kernels; MMAC = millions of multiply-adds), AVX-512 / AVX2: (1,7,7,32->32), 0.5
/// MMAC, 2.9 / 2.7; (8,8,8,32->32), 4.7, 1.13 / 1.39; (2,14,14,32->32), 3.6, 1.32 / 1.23;
/// (1,16,16,64->64), 9.4, 1.57 / 1.68; (8,7,7,32->32), 3.6, 1.43 / 1.75; (2,16,16,32->32),
/// 4.7, 1.72 / 1.53; (32,7,7,24->24), 8.1, 1.46 / 1.20; (1,28,28,32->32), 7.2, 1.23 / 0.92;
/// (32,8,8,24->24), 10.6, 1.23 / 0.96; (8,16,16,24->24), 10.6, 1.14 / 0.69; past it
/// (8,28,28,16->16), 14.5, 0.76 / 0.71; (32,8,8,32->32), 18.9, 0.86 / 0.75; (8,16,16,32->32),
/// 18.9, 0.76 / 0.72. Lost by the limit: (2,28,28,16->16), 3.6, 0.90 / 0.81; (8,14,14,16->16),
/// 3.6, 1.01 / 0.87; (32,8,8,16->16), 4.7, 0.86 / 0.86 (benchmarks/RESULTS.md, "Winograd only
/// with enough work").
inline bool winograd_enough_work(const Conv2dGeometry& g) {
  const int64_t macs = saturating_mul(saturating_mul(g.N, saturating_mul(g.Ho, g.Wo)),
                                      saturating_mul(g.Q, saturating_mul(g.FH * g.FW, g.C)));
  return macs >= (simd_level() >= SimdLevel::AVX512 ? int64_t{12000000} : int64_t{6000000});
}

/// The forward pass (or the input gradient): winograd_preferred, winograd_amortized and
/// winograd_enough_work.
template <typename T>
inline bool use_winograd(const Conv2dGeometry& g, bool backward_input) {
  return use_winograd_if(g, [&] {
    return winograd_preferred(g, backward_input) && winograd_amortized<T>(g, /*weight=*/false) &&
           winograd_enough_work(g);
  });
}

/// [WINOGRAD] The same for the kernel gradient (winograd_preferred_weight for Auto).
template <typename T>
inline bool use_winograd_weight(const Conv2dGeometry& g) {
  return use_winograd_if(g, [&] { return winograd_preferred_weight<T>(g) && winograd_amortized<T>(g, /*weight=*/true); });
}

/// Forward kernel for g with the kernels cfg. (select_backward_input asks it about dX's flipped
/// geometry with few_rows_gemm = false: the indirect kernel there, whatever the pixel count.)
template <typename T>
inline ForwardKernel select_forward(const Conv2dGeometry& g, const conv_detail::ConvKernels<T>& cfg,
                                    bool few_rows_gemm = true) {
  // [WINOGRAD] 3x3 or 5x5, stride 1: Winograd when forced, or for Auto with enough channels
  // (winograd_preferred; measured crossover, docs/convolution.md "Winograd").
  if (use_winograd<T>(g, /*backward_input=*/false)) return ForwardKernel::Winograd;
  const int64_t K = g.FH * g.FW * g.C;
  // First layers with wide kernels (FW >= 7 on <= 8 channels): the kernel's depth is long
  // against the input each output pixel adds (see wide_first, below).
  const bool wide_kernel_first_layer = g.FW >= 7 && g.C <= 8;
  // Whether forward_direct applies on the tiles c: a small depth (the few-channel first
  // layers) or, at stride 1 or for wide-kernel first layers (wide_first, below), a packed panel
  // K x NR that stays in L1-L2 (see the rule at the end); filters enough to fill a quarter of
  // the tile; a padded copy about the input's size.
  const auto direct_applies = [&](const conv_detail::ConvKernels<T>& c, bool wide_first) {
    const bool panel_fits =
        ((g.stride_h == 1 && g.stride_w == 1) || wide_first) &&
        conv_detail::panel_fits<T>(K, c.NR, (conv_detail::direct_s1_two_for(c, g) ? 512 : 64) << 10);
    return (K <= c.KC || panel_fits) && g.Q * 4 > c.NR &&
           conv_detail::padded_copy_is_small(g, g.H + g.pad_top + g.pad_bottom,
                                             conv_detail::forward_direct_row_values(g, c.MR));
  };
  // More than half and at most one AVX2 vector of filters (5-8 floats, 3-4 doubles): the
  // direct forward on the 1-vector tiles (use_direct_one) wherever it applies, ahead of the
  // narrow kernel, whose vectors along the kernel-row runs of few channels are part empty and
  // whose sums end in reductions. 2 threads, C++, ms, narrow -> direct (12 / 14 x 1 ymm),
  // AVX-512 / AVX2: (8,56,56,8->8) 0.86 -> 0.28 / (Winograd), (8,56,56,16->8) 0.83 -> 0.55 /
  // (Winograd), (8,56,56,32->8) 1.22 -> 1.09 / 0.40 either way, (8,56,56,4->8, 5x5) 1.26 ->
  // 0.38 / 0.53 -> 0.19, (8,56,56,8->8, 5x5) 1.41 -> 0.69 / 0.52 either way,
  // (8,56,56,8->8, 7x7) 1.11 -> 0.68 / 1.02 -> 0.68, (8,56,56,8->6, S 2) 0.096 -> 0.057 /
  // 0.090 -> 0.060, (8,112,112,3->8, 7x7 S 2) 0.95 -> 0.30 / 0.76 -> 0.30. But not on
  // kernel-row runs FW*C of at least 20 values per filter past half the vector (8 floats: 40
  // values for 5 filters, 160 for 8; 4 doubles: 40 for 3, 80 for 4), which fill the narrow
  // kernel's vectors while the direct tile's lanes stay part empty: (16,56,56,24->8, 7x7 P 0)
  // 3.73 -> 3.95 / 3.79 -> 3.92, (8,28,28,64->8) 0.273 -> 0.284 / (Winograd), (4,64,64,32->5)
  // 0.30 -> 0.42 / 0.37 -> 0.41, (4,64,64,16->5) 0.21 -> 0.23 / 0.25 -> 0.22, (4,64,64,32->6)
  // 0.36 -> 0.43 / 0.44 -> 0.42; double (4,64,64,32->3) 0.48 -> 0.53 / 0.38 -> 0.52,
  // (4,64,64,16->3) 0.27 either way / 0.23 -> 0.27. Kept: (4,64,64,16->6) 0.245 -> 0.234 /
  // 0.28 -> 0.22, (4,64,64,8->5) 0.21 -> 0.14 / 0.18 -> 0.13, (8,56,56,16->8, 5x5) 0.89 ->
  // 0.75 / (Winograd), double (8,56,56,8->4) 0.27 -> 0.18 / 0.30 -> 0.17.
  if (conv_detail::use_direct_one(cfg, g.Q) && g.Q * 2 > cfg.NR_direct_one &&
      g.FW * g.C < 20 * (2 * g.Q - cfg.NR_direct_one)) {
    if (direct_applies(conv_detail::with_direct_one(cfg), wide_kernel_first_layer)) return ForwardKernel::Direct;
  }
  // Few filters, at most half the register tile's width (1-8 floats, 1-4 doubles; the tiles
  // below would be at least half padding): the narrow kernel (narrow.h), vectors along each
  // pixel's kernel-row runs, where those runs fill a tile's width or the filters are at most a
  // quarter of it. Measured against the kernel chosen before (2 threads, Xeon, ms, AVX-512 /
  // AVX2): (4,64,64,32->3) 0.71 -> 0.29 / 0.71 -> 0.26, (4,64,64,64->1) 0.74 -> 0.26 /
  // 0.81 -> 0.27, (8,28,28,64->8) 0.47 -> 0.32 (AVX2: Winograd first, 0.30 vs 0.36),
  // (8,56,56,64->4, 1x1) 0.37 -> 0.25 / 0.29 -> 0.27, (4,64,64,3->4) 0.31 -> 0.16,
  // (8,28,28,64->3, S2) 0.136 -> 0.056; double (8,28,28,64->4) 0.58 -> 0.32; portable 1.0-2x.
  // Not (4,64,64,3->8, 5x5), runs of 15 values: direct 0.16, narrow 0.38. A 1x1 only with
  // 1-2 filters or C >= 32 Q: the GEMM below (on its 8 x 1-vector tiles) reads such short
  // runs better (a vector sum per few vectors of run is mostly reduction). (8,56,56,C->Q)
  // narrow vs GEMM, AVX-512 / AVX2: 16->1 0.09 vs 0.15 / 0.11 vs 0.14, 64->2 0.22 vs 0.25 /
  // 0.20 vs 0.23, 128->4 0.38 vs 0.44 / 0.37 vs 0.40; but 64->4 0.27 vs 0.25 / 0.26 vs 0.23,
  // 128->8 0.52 vs 0.45 / 0.56 vs 0.39, 16->4 0.17 vs 0.08 / 0.17 vs 0.07.
  if (g.Q * 2 <= cfg.NR && (g.Q * 4 <= cfg.NR || g.FW * g.C >= cfg.NR) &&
      (!conv_detail::is_pointwise(g) || g.Q <= 2 || g.C >= 32 * g.Q))
    return ForwardKernel::Narrow;
  // 1x1 without padding: a plain GEMM (gemm.h), unless the depth C is too short to pay for
  // its packing (first layers) and the filters fill the direct kernel's tile below, which
  // reads the input in place. Too few filters for that tile (and the narrow kernel above
  // declined): the GEMM all the same, e.g. (32,28,28,2->4) 0.248 ms by the im2col gather
  // GEMM that took these before -> 0.071 at AVX-512, 0.260 -> 0.062 at AVX2 (2 threads).
  if (strided_pointwise_indirect<T>(g, cfg)) return ForwardKernel::Indirect;
  if (conv_detail::is_pointwise(g) && (g.C >= 8 || g.Q * 4 <= cfg.NR)) return ForwardKernel::Pointwise;
  // The indirect kernel (forward_indirect: each pixel's runs read in place through a pointer
  // table, no im2col, no padded copy) where the packed kernel fits forward_kernel_fits_cache and the
  // output has enough filters to fill a register tile. Measured against the im2col GEMM 5-15%
  // faster on every shape tried, 1 thread, Zen 5 (ms): (16,32,32,32->64, 3x3 S2) 0.83 -> 0.72,
  // (8,28,28,128->256, S2) 5.0 -> 4.5, (8,64,64,32->64, 5x5 S2) 4.65 -> 4.04,
  // (32,16,16,48->96, 3x3 unpadded) 2.92 -> 2.62. It also held the packed panel (K x NR) to
  // 256 KiB, which sent deep kernels that fit the cache to the im2col GEMM: a panel streams
  // from L2 or L3 at one row of NR values per MR x NR multiply-adds, which they deliver. Xeon,
  // 2 threads, forward (ms, im2col_gemm -> indirect), AVX-512 (panels of 32 filters):
  // (8,32,32,64->64, 7x7) 10.5 -> 8.3 (dX, flipped the same way: phases 11.7 -> 8.4),
  // (8,32,32,128->32, 7x7) 12.8 -> 8.6, (8,32,32,48->64, 7x7) 7.9 -> 6.3, (8,32,32,512->32,
  // S2) 2.45 -> 1.78, (8,32,32,768->24, S2) 3.95 -> 2.65, (8,28,28,96->96, 5x5 S2) 2.39 ->
  // 2.00, (8,28,28,256->64, S2) 1.62 -> 1.33, (16,16,16,384->64, S2) 1.76 -> 1.42; AVX2
  // (panels of 16): (8,32,32,128->32, 7x7) 19.1 -> 13.6, (8,32,32,512->32, S2) 3.74 -> 2.86,
  // (8,32,32,768->24, S2) 4.42 -> 3.22. It reads all of the packed kernel once per block of
  // pixels: beyond forward_kernel_fits_cache, im2col + gemm() (forward_gemm).
  const bool indirect_ok = cfg.indirect != nullptr && g.Q * 4 > cfg.NR && forward_kernel_fits_cache<T>(g);
  // But at most 800 output pixels (about 64 blocks of 12): im2col + gemm() (forward_gemm).
  // With so few blocks the indirect kernel's two threads get uneven shares, and its serial
  // packing of the kernel is a large part of the call; gemm() splits the filters too. AVX-512,
  // 2 threads (ms, indirect -> gemm): (1,14,14,128->128, S 2) 0.150 -> 0.081, (2,14,14,128->128,
  // S 2) 0.185 -> 0.123, (4,14,14,160->160, S 2) 0.41 -> 0.30, (8,16,16,64->64, 2x2 S 2) 0.105
  // -> 0.059, (2,28,28,256->256, 2x2 S 2) 0.78 -> 0.64, (4,224,224,3->192, 16x16 S 16) 0.78 ->
  // 0.69, (4,28,28,64->128, S 2) 0.369 -> 0.338, (1,14,14,64->64, 4x4) 0.112 -> 0.094; AVX2
  // 0.190 -> 0.105, 0.589 -> 0.547 (784 pixels), 0.096 -> 0.086. From 1024 pixels on even or
  // slower: (4,32,32,64->64, S 2) 0.285 vs 0.278 (1 thread 0.39 vs 0.48), (6,28,28,64->128,
  // S 2, 1176 pixels) 0.567 vs 0.578, (2,56,56,64->128, S 2) 0.68 vs 0.70. (1 thread, 784
  // pixels: (4,28,28,64->128) 0.62 vs 0.64, the 16x16 patches 1.38 vs 1.30.)
  // (Not with the algorithm set to "direct", which keeps to the kernels that read the input
  // in place where they apply.)
  const ForwardKernel indirect = few_rows_gemm && conv_algorithm() != ConvAlgorithm::Direct &&
                                         saturating_mul(g.N, saturating_mul(g.Ho, g.Wo)) <= 800
                                     ? ForwardKernel::Gemm
                                     : ForwardKernel::Indirect;
  // Strided, kernel-row runs FW*C of at least 32 values: the indirect kernel also beats the
  // direct one, whose blocks of MR pixels stop at each output row's end and whose padded copy
  // is 4x the output ((16,32,32,16->32, S2) 0.29 -> 0.23 ms, (16,32,32,24->48, S2) 0.72 ->
  // 0.57); shorter runs (the 7x7 C = 3 first layer: 21 values) do not pay for the pointer
  // table and keep the direct kernel (0.33 vs 0.43 ms).
  // But first layers with wide kernels (wide_kernel_first_layer) keep the direct kernel, on a
  // packed panel of up to 64 KiB (below). 2 threads, C++, ms, indirect -> direct, AVX-512: AlexNet's
  // (8,224,224,3->64, 11x11 S 4) 3.77-3.88 -> 3.56-3.60, (8,224,224,3->32) 2.14 -> 1.85,
  // (8,112,112,4->32, 9x9 S 2) 1.91 -> 1.59, (8,112,112,6->32, 7x7 S 2) 1.62 -> 1.42,
  // (8,56,56,8->32, 7x7 S 2) 0.55 -> 0.49; AVX2 5.86 -> 5.84, 2.85 -> 2.56, 2.45 -> 2.33,
  // 0.82 -> 0.80. Not 5x5 on 8 channels: (8,64,64,8->64, 5x5 S 2) 0.69 vs 0.71, AVX2 1.07
  // vs 1.12. Nor where the direct kernel's blocks cover the output rows badly (spanning
  // >= 1.2 Wo pixels: (2,40,40,3->16, 11x11 S 4), rows of 9 in a block of 24, 0.027 vs 0.031).
  const conv_detail::DirectForwardPlan<T> plan = conv_detail::direct_forward_plan(cfg, g);
  const bool wide_first = wide_kernel_first_layer && plan.rb.span * 5 < g.Wo * 6;
  if (indirect_ok && (g.stride_h > 1 || g.stride_w > 1) && g.FW * g.C >= 32 && !wide_first) {
    // But a deep kernel (K >= 1024) whose filters fill whole panels of the GEMM's register tile:
    // the GEMM with the rows read in place (gemm_rows_in_place), whose cache blocking keeps a
    // KC x NR slice of the packed kernel in L1-L2 where the indirect kernel streams a K x NR
    // panel of it per block of pixels. Zen 4, 2 threads, C++, ms, indirect -> gemm in place,
    // AVX-512 / AVX2: (8,28,28,160->192, 3x3 S 2) 4.31-4.37 -> 3.94-3.98 / 4.47-4.57 ->
    // 3.99-4.06, (8,28,28,256->64) 2.31-2.38 -> 2.13-2.15 / 2.35-2.54 -> 2.21-2.23,
    // (16,16,16,384->64) 2.43-2.52 -> 2.15-2.27 / 2.45-2.61 -> 2.21-2.44, (8,32,32,512->32)
    // 3.17-3.35 -> 2.99-3.17 / 3.27-3.75 -> 3.06-3.23, (8,28,28,96->96, 5x5 S 2) 3.62-3.67 ->
    // 3.30-3.32 / 3.61-3.64 -> 3.39-3.47, (8,28,28,128->256) 4.21-4.26 -> 4.18-4.22 /
    // 4.28-4.75 -> 4.33-4.36. Not below K = 1024: (16,32,32,32->64, S 2) 0.68-0.70 vs 0.70-0.74
    // / 0.73 vs 0.74, (8,56,56,24->64) 0.79-0.80 vs 0.81-0.85 / 0.83-0.85 vs 0.86, (8,64,64,
    // 32->64, 5x5 S 2) 3.71-3.86 vs 3.84-3.85 (but (8,32,32,64->64) 0.77 -> 0.69); nor 24
    // filters on 32-wide tiles: (8,32,32,768->24) 4.36-4.45 vs 4.87-4.98 at AVX-512. (Not
    // measured at the portable level, which keeps the indirect kernel.)
    if (few_rows_gemm && cfg.level != SimdLevel::Portable && conv_algorithm() != ConvAlgorithm::Direct && K >= 1024 &&
        g.Q % gemm_detail::gemm_config_for<T>(saturating_mul(g.N, saturating_mul(g.Ho, g.Wo)), g.Q).NR == 0 &&
        gemm_rows_in_place<T>(g))
      return ForwardKernel::Gemm;
    return indirect;
  }
  // Stride 1 without left or right padding (so no border copies in the pointer table), on
  // output rows that the direct kernel covers badly: no whole block of a stride-1 kernel, and
  // blocks spanning at least 1.2 Wo pixels (the indirect kernel walks the pixels flat across
  // rows). Same sums in the same order (h, kx, c), so the same bits. AVX-512, 2 threads, C++,
  // ms, direct -> indirect: LeNet's (64,14,14,6->16, 5x5; rows of 10 in two blocks of 8)
  // 0.211 -> 0.151, (64,16,16,6->16) 0.261 -> 0.217, (64,12,12,6->16, 3x3) 0.085 -> 0.066,
  // (64,14,14,6->32; one block of 12) 0.258-0.267 -> 0.237-0.239; kept: (64,18,18,6->16;
  // rows of 14 in 16) 0.314 either way, (64,30,30,6->16; 24 + 8 for 26) 0.97 vs 1.06, and
  // with padding (64,9,9,6->16, 5x5 P 2) 0.168 vs 0.208, (64,12,12,6->16, 3x3 P 1) 0.107 vs
  // 0.132 (every pixel a border pixel).
  if (indirect_ok && g.stride_w == 1 && g.pad_left == 0 && g.pad_right == 0 &&
      (plan.rb.full == 0 || plan.s1 == nullptr) && plan.rb.span * 5 >= g.Wo * 6)
    return indirect;
  // Direct from a zero-padded copy of the input (no im2col: each input value is read in place
  // by all the taps that use it) when the depth is small (C = 1..3 first layers) or the packed
  // kernel panel K x NR still fits in ~64 KiB (e.g. 5x5 on 16 channels: measured 3.5 vs 6.3 ms
  // for im2col at (4,96,96,16->16) on Zen 4, AVX-512; about equal beyond; stride 1 only:
  // at stride 2 the copy is 4x the output and (16,32,32,32->64, 3x3) measured 1.29 direct vs
  // 1.15 ms im2col), the output has
  // enough filters to fill a register tile, and the copy is about the input's size (a huge
  // padding or stride would make it absurd; then im2col reads the padding as 0). Where the
  // 2-vector stride-1 kernel applies (7x7 on rows of >= 24: direct_s1_two_for), panels up to
  // 512 KiB: it loads 0.25 values per multiply-add where the indirect kernel's 12 x 2 tile
  // loads 0.58. AVX-512, 2 threads, C++, ms, indirect -> direct: (8,32,32,32->32, 7x7)
  // forward 2.12-2.20 -> 1.94-2.04, dX (the same on the flipped kernel) 2.19-2.28 -> 1.95-2.14;
  // (8,32,32,64->64) 8.4 -> 7.5-7.9, 8.6-8.7 -> 7.7-7.9; (8,28,28,32->32) 1.74-1.76 ->
  // 1.61-1.63, 1.81-1.83 -> 1.64-1.71; (8,32,32,16->32) 1.13-1.15 -> 1.01-1.02.
  if (direct_applies(cfg, wide_first)) return ForwardKernel::Direct;
  // (Every ConvKernels row has an indirect kernel, and a kernel that fits with filters too few
  // for its tile went to the narrow kernel or the GEMM above: what is left does not fit.)
  if (indirect_ok) return indirect;
  return ForwardKernel::Gemm;
}

/// Input-gradient kernel for g with the kernels cfg.
template <typename T>
inline BackwardInputKernel select_backward_input(const Conv2dGeometry& g,
                                                 const conv_detail::ConvKernels<T>& cfg) {
  // [WINOGRAD] the same rule: dX is the stride-1 Winograd convolution of the padded dY with
  // the flipped kernel (winograd_conv2d_backward_input).
  if (use_winograd<T>(g, /*backward_input=*/true)) return BackwardInputKernel::Winograd;
  const int64_t C = g.C, Kfull = g.FH * g.FW * C;
  // 1x1 without padding: dX rows = dY W, a plain GEMM, unless C is too narrow for its panels.
  if (conv_detail::is_pointwise(g) && C * 4 > cfg.NR) return BackwardInputKernel::Pointwise;
  // 1-2 channels, stride 1, at most 3x3 taps, a vector level: direct dot products (measured
  // faster than GEMM + col2im only there; e.g. 64x28x28x1 -> 32, 3x3: 1.5 vs 2.2 ms at 1
  // thread, while C = 3-4, S = 2 or 5x5 kernels were slower and keep the paths below).
  if (C <= 2 && g.stride_h == 1 && g.stride_w == 1 && g.FH * g.FW <= 9 && cfg.smallc_dx != nullptr)
    return BackwardInputKernel::SmallC;
  // A kernel over ~1 MiB: dY.W by gemm() and col2im, in blocks of images.
  if (!kernel_fits_cache<T>(g)) return BackwardInputKernel::Col2imGemm;
  // Stride 1: dX is the forward convolution of dY padded by F-1-P with the flipped kernel
  // (the design document's formula, dilation 1). Where the forward would run its direct kernel
  // on that geometry (small depth FH*FW*Q or a panel that fits, e.g. 5x5 on 16 channels), dX
  // runs it too: measured 9.2 -> ~2 ms at (4,96,96,16->16, 5x5) against the phases GEMM; where
  // it would run the indirect kernel, dX runs that (no im2col of dY).
  if (conv_detail::flipped_applies(g)) {
    const Conv2dGeometry gf = conv_detail::flipped_geometry(g);
    const ForwardKernel fk = select_forward(gf, cfg, /*few_rows_gemm=*/false);
    if (fk == ForwardKernel::Direct) return BackwardInputKernel::FlippedDirect;
    if (fk == ForwardKernel::Indirect) return BackwardInputKernel::FlippedIndirect;
    // Few channels (dX's filters): the narrow forward on it. Measured against the kernel
    // chosen before, AVX-512 / AVX2, 2 threads (ms): (16,16,16,8->64) phases 0.45 -> 0.20 /
    // (Winograd 0.15), (8,56,56,6->24) phases 1.14 -> 0.59 / 1.29 -> 0.53, (8,32,32,4->32)
    // col2im 0.22 -> 0.12 / 0.24 -> 0.14, (8,28,28,8->16) phases 0.24 -> 0.13.
    if (fk == ForwardKernel::Narrow) return BackwardInputKernel::FlippedNarrow;
  }
  // Strided, channels filling the register tile: each phase as a direct convolution of a
  // zero-padded copy of dY with its sub-kernel (backward_input_phases_direct, no gather), when
  // the largest sub-kernel's panel stays within 256 KiB (as the indirect forward's), and the
  // copy is about dY's size (its padding is below the kernel's size). Measured (16,32,32,32->64,
  // 3x3, S 2): phases 0.74-0.76 -> 0.54 ms; (4,33,31,24->40, 4x4, S 3): 0.24 -> 0.10 ms. Panels
  // of 72-256 KiB (AVX-512, 2 threads, ms, phases -> phases_direct): (2,64,64,32->64, 5x5)
  // 1.45 -> 0.88, (8,32,32,64->64, 5x5) 2.67 -> 2.09, (4,64,64,32->128, 7x7) 10.6 -> 8.2;
  // AVX2: 1.85 -> 1.46, 3.53 -> 2.68, 13.1 -> 11.8. (The limit was 64 KiB, the direct forward's.)
  // Except where dY.W by gemm() and col2im (Col2imGemm) measured faster: at least as many
  // filters as channels (the GEMM's depth Q) and either narrow images (dY rows of <= 12 pixels,
  // which the direct tile's blocks of 12-14 pixels cover badly) with Q >= 64, or 3x3 kernels
  // with Q >= 96 on images up to 64 wide (beyond, col2im's traffic costs more than it saves).
  // AVX-512, 2 threads (ms, phases_direct -> col2im_gemm): (16,14,14,64->64) 0.43 -> 0.29,
  // (8,14,14,128->128) 1.10 -> 0.52, (8,24,24,64->64) 0.51 -> 0.45, (8,14,14,64->64, 5x5)
  // 0.62 -> 0.46, (8,32,32,64->128) 1.65 -> 1.39, (8,32,32,48->96) 1.12 -> 0.81,
  // (8,56,56,64->128) 4.61 -> 4.38, (1,56,56,64->128) 0.73 -> 0.56, (8,32,32,16->256) 1.19 ->
  // 0.58, (2,16,16,16->512) 0.36 -> 0.14 (0.88 by the phase gather GEMMs); kept: (16,32,32,32->64)
  // 0.72 vs 0.82, (8,56,56,64->64) 2.48 vs 3.14, (8,28,28,128->96) 1.94 vs 2.28,
  // (4,112,112,64->128) 10.5 vs 11.7, (16,14,14,32->16) 0.078 vs 0.095. AVX2 (Xeon held to
  // AVX2): (8,14,14,128->128) 1.50 -> 0.84, (8,32,32,48->96) 1.37 -> 1.31, the rest even.
  // Also 3-4 channels (3/8 of an AVX2 vector or more) under at most 8 filters (4 in double) on
  // the 1-vector tiles (use_direct_one): the GEMM below would run dY.W at a depth of Q, writing
  // FH*FW*C values per pixel for Q multiply-adds each. 2 threads, C++, ms, col2im ->
  // phases_direct, AVX2 / AVX-512: (8,112,112,3->8, 7x7 S 2) 1.54 -> 0.88 / 1.48 -> 0.90,
  // (8,112,112,4->8) 1.96 -> 0.91 / 1.79 -> 0.92, (8,64,64,4->8, 5x5 S 2) 0.33 -> 0.21 either
  // level; even at 12 filters (1.82 vs 1.79 / 1.51 vs 1.58), lost from 16 ((8,112,112,3->32)
  // 2.62 -> 3.20 / 2.25 -> 3.19, (8,112,112,3->16, 3x3) 0.47 -> 0.50).
  const bool few_phase_channels = conv_detail::use_direct_one(cfg, C) && C * 8 >= 3 * cfg.NR_direct_one &&
                                  g.Q <= cfg.NR_direct_one;
  if ((g.stride_h > 1 || g.stride_w > 1) && (C * 4 > cfg.NR || few_phase_channels)) {
    const int64_t Kmax = (g.FH + g.stride_h - 1) / g.stride_h * ((g.FW + g.stride_w - 1) / g.stride_w) * g.Q;
    const bool fits = Kmax <= cfg.KC || conv_detail::panel_fits<T>(Kmax, cfg.NR);
    if (fits) {
      // (Only where one image's dY.W rows stay within a block of col2im_gemm: a tall, narrow
      // image would otherwise make one block of any size.)
      const bool image_block_fits =
          saturating_mul(saturating_mul(g.Ho, g.Wo), saturating_mul(Kfull, static_cast<int64_t>(sizeof(T)))) <=
          conv_detail::kGemmPathBlockBytes;
      if (image_block_fits && g.Q >= C &&
          ((g.Q >= 64 && g.Wo <= 12) || (g.Q >= 96 && g.W <= 64 && g.FH * g.FW <= 9)))
        return BackwardInputKernel::Col2imGemm;
      if (conv_detail::padded_copy_is_small(g, saturating_add(g.Ho, 2 * g.FH),
                                            saturating_mul(saturating_add(g.Wo, 2 * g.FW), g.Q)))
        return BackwardInputKernel::PhasesDirect;
    }
  }
  // Few channels (a panel of NR columns would be mostly empty): dY.W GEMM + col2im, when the
  // dY.W buffer N*Ho*Wo*FH*FW*C stays below 2^26 values.
  int64_t col_values = 0;
  if (C * 4 <= cfg.NR && Kfull * 4 > cfg.NR && product_fits({g.N, g.Ho, g.Wo, Kfull}, col_values) &&
      col_values <= (int64_t{1} << 26))
    return BackwardInputKernel::Col2im;
  return BackwardInputKernel::Phases;
}

/// Kernel-gradient kernel for g with the kernels cfg.
template <typename T>
inline BackwardWeightKernel select_backward_weight(const Conv2dGeometry& g,
                                                   const conv_detail::ConvKernels<T>& cfg) {
  // [WINOGRAD] 3x3 or 5x5, stride 1: the adjoint of the forward's Winograd F(m x m, r x r) when forced,
  // or for Auto with enough channels (winograd_preferred_weight; measured crossover).
  if (use_winograd_weight<T>(g)) return BackwardWeightKernel::Winograd;
  // Narrow, Direct and SmallC read a zero-padded copy of the input; only where it is about the
  // input's size. (Sizes saturate: a huge padding makes the copy "not small", never an overflow.)
  const bool padded_copy_small = conv_detail::padded_copy_is_small(
      g, saturating_add(g.H, saturating_add(g.pad_top, g.pad_bottom)),
      saturating_mul(saturating_add(g.W, saturating_add(g.pad_left, g.pad_right)), g.C));
  // Few filters (at most half the tile's width, as the narrow forward) and kernel-row runs of
  // at least 12 values: backward_weight_narrow (narrow.h), vectors along the runs of a padded
  // copy, dY broadcast. Measured against the kernel chosen before (2 threads, Xeon, ms,
  // AVX-512 / AVX2): (4,64,64,32->3) 0.58 -> 0.25 / 0.87 -> 0.36, (4,64,64,64->1) 1.21 ->
  // 0.41 / 1.79 -> 0.56, (8,28,28,64->8) 0.47 -> 0.28 / 0.74 -> 0.58, (8,56,56,64->4, 1x1)
  // 0.48 -> 0.31 / 0.54 -> 0.44, (8,14,14,256->4) 1.37 -> 0.19, (4,64,64,4->2) 0.071 ->
  // 0.063; double (8,28,28,64->4) 0.58 -> 0.38 / 0.83 -> 0.72. Not shorter runs: small-C
  // (4,64,64,3->4), runs of 9, 0.063 vs 0.079. A 1x1 only with 1-2 filters or Q C <= 512 at
  // AVX-512, 64 below, beyond which the GEMM (its 8 x 1-vector tiles) wins ((8,56,56,C->Q),
  // narrow vs GEMM: AVX-512 128->8 0.76 vs 0.67, but 64->8 0.40 vs 0.43, 128->4 0.68 vs 0.70;
  // AVX2 16->4 0.12 vs 0.14, 32->2 0.24 vs 0.26, but 32->4 0.250 vs 0.251, 16->8 0.15 vs 0.13,
  // 64->4 0.48 vs 0.45).
  if (g.Q * 2 <= cfg.NR && g.FW * g.C >= 12 &&
      (!conv_detail::is_pointwise(g) || g.Q <= 2 || g.Q * g.C <= (cfg.level >= SimdLevel::AVX512 ? 512 : 64)) &&
      padded_copy_small)
    return BackwardWeightKernel::Narrow;
  // 1x1 without padding: dW = dY^T X, a plain GEMM.
  if (conv_detail::is_pointwise(g) && g.C > 4) return BackwardWeightKernel::Pointwise;
  // A kernel over ~1 MiB: blocks of im2col rows and gemm() (no per-chunk partial sums).
  if (!kernel_fits_cache<T>(g)) return BackwardWeightKernel::Im2colGemm;
  // No im2col: the padded input read in place (backward_weight_direct: per kernel row a GEMM
  // over the pixels whose columns are the pixels' runs of FW*C values, through the column
  // kernel's pointer per step, or per output row at a fixed stride for long rows), when
  // blocks of MR rows (the last of MR_tail) cover a kernel row's FW*C values with at most 25%
  // waste. Measured
  // against the im2col GEMM (2 threads, Zen 5; ms):
  //   (4,96,96,16->16, 5x5)   2.1-2.2 -> 1.6-1.7  (AVX2: 3.2 -> 2.4)
  //   (8,64,64,3->32, 7x7 S2)  smallc 0.50 -> 0.24  (AVX2: equal)
  //   (8,28,28,128->256, S2)  5.0 -> 3.7-3.9;  (16,32,32,32->64, S2) 0.50-0.70 -> 0.46-0.50
  //   1 thread: (8,56,56,64->64) 10.9 -> 10.1, (32,16,16,48->96, unpadded) 2.86 -> 2.73
  // But from 128 channels over at most 4096 pixels, im2col + gemm() first: the direct kernel's
  // ~16 partial sums of the whole kernel cost more than its reads in place save when the sum
  // over pixels is short (AVX-512, 2 threads, ms, direct -> im2col_gemm): (1,28,28,128->128)
  // 1.48 -> 1.17, (8,14,14,128->128, S2) 0.92 -> 0.57, (4,28,28,160->160, S2) 2.52 -> 1.86,
  // (2,16,16,128->64, S2) 0.22 -> 0.11, (1,56,56,128->128) 4.41 -> 4.15; AVX2 2.21 -> 1.84,
  // 1.29 -> 0.90, 3.84 -> 2.92, 0.32 -> 0.17. Not beyond: (8,28,28,128->64) 4.13 vs 5.93;
  // nor below 128 channels: (1,56,56,64->64) 1.09 vs 1.77, (1,40,40,96->96) 1.16 vs 1.42.
  // Past 3x3 only where Q >= C: 5x5 with fewer filters than channels keeps the direct kernel
  // ((4,16,16,128->64) 1.78 vs 2.79, (8,14,14,128->64) 2.89 vs 3.84, (2,16,16,160->64) 1.16 vs
  // 1.75; but (2,28,28,128->128) 5.94 vs 5.69, (4,8,8,128->128) 2.01 vs 1.06).
  // And only over at most 8 Q pixels: im2col writes and reads back K values per pixel for Q
  // multiply-adds each, so with few filters the copy costs more than the partials
  // (AVX-512, 2 threads, ms, im2col_gemm -> direct): (8,32,32,512->32, S2) 5.95 -> 2.63,
  // (8,32,32,768->24, S2) 8.76 -> 4.22, (8,14,14,128->32, S2) 0.184 -> 0.144; AVX2 7.92 ->
  // 3.83, 0.267 -> 0.215; about even from 16 Q: (4,28,28,192->48, S2) 0.69 vs 0.72 / AVX2 1.04
  // vs 0.92, (16,16,16,384->64, S2) 1.93 vs 1.85, (8,28,28,256->64, S2) 2.02 vs 1.99; kept
  // below 8 Q: (4,16,16,512->48, S2) 0.64 vs 1.55, (2,16,16,128->64, S2) 0.083 vs 0.156;
  // given up: (1,56,56,128->128), 24.5 Q, 4.15 vs 4.41 (Winograd's in Auto).
  const int64_t dw_pixels = saturating_mul(g.N, saturating_mul(g.Ho, g.Wo));
  if (g.C >= 128 && dw_pixels <= std::min<int64_t>(4096, saturating_mul(8, g.Q)) && (g.FH * g.FW <= 9 || g.Q >= g.C))
    return BackwardWeightKernel::Im2colGemm;
  // With more than 4 channels, whatever its rows' padding: the GEMM below pads its depth
  // FH*FW*C to whole tiles too, and packs an im2col copy besides. Measured where the padding
  // passed 25% (2 threads, Xeon, ms, gemm -> direct, AVX-512 / AVX2): (8,56,56,6->24, 3x3)
  // 0.80 -> 0.41 / (AVX2 already direct), (8,56,56,6->16) 0.49 -> 0.19, (8,56,56,6->24, S 2)
  // 0.21 -> 0.16, (8,56,56,5->24, 3x1) 0.50 -> 0.35, (8,56,56,5->40, 3x1) 0.64 -> 0.47,
  // (8,56,56,6->24, 2x2) 0.40 -> 0.36, (8,56,56,9->24, 2x1) 0.42 -> 0.39 / 0.40 -> 0.37.
  // At most 4 channels keep the padding limit (the small-C kernel below takes the rest).
  const int64_t len = g.FW * g.C;  // a kernel row: fits, the kernel is allocated
  if ((g.C > 4 || conv_detail::direct_dw_rows(cfg, len) * 4 <= len * 5) && padded_copy_small)
    return BackwardWeightKernel::Direct;
  // Few input channels: register accumulators straight from a zero-padded copy of the input,
  // when that copy is about the input's size.
  if (g.C <= 4 && g.N * g.Ho > 0 && padded_copy_small)
    return BackwardWeightKernel::SmallC;
  return BackwardWeightKernel::Gemm;
}

/// The names of the kernels the three passes would run for g now (current SIMD level and
/// algorithm setting), for benchmarks and tests.
struct ConvKernelChoice {
  const char* forward;
  const char* backward_input;
  const char* backward_weight;
};
template <typename T>
inline ConvKernelChoice conv_kernel_choice(const Conv2dGeometry& g) {
  return {kernel_name(select_forward(g, conv_kernels_for_width<T>(g.Q))),
          kernel_name(select_backward_input(g, conv_kernels_for_width<T>(g.C))),
          kernel_name(select_backward_weight(g, conv_kernels_for_width<T>(g.Q, /*weight=*/true)))};
}

// ============================================================================================
// Entry points.
// ============================================================================================

/// y = conv(x, w) + bias (bias may be nullptr):
///   Y[n, ho, wo, q] = b[q] + sum_{(fh,fw,c)} X[n, ho*S_h+fh-pt, wo*S_w+fw-pl, c] * W[q, fh, fw, c]
/// multithreaded, bitwise identical for any thread count.
template <typename T>
void conv2d_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const auto cfg = conv_kernels_for_width<T>(g.Q);
  switch (select_forward(g, cfg)) {
    case ForwardKernel::Pointwise: conv_detail::forward_pointwise(g, x, w, bias, y); return;
    case ForwardKernel::Direct: conv_detail::forward_direct(cfg, g, x, w, bias, y); return;
    case ForwardKernel::Indirect: conv_detail::forward_indirect(cfg, g, x, w, bias, y); return;
    case ForwardKernel::Gemm: conv_detail::forward_gemm(g, x, w, bias, y, gemm_rows_in_place<T>(g)); return;
    case ForwardKernel::Winograd: winograd_conv2d_forward(g, x, w, bias, y); return;
    case ForwardKernel::Narrow:
      conv_detail::forward_narrow(conv_detail::narrow_kernels<T>(cfg.level, g.Q), g, x, w, bias, y);
      return;
  }
}

/// dX from dY (the document's crop(pad(dilate(dY)) * flip_kernel(W)), without the zeros).
template <typename T>
void conv2d_backward_input(const Conv2dGeometry& g, const T* dy, const T* w, T* dx) {
  const auto cfg = conv_kernels_for_width<T>(g.C);
  switch (select_backward_input(g, cfg)) {
    case BackwardInputKernel::Pointwise: conv_detail::backward_input_pointwise(g, dy, w, dx); return;
    case BackwardInputKernel::SmallC: conv_detail::backward_input_smallc(cfg, g, dy, w, dx); return;
    case BackwardInputKernel::Col2im: conv_detail::backward_input_col2im(cfg, g, dy, w, dx); return;
    case BackwardInputKernel::Col2imGemm: conv_detail::backward_input_col2im_gemm(g, dy, w, dx); return;
    case BackwardInputKernel::Phases: conv_detail::backward_input_phases(cfg, g, dy, w, dx); return;
    case BackwardInputKernel::Winograd: winograd_conv2d_backward_input(g, dy, w, dx); return;
    case BackwardInputKernel::FlippedDirect:
      conv_detail::backward_input_flipped(cfg, g, dy, w, dx, conv_detail::FlippedBy::Direct);
      return;
    case BackwardInputKernel::FlippedIndirect:
      conv_detail::backward_input_flipped(cfg, g, dy, w, dx, conv_detail::FlippedBy::Indirect);
      return;
    case BackwardInputKernel::FlippedNarrow:
      conv_detail::backward_input_flipped(cfg, g, dy, w, dx, conv_detail::FlippedBy::Narrow);
      return;
    case BackwardInputKernel::PhasesDirect: conv_detail::backward_input_phases_direct(cfg, g, dy, w, dx); return;
  }
}

/// dW (and db = sum of dY when db != nullptr) from X and dY.
template <typename T>
void conv2d_backward_weight(const Conv2dGeometry& g, const T* x, const T* dy, T* dw, T* db) {
  const auto cfg = conv_kernels_for_width<T>(g.Q, /*weight=*/true);
  switch (select_backward_weight(g, cfg)) {
    case BackwardWeightKernel::Pointwise: conv_detail::backward_weight_pointwise(g, x, dy, dw, db); return;
    case BackwardWeightKernel::SmallC: conv_detail::backward_weight_smallc(cfg, g, x, dy, dw, db); return;
    case BackwardWeightKernel::Gemm: conv_detail::backward_weight_gemm(cfg, g, x, dy, dw, db); return;
    case BackwardWeightKernel::Im2colGemm: conv_detail::backward_weight_im2col_gemm(g, x, dy, dw, db); return;
    case BackwardWeightKernel::Direct: conv_detail::backward_weight_direct(cfg, g, x, dy, dw, db); return;
    case BackwardWeightKernel::Narrow:
      conv_detail::backward_weight_narrow(conv_detail::narrow_dw_kernels<T>(cfg.level), g, x, dy, dw, db);
      return;
    case BackwardWeightKernel::Winograd:
      winograd_conv2d_backward_weight(g, x, dy, dw);
      if (db) conv_detail::bias_gradient(g.N * g.Ho * g.Wo, g.Q, dy, db);
      return;
  }
}

// The entry points compiled once per program (NABLAGRAD_EXTERN_KERNEL_INSTANCES, gemm.h).
#define NABLAGRAD_CONV2D_INSTANCES(PREFIX, T)                                                 \
  PREFIX void conv2d_forward<T>(const Conv2dGeometry&, const T*, const T*, const T*, T*);     \
  PREFIX void conv2d_backward_input<T>(const Conv2dGeometry&, const T*, const T*, T*);        \
  PREFIX void conv2d_backward_weight<T>(const Conv2dGeometry&, const T*, const T*, T*, T*);
NABLAGRAD_EXTERN_KERNEL_INSTANCES(NABLAGRAD_CONV2D_INSTANCES)

}  // namespace kernels
}  // namespace nablagrad
