// nablagrad/kernels/vmath.h - float32 exp, erf, tanh, sigmoid and GELU over arrays.
//
// Polynomial approximations evaluated 8 lanes at a time with AVX2+FMA or 16 with AVX-512F
// (the same operations lane for lane, so both levels agree bitwise; chosen at run time
// through simd_level(), see simd.h), and the same approximations in scalar C++ for the
// portable level. Accuracy against double-precision std:: functions (tests/cpp/test_vmath.cpp
// sweeps dense grids):
//   exp:  Cephes range reduction x = n ln2 + r (Cody-Waite split of ln2), degree-6
//         polynomial in r, scaling by 2^n in two steps so that subnormal results come out
//         right. Max relative error about 1.2e-7 (~1 ulp).
//   erf:  for |x| < 1 the odd/even rational approximation x P(x^2) / Q(x^2) that Eigen and
//         XLA use; for |x| >= 1, 1 - erfc(|x|) with erfc(z) = t exp(-z^2 + P(t)),
//         t = 1 / (1 + z/2) (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
//   tanh: x + x^3 P(x^2) (Cephes tanhf) for |x| < 0.625, else sign(x) (1 - 2 / (exp(2|x|) + 1)).
//   sigmoid: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, with e = exp(-|x|).
// Special values follow std::: exp(+inf) = inf, exp(-inf) = 0, overflow gives inf,
// underflow gives subnormals then 0; erf(+-inf) = +-1; tanh saturates at +-1; NaN in, NaN out.
//
// Every element is computed by the same code whatever its position (array tails run the
// vector code on a padded copy), so splitting an array between threads never changes results.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace nablagrad {
namespace kernels {

/// The elementwise maps vmath provides. The *Der entries are derivatives in terms of the input.
enum class VOp : int { None = 0, Exp, Erf, Tanh, Sigmoid, Gelu, GeluDer, GeluTanh, GeluTanhDer };

namespace vmath_detail {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpLo = -104.0f, kExpHi = 89.0f;  // exp is 0 / inf beyond these
constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f,
                kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;
constexpr float kErfA1 = -1.60960333262415e-02f, kErfA3 = -2.95459980854025e-03f, kErfA5 = -7.34990630326855e-04f,
                kErfA7 = -5.69250639462346e-05f, kErfA9 = -2.10102402082508e-06f, kErfA11 = 2.77068142495902e-08f,
                kErfA13 = -2.72614225801306e-10f;
constexpr float kErfB0 = -1.42647390514189e-02f, kErfB2 = -7.37332916720468e-03f, kErfB4 = -1.68282697438203e-03f,
                kErfB6 = -2.13374055278905e-04f, kErfB8 = -1.45660718464996e-05f;
// erfc(z) ~ t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), for z >= kErfSplit (Numerical Recipes' erfcc,
// relative error < 1.2e-7); erf = 1 - erfc there.
constexpr float kErfSplit = 1.0f;
constexpr float kErfcC0 = -1.26551223f, kErfcC1 = 1.00002368f, kErfcC2 = 0.37409196f, kErfcC3 = 0.09678418f,
                kErfcC4 = -0.18628806f, kErfcC5 = 0.27886807f, kErfcC6 = -1.13520398f, kErfcC7 = 1.48851587f,
                kErfcC8 = -0.82215223f, kErfcC9 = 0.17087277f;
constexpr float kTanhP0 = -5.70498872745e-3f, kTanhP1 = 2.06390887954e-2f, kTanhP2 = -5.37397155531e-2f,
                kTanhP3 = 1.33314422036e-1f, kTanhP4 = -3.33332819422e-1f;
constexpr float kTanhSmall = 0.625f;
constexpr float kInvSqrt2 = 0.70710678118654752440f, kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kGeluK = 0.79788456080286535588f, kGeluC = 0.044715f;  // sqrt(2/pi), tanh-approximation cubic

inline float pow2i(int k) {  // 2^k for k in [-126, 127]
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace vmath_detail

// ---------------------------------------------------------------------------------------
// Scalar versions (the portable level, and the reference for the AVX2 lanes).
// ---------------------------------------------------------------------------------------
inline float vexp_scalar(float x) {
  using namespace vmath_detail;
  const float x0 = x;
  x = x != x ? 0.0f : std::min(std::max(x, kExpLo), kExpHi);  // selects, no branches: loops vectorise
  // floor(x log2e + 1/2) without a libm call (t lies in [-150, 129])
  const float t = x * kLog2e + 0.5f;
  int ni = static_cast<int>(t);
  ni -= static_cast<int>(static_cast<float>(ni) > t);  // no branch: t's sign is unpredictable
  const float n = static_cast<float>(ni);
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kExpP0;
  p = p * r + kExpP1;
  p = p * r + kExpP2;
  p = p * r + kExpP3;
  p = p * r + kExpP4;
  p = p * r + kExpP5;
  p = p * (r * r) + r + 1.0f;
  const int n1 = ni / 2, n2 = ni - n1;  // n in [-150, 129]: both halves in range
  const float y = p * pow2i(n1) * pow2i(n2);
  return x0 != x0 ? x0 : y;
}

inline float verf_scalar(float x) {
  // Both branches are evaluated and one selected, as the vector code does (no mispredictions).
  using namespace vmath_detail;
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.5f * a);
  float c = kErfcC9;
  c = c * t + kErfcC8;
  c = c * t + kErfcC7;
  c = c * t + kErfcC6;
  c = c * t + kErfcC5;
  c = c * t + kErfcC4;
  c = c * t + kErfcC3;
  c = c * t + kErfcC2;
  c = c * t + kErfcC1;
  c = c * t + kErfcC0;
  const float big = std::copysign(1.0f - t * vexp_scalar(c - a * a), x);
  const float x2 = x * x;
  float p = kErfA13;
  p = p * x2 + kErfA11;
  p = p * x2 + kErfA9;
  p = p * x2 + kErfA7;
  p = p * x2 + kErfA5;
  p = p * x2 + kErfA3;
  p = p * x2 + kErfA1;
  p = p * x;
  float q = kErfB8;
  q = q * x2 + kErfB6;
  q = q * x2 + kErfB4;
  q = q * x2 + kErfB2;
  q = q * x2 + kErfB0;
  const float small = p / q;
  return a >= kErfSplit ? big : small;  // NaN: small is NaN
}

inline float vtanh_scalar(float x) {
  using namespace vmath_detail;
  const float a = std::fabs(x);
  const float x2 = x * x;
  float p = kTanhP0;
  p = p * x2 + kTanhP1;
  p = p * x2 + kTanhP2;
  p = p * x2 + kTanhP3;
  p = p * x2 + kTanhP4;
  const float small = (p * x2) * x + x;
  const float big = std::copysign(1.0f - 2.0f / (vexp_scalar(2.0f * a) + 1.0f), x);
  return a < kTanhSmall ? small : big;  // NaN: big is NaN
}

inline float vsigmoid_scalar(float x) {  // NaN: e is NaN
  const float e = vexp_scalar(-std::fabs(x));
  const float r = 1.0f / (1.0f + e);
  return x >= 0.0f ? r : e * r;
}

inline float vgelu_scalar(float x) { return 0.5f * x * (1.0f + verf_scalar(x * vmath_detail::kInvSqrt2)); }

inline float vgelu_der_scalar(float x) {
  using namespace vmath_detail;
  return 0.5f * (1.0f + verf_scalar(x * kInvSqrt2)) + x * kInvSqrt2Pi * vexp_scalar(-0.5f * x * x);
}

inline float vgelu_tanh_scalar(float x) {
  using namespace vmath_detail;
  return 0.5f * x * (1.0f + vtanh_scalar(kGeluK * (x + kGeluC * x * x * x)));
}

inline float vgelu_tanh_der_scalar(float x) {
  using namespace vmath_detail;
  const float t = vtanh_scalar(kGeluK * (x + kGeluC * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluK * (1.0f + 3.0f * kGeluC * x * x);
}

inline float vop_scalar(VOp op, float x) {
  switch (op) {
    case VOp::Exp: return vexp_scalar(x);
    case VOp::Erf: return verf_scalar(x);
    case VOp::Tanh: return vtanh_scalar(x);
    case VOp::Sigmoid: return vsigmoid_scalar(x);
    case VOp::Gelu: return vgelu_scalar(x);
    case VOp::GeluDer: return vgelu_der_scalar(x);
    case VOp::GeluTanh: return vgelu_tanh_scalar(x);
    case VOp::GeluTanhDer: return vgelu_tanh_der_scalar(x);
    case VOp::None: break;
  }
  return x;
}

// ---------------------------------------------------------------------------------------
// AVX2+FMA versions, 8 lanes.
// ---------------------------------------------------------------------------------------
#if NABLAGRAD_X86 && (defined(__GNUC__) || defined(__clang__))
#define NABLAGRAD_VMATH_AVX2 1
// No FMA contraction in the vector code. GCC implements _mm256_mul_ps / _mm256_add_ps (and the
// 512-bit ones) as plain vector `*` and `+`, so under its default -ffp-contract=fast it may fuse
// a mul feeding an add into one FMA, or not, depending on the surrounding code after inlining:
// the ASan+UBSan build did so differently in map_avx2's main loop and its tail, and GELU-tanh
// then depended (by one ulp) on where an element sat in the array. With contraction off every
// _mm*_mul/add is one rounded operation and the explicit _mm*_fmadd are the only FMAs, in every
// build. (Clang contracts only within one source expression, never across intrinsics.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define NABLAGRAD_VMATH_POP_OPTIONS 1
#endif
namespace vmath_detail {
#define NABLAGRAD_AVX2_FN __attribute__((target("avx2,fma"))) inline

NABLAGRAD_AVX2_FN __m256 is_nan8(__m256 x) { return _mm256_cmp_ps(x, x, _CMP_UNORD_Q); }
NABLAGRAD_AVX2_FN __m256 pow2i8(__m256i k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

NABLAGRAD_AVX2_FN __m256 exp8(__m256 x0) {
  const __m256 x = _mm256_min_ps(_mm256_max_ps(x0, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvttps_epi32(n);  // n is integral already
  // n / 2 rounded toward zero, as the scalar code's integer division
  const __m256i n1 = _mm256_srai_epi32(_mm256_add_epi32(ni, _mm256_srli_epi32(ni, 31)), 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, pow2i8(n1)), pow2i8(n2));
  return _mm256_blendv_ps(y, x0, is_nan8(x0));
}

NABLAGRAD_AVX2_FN __m256 erf8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  // |x| < kErfSplit: rational approximation
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kErfA13);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA11));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA9));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA7));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA5));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA3));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfA1));
  p = _mm256_mul_ps(p, x);
  __m256 q = _mm256_set1_ps(kErfB8);
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfB6));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfB4));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfB2));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfB0));
  const __m256 small = _mm256_div_ps(p, q);
  // |x| >= kErfSplit: 1 - erfc(|x|), with the sign of x
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), a, one));
  __m256 c = _mm256_set1_ps(kErfcC9);
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC8));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC7));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC6));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC5));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC4));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC3));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC2));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC1));
  c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(kErfcC0));
  const __m256 big = _mm256_fnmadd_ps(t, exp8(_mm256_fnmadd_ps(a, a, c)), one);
  const __m256 big_signed = _mm256_or_ps(big, _mm256_and_ps(sign, x));
  const __m256 y = _mm256_blendv_ps(small, big_signed, _mm256_cmp_ps(a, _mm256_set1_ps(kErfSplit), _CMP_GE_OQ));
  return _mm256_blendv_ps(y, x, is_nan8(x));
}

NABLAGRAD_AVX2_FN __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign, x);
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kTanhP0);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhP1));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhP2));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhP3));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kTanhP4));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, x2), x, x);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp8(_mm256_add_ps(a, a));
  const __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
  const __m256 big_signed = _mm256_or_ps(big, _mm256_and_ps(sign, x));
  const __m256 y = _mm256_blendv_ps(big_signed, small, _mm256_cmp_ps(a, _mm256_set1_ps(kTanhSmall), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, x, is_nan8(x));
}

NABLAGRAD_AVX2_FN __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));  // exp(-|x|)
  const __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
  const __m256 y = _mm256_blendv_ps(_mm256_mul_ps(e, r), r, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_blendv_ps(y, x, is_nan8(x));
}

NABLAGRAD_AVX2_FN __m256 gelu8(__m256 x) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2)));
  return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

NABLAGRAD_AVX2_FN __m256 gelu_der8(__m256 x) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 cdf = _mm256_mul_ps(half, _mm256_add_ps(_mm256_set1_ps(1.0f), erf8(_mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2)))));
  const __m256 pdf = exp8(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-0.5f), x), x));
  return _mm256_add_ps(cdf, _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2Pi)), pdf));
}

NABLAGRAD_AVX2_FN __m256 gelu_tanh_inner8(__m256 x) {  // tanh(k (x + c x^3))
  const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kGeluC), x), x), x);
  return tanh8(_mm256_mul_ps(_mm256_set1_ps(kGeluK), _mm256_add_ps(x, x3)));
}

NABLAGRAD_AVX2_FN __m256 gelu_tanh8(__m256 x) {
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), gelu_tanh_inner8(x)));
}

NABLAGRAD_AVX2_FN __m256 gelu_tanh_der8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 t = gelu_tanh_inner8(x);
  const __m256 a = _mm256_mul_ps(half, _mm256_add_ps(one, t));
  const __m256 sech2 = _mm256_sub_ps(one, _mm256_mul_ps(t, t));
  const __m256 poly = _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(3.0f * kGeluC), x), x));
  const __m256 b = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(half, x), sech2), _mm256_set1_ps(kGeluK)), poly);
  return _mm256_add_ps(a, b);
}

NABLAGRAD_AVX2_FN __m256 vop8(VOp op, __m256 x) {
  switch (op) {
    case VOp::Exp: return exp8(x);
    case VOp::Erf: return erf8(x);
    case VOp::Tanh: return tanh8(x);
    case VOp::Sigmoid: return sigmoid8(x);
    case VOp::Gelu: return gelu8(x);
    case VOp::GeluDer: return gelu_der8(x);
    case VOp::GeluTanh: return gelu_tanh8(x);
    case VOp::GeluTanhDer: return gelu_tanh_der8(x);
    case VOp::None: break;
  }
  return x;
}

// y[i] = op(x[i]), or g[i] * op(x[i]) when g is given. The switch sits outside the loops.
template <VOp OP>
NABLAGRAD_AVX2_FN void map_avx2(const float* g, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = vop8(OP, _mm256_loadu_ps(x + i));
    if (g != nullptr) v = _mm256_mul_ps(_mm256_loadu_ps(g + i), v);
    _mm256_storeu_ps(y + i, v);
  }
  if (i < n) {  // the tail through the same vector code, on a zero-padded copy
    alignas(32) float xb[8] = {0, 0, 0, 0, 0, 0, 0, 0}, gb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const std::size_t bytes = static_cast<std::size_t>(n - i) * sizeof(float);
    std::memcpy(xb, x + i, bytes);
    __m256 v = vop8(OP, _mm256_load_ps(xb));
    if (g != nullptr) {
      std::memcpy(gb, g + i, bytes);
      v = _mm256_mul_ps(_mm256_load_ps(gb), v);
    }
    _mm256_store_ps(xb, v);
    std::memcpy(y + i, xb, bytes);
  }
}
#undef NABLAGRAD_AVX2_FN

inline void map_avx2_dispatch(VOp op, const float* g, const float* x, float* y, int64_t n) {
  switch (op) {
    case VOp::Exp: return map_avx2<VOp::Exp>(g, x, y, n);
    case VOp::Erf: return map_avx2<VOp::Erf>(g, x, y, n);
    case VOp::Tanh: return map_avx2<VOp::Tanh>(g, x, y, n);
    case VOp::Sigmoid: return map_avx2<VOp::Sigmoid>(g, x, y, n);
    case VOp::Gelu: return map_avx2<VOp::Gelu>(g, x, y, n);
    case VOp::GeluDer: return map_avx2<VOp::GeluDer>(g, x, y, n);
    case VOp::GeluTanh: return map_avx2<VOp::GeluTanh>(g, x, y, n);
    case VOp::GeluTanhDer: return map_avx2<VOp::GeluTanhDer>(g, x, y, n);
    case VOp::None: break;
  }
}

// ---------------------------------------------------------------------------------------
// AVX-512F versions, 16 lanes: the AVX2 code lane for lane (same operations in the same
// order, exact floor and division), so their results equal the AVX2 level's bitwise.
// ---------------------------------------------------------------------------------------
#define NABLAGRAD_AVX512_FN __attribute__((target("avx512f,avx2,fma"))) inline
// The all-lanes mask: the maskz_ forms of max, min, shifts, ... avoid GCC 12's false
// -Wmaybe-uninitialized on the _mm512_undefined_*() inside the unmasked intrinsics.
constexpr __mmask16 kAll16 = 0xFFFF;
NABLAGRAD_AVX512_FN __m512 and_16(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
NABLAGRAD_AVX512_FN __m512 andnot_16(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_maskz_andnot_epi32(kAll16, _mm512_castps_si512(a), _mm512_castps_si512(b)));
}
NABLAGRAD_AVX512_FN __m512 or_16(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
NABLAGRAD_AVX512_FN __m512 floor16(__m512 x) { return _mm512_maskz_roundscale_ps(kAll16, x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
// blendv semantics: lanes where `m` is set take b.
NABLAGRAD_AVX512_FN __m512 blend16(__m512 a, __m512 b, __mmask16 m) { return _mm512_mask_blend_ps(m, a, b); }
NABLAGRAD_AVX512_FN __mmask16 is_nan16(__m512 x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
NABLAGRAD_AVX512_FN __m512 pow2i16(__m512i k) {
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, _mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
}

NABLAGRAD_AVX512_FN __m512 exp16(__m512 x0) {
  const __m512 x = _mm512_maskz_min_ps(kAll16, _mm512_maskz_max_ps(kAll16, x0, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 n = floor16(_mm512_fmadd_ps(x, _mm512_set1_ps(kLog2e), _mm512_set1_ps(0.5f)));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i ni = _mm512_maskz_cvttps_epi32(kAll16, n);  // n is integral already
  // n / 2 rounded toward zero, as the scalar code's integer division
  const __m512i n1 = _mm512_maskz_srai_epi32(kAll16, _mm512_add_epi32(ni, _mm512_maskz_srli_epi32(kAll16, ni, 31)), 1);
  const __m512i n2 = _mm512_sub_epi32(ni, n1);
  const __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, pow2i16(n1)), pow2i16(n2));
  return blend16(y, x0, is_nan16(x0));
}

NABLAGRAD_AVX512_FN __m512 erf16(__m512 x) {
  const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
  const __m512 a = andnot_16(sign, x);
  // |x| < kErfSplit: rational approximation
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kErfA13);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA11));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA9));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA7));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA5));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA3));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kErfA1));
  p = _mm512_mul_ps(p, x);
  __m512 q = _mm512_set1_ps(kErfB8);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfB6));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfB4));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfB2));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kErfB0));
  const __m512 small = _mm512_div_ps(p, q);
  // |x| >= kErfSplit: 1 - erfc(|x|), with the sign of x
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.5f), a, one));
  __m512 c = _mm512_set1_ps(kErfcC9);
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC8));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC7));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC6));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC5));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC4));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC3));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC2));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC1));
  c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(kErfcC0));
  const __m512 big = _mm512_fnmadd_ps(t, exp16(_mm512_fnmadd_ps(a, a, c)), one);
  const __m512 big_signed = or_16(big, and_16(sign, x));
  const __m512 y = blend16(small, big_signed, _mm512_cmp_ps_mask(a, _mm512_set1_ps(kErfSplit), _CMP_GE_OQ));
  return blend16(y, x, is_nan16(x));
}

NABLAGRAD_AVX512_FN __m512 tanh16(__m512 x) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  const __m512 a = andnot_16(sign, x);
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kTanhP0);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhP1));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhP2));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhP3));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhP4));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, x2), x, x);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp16(_mm512_add_ps(a, a));
  const __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
  const __m512 big_signed = or_16(big, and_16(sign, x));
  const __m512 y = blend16(big_signed, small, _mm512_cmp_ps_mask(a, _mm512_set1_ps(kTanhSmall), _CMP_LT_OQ));
  return blend16(y, x, is_nan16(x));
}

NABLAGRAD_AVX512_FN __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp16(or_16(x, _mm512_set1_ps(-0.0f)));  // exp(-|x|)
  const __m512 r = _mm512_div_ps(one, _mm512_add_ps(one, e));
  const __m512 y = blend16(_mm512_mul_ps(e, r), r, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ));
  return blend16(y, x, is_nan16(x));
}

NABLAGRAD_AVX512_FN __m512 gelu16(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2)));
  return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

NABLAGRAD_AVX512_FN __m512 gelu_der16(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 cdf = _mm512_mul_ps(half, _mm512_add_ps(_mm512_set1_ps(1.0f), erf16(_mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2)))));
  const __m512 pdf = exp16(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-0.5f), x), x));
  return _mm512_add_ps(cdf, _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2Pi)), pdf));
}

NABLAGRAD_AVX512_FN __m512 gelu_tanh_inner16(__m512 x) {  // tanh(k (x + c x^3))
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kGeluC), x), x), x);
  return tanh16(_mm512_mul_ps(_mm512_set1_ps(kGeluK), _mm512_add_ps(x, x3)));
}

NABLAGRAD_AVX512_FN __m512 gelu_tanh16(__m512 x) {
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), gelu_tanh_inner16(x)));
}

NABLAGRAD_AVX512_FN __m512 gelu_tanh_der16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512 t = gelu_tanh_inner16(x);
  const __m512 a = _mm512_mul_ps(half, _mm512_add_ps(one, t));
  const __m512 sech2 = _mm512_sub_ps(one, _mm512_mul_ps(t, t));
  const __m512 poly = _mm512_add_ps(one, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(3.0f * kGeluC), x), x));
  const __m512 b = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(half, x), sech2), _mm512_set1_ps(kGeluK)), poly);
  return _mm512_add_ps(a, b);
}

NABLAGRAD_AVX512_FN __m512 vop16(VOp op, __m512 x) {
  switch (op) {
    case VOp::Exp: return exp16(x);
    case VOp::Erf: return erf16(x);
    case VOp::Tanh: return tanh16(x);
    case VOp::Sigmoid: return sigmoid16(x);
    case VOp::Gelu: return gelu16(x);
    case VOp::GeluDer: return gelu_der16(x);
    case VOp::GeluTanh: return gelu_tanh16(x);
    case VOp::GeluTanhDer: return gelu_tanh_der16(x);
    case VOp::None: break;
  }
  return x;
}

template <VOp OP>
NABLAGRAD_AVX512_FN void map_avx512(const float* g, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = vop16(OP, _mm512_loadu_ps(x + i));
    if (g != nullptr) v = _mm512_mul_ps(_mm512_loadu_ps(g + i), v);
    _mm512_storeu_ps(y + i, v);
  }
  if (i < n) {  // the tail through the same vector code, on a zero-padded copy (plain memcpy,
                // which sanitizers understand, rather than masked loads)
    alignas(64) float xb[16] = {0}, gb[16] = {0};
    const std::size_t bytes = static_cast<std::size_t>(n - i) * sizeof(float);
    std::memcpy(xb, x + i, bytes);
    __m512 v = vop16(OP, _mm512_load_ps(xb));
    if (g != nullptr) {
      std::memcpy(gb, g + i, bytes);
      v = _mm512_mul_ps(_mm512_load_ps(gb), v);
    }
    _mm512_store_ps(xb, v);
    std::memcpy(y + i, xb, bytes);
  }
}
#undef NABLAGRAD_AVX512_FN

inline void map_avx512_dispatch(VOp op, const float* g, const float* x, float* y, int64_t n) {
  switch (op) {
    case VOp::Exp: return map_avx512<VOp::Exp>(g, x, y, n);
    case VOp::Erf: return map_avx512<VOp::Erf>(g, x, y, n);
    case VOp::Tanh: return map_avx512<VOp::Tanh>(g, x, y, n);
    case VOp::Sigmoid: return map_avx512<VOp::Sigmoid>(g, x, y, n);
    case VOp::Gelu: return map_avx512<VOp::Gelu>(g, x, y, n);
    case VOp::GeluDer: return map_avx512<VOp::GeluDer>(g, x, y, n);
    case VOp::GeluTanh: return map_avx512<VOp::GeluTanh>(g, x, y, n);
    case VOp::GeluTanhDer: return map_avx512<VOp::GeluTanhDer>(g, x, y, n);
    case VOp::None: break;
  }
}
}  // namespace vmath_detail
#ifdef NABLAGRAD_VMATH_POP_OPTIONS
#pragma GCC pop_options
#undef NABLAGRAD_VMATH_POP_OPTIONS
#endif
#else
#define NABLAGRAD_VMATH_AVX2 0
#endif

namespace vmath_detail {
template <VOp OP>
inline float vop_scalar_t(float x) {
  if constexpr (OP == VOp::Exp) return vexp_scalar(x);
  if constexpr (OP == VOp::Erf) return verf_scalar(x);
  if constexpr (OP == VOp::Tanh) return vtanh_scalar(x);
  if constexpr (OP == VOp::Sigmoid) return vsigmoid_scalar(x);
  if constexpr (OP == VOp::Gelu) return vgelu_scalar(x);
  if constexpr (OP == VOp::GeluDer) return vgelu_der_scalar(x);
  if constexpr (OP == VOp::GeluTanh) return vgelu_tanh_scalar(x);
  if constexpr (OP == VOp::GeluTanhDer) return vgelu_tanh_der_scalar(x);
  return x;
}

template <VOp OP>
inline void map_portable(const float* g, const float* x, float* y, int64_t n) {
  if (g != nullptr) {
    for (int64_t i = 0; i < n; ++i) y[i] = g[i] * vop_scalar_t<OP>(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = vop_scalar_t<OP>(x[i]);
  }
}

inline void map_portable_dispatch(VOp op, const float* g, const float* x, float* y, int64_t n) {
  switch (op) {
    case VOp::Exp: return map_portable<VOp::Exp>(g, x, y, n);
    case VOp::Erf: return map_portable<VOp::Erf>(g, x, y, n);
    case VOp::Tanh: return map_portable<VOp::Tanh>(g, x, y, n);
    case VOp::Sigmoid: return map_portable<VOp::Sigmoid>(g, x, y, n);
    case VOp::Gelu: return map_portable<VOp::Gelu>(g, x, y, n);
    case VOp::GeluDer: return map_portable<VOp::GeluDer>(g, x, y, n);
    case VOp::GeluTanh: return map_portable<VOp::GeluTanh>(g, x, y, n);
    case VOp::GeluTanhDer: return map_portable<VOp::GeluTanhDer>(g, x, y, n);
    case VOp::None: break;
  }
}
}  // namespace vmath_detail

/// y[i] = op(x[i]) for i < n, at the current simd_level(). y may alias x.
inline void vmap(VOp op, const float* x, float* y, int64_t n) {
#if NABLAGRAD_VMATH_AVX2
  if (simd_at_least(SimdLevel::AVX512)) return vmath_detail::map_avx512_dispatch(op, nullptr, x, y, n);
  if (simd_at_least(SimdLevel::AVX2)) return vmath_detail::map_avx2_dispatch(op, nullptr, x, y, n);
#endif
  vmath_detail::map_portable_dispatch(op, nullptr, x, y, n);
}

/// y[i] = g[i] * op(x[i]) for i < n (chain rule for the *Der ops). y may alias g or x.
inline void vmap_mul(VOp op, const float* g, const float* x, float* y, int64_t n) {
#if NABLAGRAD_VMATH_AVX2
  if (simd_at_least(SimdLevel::AVX512)) return vmath_detail::map_avx512_dispatch(op, g, x, y, n);
  if (simd_at_least(SimdLevel::AVX2)) return vmath_detail::map_avx2_dispatch(op, g, x, y, n);
#endif
  vmath_detail::map_portable_dispatch(op, g, x, y, n);
}

}  // namespace kernels
}  // namespace nablagrad
