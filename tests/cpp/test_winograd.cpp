// Tests of kernels/conv2d/winograd.h: Winograd F(2x2,3x3), F(4x4,3x3) and F(2x2,5x5), forward, input
// gradient and kernel gradient (the forward's adjoint), against the reference (the design document's equations, in double) over
// random shapes with odd sizes, partial edge tiles, paddings 0..3 (asymmetric too), channel
// counts that are not multiples of the vector width, every SIMD level this CPU has, and
// 1, 2 and 3 threads (bitwise). `test_winograd --accuracy` prints the accuracy table of
// docs/convolution.md ("Winograd") instead of testing.
#include "nablagrad/kernels/conv2d/winograd.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "nablagrad/kernels/conv2d.h"
#include "test_util.h"

using nablagrad::SimdLevel;
using namespace nablagrad::kernels;

namespace {

template <typename T>
std::vector<T> random_vector(int64_t n, std::mt19937& rng, double scale = 1.0) {
  std::uniform_real_distribution<double> dist(-scale, scale);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& e : v) e = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// max |a - ref| / max(1e-300, max |ref|): the error relative to the output's scale.
template <typename T>
double rel_err(const std::vector<T>& a, const std::vector<double>& ref) {
  double num = 0, den = 1e-300;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - ref[i]));
    den = std::max(den, std::fabs(ref[i]));
  }
  return num / den;
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

struct Shape {
  int64_t N, H, W, C, Q, pt, pb, pl, pr;
  int64_t r = 3;  // kernel size: 3 or 5
};

// The tile sizes of F(m x m, r x r) for kernel size r.
std::vector<int> tile_sizes(int64_t r) { return r == 5 ? std::vector<int>{2} : std::vector<int>{2, 4}; }

template <typename T>
struct Data {
  Conv2dGeometry g;
  std::vector<T> x, w, b, dy;
  std::vector<double> y_ref, dx_ref, dw_ref;
};

template <typename T>
Data<T> make_data(const Shape& s, std::mt19937& rng, bool bias = true) {
  Data<T> d;
  d.g = make_conv2d_geometry(s.N, s.H, s.W, s.C, s.Q, s.r, s.r, s.C, 1, 1, s.pt, s.pb, s.pl, s.pr);
  d.x = random_vector<T>(s.N * s.H * s.W * s.C, rng);
  d.w = random_vector<T>(s.Q * s.r * s.r * s.C, rng, 1.0 / std::sqrt(double(s.r * s.r * s.C)));
  if (bias) d.b = random_vector<T>(s.Q, rng);
  d.dy = random_vector<T>(s.N * d.g.Ho * d.g.Wo * s.Q, rng);
  const auto xd = to_double(d.x), wd = to_double(d.w), bd = to_double(d.b), dyd = to_double(d.dy);
  d.y_ref.assign(static_cast<size_t>(s.N * d.g.Ho * d.g.Wo * s.Q), 0.0);
  d.dx_ref.assign(d.x.size(), 0.0);
  d.dw_ref.assign(d.w.size(), 0.0);
  conv2d_reference_forward(d.g, xd.data(), wd.data(), bias ? bd.data() : nullptr, d.y_ref.data());
  conv2d_reference_backward_input(d.g, dyd.data(), wd.data(), d.dx_ref.data());
  conv2d_reference_backward_weight(d.g, xd.data(), dyd.data(), d.dw_ref.data(), static_cast<double*>(nullptr));
  return d;
}

template <typename T>
std::vector<T> run_forward(const Data<T>& d, int m) {
  std::vector<T> y(d.y_ref.size(), T(-7));
  winograd_conv2d_forward(d.g, d.x.data(), d.w.data(), d.b.empty() ? nullptr : d.b.data(), y.data(), m);
  return y;
}

template <typename T>
std::vector<T> run_backward(const Data<T>& d, int m) {
  std::vector<T> dx(d.dx_ref.size(), T(-7));
  winograd_conv2d_backward_input(d.g, d.dy.data(), d.w.data(), dx.data(), m);
  return dx;
}

template <typename T>
std::vector<T> run_weight(const Data<T>& d, int m) {
  std::vector<T> dw(d.dw_ref.size(), T(-7));
  winograd_conv2d_backward_weight(d.g, d.x.data(), d.dy.data(), dw.data(), m);
  return dw;
}

// Tolerances (error relative to the output's scale, see rel_err) with ~10-50x headroom over
// the measured maxima of the accuracy table. F(2x2,5x5) has F(4x4,3x3)'s 6 x 6 tile and
// transforms: its tolerance.
template <typename T>
double tolerance(int m, int64_t r = 3) {
  if (r == 5) m = 4;
  if (std::is_same<T, double>::value) return m == 2 ? 1e-13 : 1e-12;
  return m == 2 ? 2e-5 : 1e-4;
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {1, 3, 3, 1, 1, 0, 0, 0, 0},     // one output, one partial tile
      {1, 5, 7, 3, 2, 1, 1, 1, 1},     // odd sizes, edge tiles
      {2, 9, 6, 5, 7, 0, 0, 0, 0},     // no padding
      {1, 8, 8, 16, 16, 1, 1, 1, 1},   // exact tiles, whole vectors
      {2, 7, 11, 17, 9, 2, 2, 2, 2},   // padding 2: the input gradient reads from row 0
      {1, 10, 9, 9, 33, 2, 0, 0, 1},   // asymmetric padding
      {1, 6, 5, 33, 17, 3, 1, 0, 3},   // padding 3 > F-1: negative read offset in backward
      {3, 12, 13, 8, 24, 1, 1, 1, 1},  // several images, tile rows across images
      {1, 4, 21, 40, 5, 1, 0, 2, 1},
      {2, 9, 10, 27, 29, 1, 1, 1, 1},  // all three channel stages at AVX-512: zmm, ymm, scalars
      // 5x5: F(2x2,5x5)
      {1, 5, 5, 1, 1, 0, 0, 0, 0, 5},     // one output, one partial tile
      {2, 9, 8, 3, 5, 2, 2, 2, 2, 5},     // edge tiles, padding 2
      {1, 12, 11, 17, 20, 1, 3, 0, 2, 5}, // asymmetric padding, channels past the vectors
      {1, 7, 10, 33, 9, 5, 1, 4, 6, 5},   // padding past F-1: negative read offset in backward
      {3, 10, 10, 16, 16, 2, 2, 2, 2, 5}, // several images, whole vectors
  };
  return s;
}

template <typename T>
void test_against_reference() {
  std::mt19937 rng(17);
  for (const Shape& s : shapes()) {
    const Data<T> d = make_data<T>(s, rng, s.C % 2 == 1);
    for (int m : tile_sizes(s.r)) {
      const double ef = rel_err(run_forward(d, m), d.y_ref);
      const double eb = rel_err(run_backward(d, m), d.dx_ref);
      const double ew = rel_err(run_weight(d, m), d.dw_ref);
      const double tol = tolerance<T>(m, s.r);
      CHECK(ef <= tol);
      CHECK(eb <= tol);
      CHECK(ew <= tol);
      if (!(ef <= tol && eb <= tol && ew <= tol))
        std::printf("  %s m=%d r=%lld shape (%lld,%lld,%lld,%lld->%lld pads %lld,%lld,%lld,%lld): fwd %.3g dx %.3g dw %.3g\n",
                    sizeof(T) == 4 ? "float" : "double", m, (long long)s.r, (long long)s.N, (long long)s.H, (long long)s.W,
                    (long long)s.C, (long long)s.Q, (long long)s.pt, (long long)s.pb, (long long)s.pl,
                    (long long)s.pr, ef, eb, ew);
    }
  }
}

// Random shapes (sizes 1..13, channels 1..40, paddings 0..3 for 3x3, 0..5 for 5x5) at every
// SIMD level.
template <typename T>
void test_random_shapes_all_levels() {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> sz(1, 13), ch(1, 40), pd(0, 3), nb(1, 2);
  const int best = static_cast<int>(nablagrad::cpu_simd_level());
  for (int trial = 0; trial < 20; ++trial) {
    Shape s{nb(rng), sz(rng), sz(rng), ch(rng), ch(rng), pd(rng), pd(rng), pd(rng), pd(rng)};
    if (trial % 2 == 1) {  // every other trial a 5x5 kernel, with paddings up to 5
      s.r = 5;
      s.pt += trial % 3, s.pr += trial % 3;
    }
    if (s.H + s.pt + s.pb < s.r || s.W + s.pl + s.pr < s.r) continue;
    const Data<T> d = make_data<T>(s, rng);
    for (int level = 0; level <= best; ++level) {
      nablagrad::set_simd_level(static_cast<SimdLevel>(level));
      for (int m : tile_sizes(s.r)) {
        const double ef = rel_err(run_forward(d, m), d.y_ref);
        const double eb = rel_err(run_backward(d, m), d.dx_ref);
        const double ew = rel_err(run_weight(d, m), d.dw_ref);
        const double tol = tolerance<T>(m, s.r);
        CHECK(ef <= tol);
        CHECK(eb <= tol);
        CHECK(ew <= tol);
        if (!(ef <= tol && eb <= tol && ew <= tol))
          std::printf("  level %d m=%d r=%lld trial %d: fwd %.3g dx %.3g dw %.3g\n", level, m, (long long)s.r, trial, ef, eb, ew);
      }
    }
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// Several tile blocks: bitwise identical for 1, 2 and 3 threads, at every SIMD level.
template <typename T>
void test_threads_bitwise() {
  std::mt19937 rng(99);
  // 4 * 10 * 9 = 360 F(4) tiles: several blocks (and chunks); the 5x5 one has 4 * 17 * 17
  // F(2x2,5x5) tiles.
  for (const Shape& s : {Shape{4, 37, 35, 8, 8, 1, 1, 1, 1}, Shape{4, 33, 34, 8, 8, 2, 2, 2, 2, 5}}) {
  const Data<T> d = make_data<T>(s, rng);
  const int best = static_cast<int>(nablagrad::cpu_simd_level());
  for (int level = 0; level <= best; ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    for (int m : tile_sizes(s.r)) {
      nablagrad::set_num_threads(1);
      const auto y1 = run_forward(d, m), dx1 = run_backward(d, m), dw1 = run_weight(d, m);
      CHECK(rel_err(y1, d.y_ref) <= tolerance<T>(m, s.r));
      CHECK(rel_err(dx1, d.dx_ref) <= tolerance<T>(m, s.r));
      CHECK(rel_err(dw1, d.dw_ref) <= tolerance<T>(m, s.r));
      for (int threads : {2, 3}) {
        nablagrad::set_num_threads(threads);
        CHECK(bitwise_equal(run_forward(d, m), y1));
        CHECK(bitwise_equal(run_backward(d, m), dx1));
        CHECK(bitwise_equal(run_weight(d, m), dw1));
      }
    }
  }
  }
  nablagrad::set_num_threads(2);
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// Filter panels (conv_tiles_panels: deep layers, a transformed kernel past 2 MiB) against
// The forward and dX tile rule through the entry points: a layer with more than 96 channels
// (100 -> 16, and 16 -> 100 for dX) and 64 F(4) tiles runs F(4x4) (the same bits as m = 4 asked for, not those of m = 2), within
// F(4)'s tolerance of the reference; with fewer tiles F(2x2). Filter panels or blocks by the
// level (use_filter_panels): more tiles than Qf run by blocks below AVX-512, fewer than 4 Qf
// by panels at AVX-512.
template <typename T>
void test_forward_tile_rule() {
  std::mt19937 rng(91);
  const Shape many{4, 16, 16, 100, 16, 1, 1, 1, 1}, few{1, 16, 16, 100, 16, 1, 1, 1, 1};
  const Data<T> d = make_data<T>(many, rng), e = make_data<T>(few, rng);
  const int best = static_cast<int>(nablagrad::cpu_simd_level());
  for (int level = 0; level <= best; ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    const std::vector<T> y = run_forward(d, 0), dx = run_backward(d, 0);
    CHECK(bitwise_equal(y, run_forward(d, 4)) && !bitwise_equal(y, run_forward(d, 2)));
    CHECK(bitwise_equal(dx, run_backward(d, 4)) && !bitwise_equal(dx, run_backward(d, 2)));
    CHECK(rel_err(y, d.y_ref) <= tolerance<T>(4, 3));
    CHECK(rel_err(dx, d.dx_ref) <= tolerance<T>(4, 3));
    CHECK(bitwise_equal(run_forward(e, 0), run_forward(e, 2)));  // 1 x 4 x 4 = 16 tiles
    const bool avx512 = level >= static_cast<int>(SimdLevel::AVX512);
    CHECK(winograd_detail::use_filter_panels<T>(16, 256, 256, 200));
    CHECK(winograd_detail::use_filter_panels<T>(16, 256, 256, 392) == avx512);
    CHECK(!winograd_detail::use_filter_panels<T>(16, 256, 256, 1100));
    CHECK(!winograd_detail::use_filter_panels<T>(16, 64, 64, 10));  // U within 2 MiB
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// blocks of tiles (conv_tiles_blocks): the same bits at every level and 1-3 threads, with a
// partial last panel, two K slices (C > 256) and edge tiles, and 192 filters on 49 tiles (at
// AVX-512 3 panels of 64, which 2 threads run as 6 of 32); and through the entry points (which pick
// panels for these shapes) against the reference.
template <typename T>
void test_filter_panels() {
  std::mt19937 rng(77);
  for (const Shape& s : {Shape{2, 6, 7, 300, 200, 1, 1, 1, 1}, Shape{1, 7, 5, 130, 140, 2, 2, 2, 2, 5},
                         Shape{1, 14, 14, 260, 192, 1, 1, 1, 1}}) {
    const Data<T> d = make_data<T>(s, rng);
    const int64_t P = s.r == 5 ? 36 : 16;
    CHECK(winograd_detail::use_filter_panels<T>(P, s.C, s.Q, s.N * ((d.g.Ho + 1) / 2) * ((d.g.Wo + 1) / 2)));
    const winograd_detail::KernelView<T> kern{d.w.data(), s.r * s.r * s.C, 1, s.r * s.C, s.C};
    const int best = static_cast<int>(nablagrad::cpu_simd_level());
    for (int level = 0; level <= best; ++level) {
      nablagrad::set_simd_level(static_cast<SimdLevel>(level));
      std::vector<T> blocks(d.y_ref.size()), panels(d.y_ref.size());
      for (int threads = 1; threads <= 3; ++threads) {
        nablagrad::set_num_threads(threads);
        winograd_detail::with_variant(d.g, 2, [&](auto M, auto R) {
          constexpr int m = decltype(M)::value, r = decltype(R)::value;
          winograd_detail::conv_tiles_blocks<T, m, r>(s.N, s.H, s.W, s.C, s.pt, s.pl, d.g.Ho, d.g.Wo, s.Q, d.x.data(),
                                                      kern, d.b.data(), blocks.data());
          winograd_detail::conv_tiles_panels<T, m, r>(s.N, s.H, s.W, s.C, s.pt, s.pl, d.g.Ho, d.g.Wo, s.Q, d.x.data(),
                                                      kern, d.b.data(), panels.data());
        });
        CHECK(bitwise_equal(blocks, panels));
        CHECK(rel_err(panels, d.y_ref) <= tolerance<T>(2, s.r));
        CHECK(rel_err(run_forward(d, 2), d.y_ref) <= tolerance<T>(2, s.r));
        CHECK(rel_err(run_backward(d, 2), d.dx_ref) <= tolerance<T>(2, s.r));
      }
    }
  }
  nablagrad::set_num_threads(2);
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// The exact case: small integers give exact results in double for F(2) (all transform
// coefficients are 0, +-1, +-1/2), so the result equals the reference bit for bit.
void test_exact_integers() {
  const Shape s{1, 6, 6, 2, 3, 1, 1, 1, 1};
  auto g = make_conv2d_geometry(s.N, s.H, s.W, s.C, s.Q, 3, 3, s.C, 1, 1, 1, 1, 1, 1);
  std::vector<double> x(72), w(54), b = {1, -2, 0.5}, y(108), ref(108);
  for (size_t i = 0; i < x.size(); ++i) x[i] = double(int(i * 7 % 11) - 5);
  for (size_t i = 0; i < w.size(); ++i) w[i] = double(int(i * 5 % 7) - 3);
  conv2d_reference_forward(g, x.data(), w.data(), b.data(), ref.data());
  winograd_conv2d_forward(g, x.data(), w.data(), b.data(), y.data(), 2);
  CHECK(y == ref);
  // The kernel gradient's F(2) transforms also have coefficients 0, +-1, +-1/2: exact too.
  std::vector<double> dy(108), dw(54), dw_ref(54);
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = double(int(i * 3 % 5) - 2);
  conv2d_reference_backward_weight(g, x.data(), dy.data(), dw_ref.data(), static_cast<double*>(nullptr));
  winograd_conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), 2);
  CHECK(dw == dw_ref);
}

// The kernel transform's G (winograd_transforms.inc's gcol, as each instruction set compiles it)
// against the kernel gradient's copy (g_entry's table): gcol of the unit tap e_a is column a of
// G, and with one nonzero tap each sum is exact (the constants are 1/6 and 1/24 scaled by powers
// of two, and 1/4, 1/2), so in double the two agree bit for bit; in float within an ulp.
namespace wd = nablagrad::kernels::winograd_detail;

template <int M, int R>
void check_g(const char* where, int a, const double* col, double tol) {
  for (int i = 0; i < M + R - 1; ++i) {
    const double want = wd::g_entry<M, R>(i, a);
    if (tol == 0) {
      if (col[i] != want) std::printf("  %s F(%d,%d): G[%d][%d] = %.17g, g_entry %.17g\n", where, M, R, i, a, col[i], want);
      CHECK(col[i] == want);
    } else {
      CHECK_NEAR(col[i], want, tol);
    }
  }
}

// gcol of the unit tap e_a in every one of X's W lanes, as namespace NS compiles it with the
// target attribute TARGET (a function that holds AVX vectors must have it): out[i * W + l] =
// lane l of row i, i.e. G[i][a] in every lane.
#define NG_GCOL_COLUMNS(NAME, TARGET, NS)                              \
  template <class X, int M, int R>                                     \
  TARGET void NAME(int a, double* out) {                               \
    using T = typename X::T;                                           \
    static_assert(X::W <= 16, "lanes[] holds 16");                     \
    typename X::VT g[R], o[M + R - 1];                                 \
    alignas(64) T lanes[16];                                           \
    for (int d = 0; d < R; ++d) {                                      \
      for (int l = 0; l < X::W; ++l) lanes[l] = T(d == a ? 1 : 0);     \
      g[d] = X::load(lanes);                                           \
    }                                                                  \
    wd::NS::gcol<X, M, R>(g, 1, o, 1);                                 \
    for (int i = 0; i < M + R - 1; ++i) {                              \
      X::store(lanes, o[i]);                                           \
      for (int l = 0; l < X::W; ++l) out[i * X::W + l] = static_cast<double>(lanes[l]); \
    }                                                                  \
  }
NG_GCOL_COLUMNS(gcol_columns, , portable)
#if NABLAGRAD_X86
NG_GCOL_COLUMNS(gcol_columns_avx2, __attribute__((target("avx2,fma"))), avx2)
NG_GCOL_COLUMNS(gcol_columns_avx512, __attribute__((target("avx512f,avx2,fma"))), avx512)
#endif
#undef NG_GCOL_COLUMNS

// Every lane of each row of `lanes` (W per row, from NG_GCOL_COLUMNS) against column a of G.
template <int M, int R>
void check_g_lanes(const char* where, int a, const double* lanes, int W, double tol) {
  double col[6];
  for (int l = 0; l < W; ++l) {
    for (int i = 0; i < M + R - 1; ++i) col[i] = lanes[i * W + l];
    check_g<M, R>(where, a, col, tol);
  }
}

template <int M, int R>
void check_gcol_against_g_entry() {
  // Each compiled gcol: (name, the level it needs, its columns, lanes, tolerance). The double
  // sums must agree bit for bit (unit taps make every sum exact); the XScalar<double> rows are
  // kernel_run's lane-by-lane sums as each instruction set compiles them.
  struct Case {
    const char* name;
    SimdLevel level;
    void (*columns)(int, double*);
    int lanes;
    double tol;
  };
  const Case cases[] = {
      {"XScalar<double>", SimdLevel::Portable, &gcol_columns<wd::XScalar<double>, M, R>, 1, 0},
      {"VecPortable<double>", SimdLevel::Portable, &gcol_columns<VecPortable<double, 4>, M, R>, 4, 0},
      {"VecPortable<float>", SimdLevel::Portable, &gcol_columns<VecPortable<float, 8>, M, R>, 8, 1e-7},
#if NABLAGRAD_X86
      {"avx2 XScalar<double>", SimdLevel::AVX2, &gcol_columns_avx2<wd::XScalar<double>, M, R>, 1, 0},
      {"VecAvx2D", SimdLevel::AVX2, &gcol_columns_avx2<VecAvx2D, M, R>, 4, 0},
      {"VecAvx2F", SimdLevel::AVX2, &gcol_columns_avx2<VecAvx2F, M, R>, 8, 1e-7},
      {"avx512 XScalar<double>", SimdLevel::AVX512, &gcol_columns_avx512<wd::XScalar<double>, M, R>, 1, 0},
      {"VecAvx512D", SimdLevel::AVX512, &gcol_columns_avx512<VecAvx512D, M, R>, 8, 0},
      {"VecAvx512F", SimdLevel::AVX512, &gcol_columns_avx512<VecAvx512F, M, R>, 16, 1e-7},
#endif
  };
  for (const Case& c : cases) {
    if (nablagrad::cpu_simd_level() < c.level) continue;
    for (int a = 0; a < R; ++a) {
      double out[6 * 16];
      c.columns(a, out);
      check_g_lanes<M, R>(c.name, a, out, c.lanes, c.tol);
    }
  }
}

void test_kernel_transform_g() {
  check_gcol_against_g_entry<2, 3>();
  check_gcol_against_g_entry<4, 3>();
  check_gcol_against_g_entry<2, 5>();
}

// Whether f() throws std::invalid_argument.
template <typename F>
bool throws_invalid_argument(const F& f) {
  try {
    f();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

void test_errors_and_empty() {
  std::vector<float> x(2 * 8 * 8 * 3, 1.f), w(4 * 7 * 7 * 3, 1.f), y(2 * 8 * 8 * 4);
  auto g7 = make_conv2d_geometry(2, 8, 8, 3, 4, 7, 7, 3, 1, 1, 3, 3, 3, 3);
  CHECK(!winograd_applicable(g7));
  CHECK(throws_invalid_argument(
      [&] { winograd_conv2d_forward(g7, x.data(), w.data(), static_cast<const float*>(nullptr), y.data()); }));
  auto g53 = make_conv2d_geometry(2, 8, 8, 3, 4, 5, 3, 3, 1, 1, 2, 2, 1, 1);  // 5x3: not square
  CHECK(!winograd_applicable(g53));
  CHECK(throws_invalid_argument([&] { winograd_conv2d_backward_input(g53, y.data(), w.data(), x.data()); }));
  auto g5 = make_conv2d_geometry(2, 8, 8, 3, 4, 5, 5, 3, 1, 1, 2, 2, 2, 2);
  CHECK(winograd_applicable(g5));
  CHECK(winograd_tile_size(32, 32, 64, 64, 5) == 2);  // F(2x2,5x5) only
  CHECK(throws_invalid_argument(
      [&] { winograd_conv2d_forward(g5, x.data(), w.data(), static_cast<const float*>(nullptr), y.data(), 4); }));
  CHECK(throws_invalid_argument([&] { winograd_conv2d_backward_weight(g5, x.data(), y.data(), w.data(), 4); }));
  auto g5s2 = make_conv2d_geometry(2, 8, 8, 3, 4, 5, 5, 3, 2, 2, 2, 2, 2, 2);
  CHECK(!winograd_applicable(g5s2));
  auto gs2 = make_conv2d_geometry(2, 8, 8, 3, 4, 3, 3, 3, 2, 2, 1, 1, 1, 1);
  CHECK(!winograd_applicable(gs2));
  CHECK(throws_invalid_argument([&] { winograd_conv2d_backward_input(gs2, y.data(), w.data(), x.data()); }));
  CHECK(throws_invalid_argument([&] { winograd_conv2d_backward_weight(gs2, x.data(), y.data(), w.data()); }));
  auto g3 = make_conv2d_geometry(2, 8, 8, 3, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1);
  CHECK(winograd_applicable(g3));
  CHECK(throws_invalid_argument(
      [&] { winograd_conv2d_forward(g3, x.data(), w.data(), static_cast<const float*>(nullptr), y.data(), 3); }));
  CHECK(throws_invalid_argument([&] { winograd_conv2d_backward_weight(g3, x.data(), y.data(), w.data(), 5); }));
  // N = 0: nothing to do, nothing written.
  auto g0 = make_conv2d_geometry(0, 8, 8, 3, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1);
  winograd_conv2d_forward(g0, x.data(), w.data(), static_cast<const float*>(nullptr), y.data());
  winograd_conv2d_backward_input(g0, y.data(), w.data(), x.data());
  CHECK(x[0] == 1.f);
  // ... and the kernel gradient of an empty batch is zero.
  std::vector<float> w3(4 * 9 * 3, 5.f);
  winograd_conv2d_backward_weight(g0, x.data(), y.data(), w3.data());
  for (float v : w3) CHECK(v == 0.f);
  // Tile choice: F(4) for large outputs with up to 96 channels, F(2) otherwise; auto's rule.
  CHECK(winograd_tile_size(32, 32, 64, 64) == 4);
  CHECK(winograd_tile_size(8, 8, 64, 64) == 2);
  CHECK(winograd_tile_size(32, 32, 256, 256) == 2);
  // The forward's and dX's: F(4) also for more channels with at least 64 F(4) tiles on
  // outputs of at least 7 x 7 (test_forward_tile_rule runs it).
  CHECK(winograd_forward_tile_size(8, 28, 28, 256, 256) == 4);
  CHECK(winograd_forward_tile_size(16, 7, 7, 256, 256) == 4);      // 16 x 2 x 2 = 64 tiles
  CHECK(winograd_forward_tile_size(4, 7, 7, 512, 512) == 2);       // 16 tiles
  // 32 tiles: F(4) below AVX-512 where its tiles cover no more than F(2)'s (7 x 7: 8 x 8 both).
  for (SimdLevel level : {SimdLevel::Portable, nablagrad::cpu_simd_level()}) {
    nablagrad::set_simd_level(level);
    const bool below = nablagrad::simd_level() < SimdLevel::AVX512;
    CHECK(winograd_forward_tile_size(8, 7, 7, 512, 512) == (below ? 4 : 2));
    CHECK(winograd_forward_tile_size(2, 14, 14, 256, 256) == 2);  // 16 x 16 against 14 x 14
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  CHECK(winograd_forward_tile_size(64, 6, 6, 256, 256) == 2);      // 6 x 6 outputs
  CHECK(winograd_forward_tile_size(1, 32, 32, 64, 64) == 4);       // winograd_tile_size's
  // At most 96 channels on outputs under 16 x 16: F(4) from 256 tiles, at every level.
  for (SimdLevel level : {SimdLevel::Portable, nablagrad::cpu_simd_level()}) {
    nablagrad::set_simd_level(level);
    CHECK(winograd_forward_tile_size(8, 14, 14, 64, 64) == 2);     // 128 tiles
    CHECK(winograd_forward_tile_size(8, 7, 7, 64, 64) == 2);       // 32 tiles, same cover
    CHECK(winograd_forward_tile_size(32, 8, 8, 96, 96) == 2);      // 128 tiles
    CHECK(winograd_forward_tile_size(16, 14, 14, 48, 48) == 4);    // 256 tiles
    CHECK(winograd_forward_tile_size(32, 14, 14, 64, 64) == 4);    // 512 tiles
    CHECK(winograd_forward_tile_size(16, 7, 7, 97, 16) == 4);      // 97 channels: 64 suffice
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  CHECK(winograd_forward_tile_size(8, 28, 28, 256, 256, 5) == 2);  // 5x5: F(2x2,5x5) only
  CHECK(!winograd_preferred(g3));  // 3 -> 4 channels: direct
  const auto g16 = make_conv2d_geometry(1, 8, 8, 16, 16, 3, 3, 16, 1, 1, 0, 0, 0, 0);
  const auto g3264 = make_conv2d_geometry(1, 8, 8, 32, 64, 3, 3, 32, 1, 1, 0, 0, 0, 0);
  // At AVX2 the forward runs Winograd from 8 channels on both sides (the 3 -> 4 above does not).
  const bool avx2 = nablagrad::simd_level() == SimdLevel::AVX2;
  CHECK(winograd_preferred(g16) && winograd_preferred(g16, /*backward_input=*/true));
  CHECK(winograd_preferred(g3264) && winograd_preferred(g3264, true));
  // The forward's rule at every level other than AVX2: C, Q >= 16, or C >= 64 with Q >= 10
  // (32 -> 32, 16 -> 24, 32 -> 16, 64 -> 10 by Winograd; 32 -> 12, 15 -> 32, 8 -> 16 not).
  const auto g3232 = make_conv2d_geometry(8, 28, 28, 32, 32, 3, 3, 32, 1, 1, 1, 1, 1, 1);
  const auto g1624 = make_conv2d_geometry(8, 28, 28, 16, 24, 3, 3, 16, 1, 1, 1, 1, 1, 1);
  const auto g4816 = make_conv2d_geometry(8, 28, 28, 48, 16, 3, 3, 48, 1, 1, 1, 1, 1, 1);
  const auto g3216 = make_conv2d_geometry(8, 28, 28, 32, 16, 3, 3, 32, 1, 1, 1, 1, 1, 1);
  const auto g1516 = make_conv2d_geometry(8, 28, 28, 15, 32, 3, 3, 15, 1, 1, 1, 1, 1, 1);
  CHECK(winograd_preferred(g3232) && winograd_preferred(g1624) && winograd_preferred(g4816));
  CHECK(winograd_preferred(g3216) && winograd_preferred(g1516) == avx2);
  const auto g6410 = make_conv2d_geometry(8, 28, 28, 64, 10, 3, 3, 64, 1, 1, 1, 1, 1, 1);
  const auto g6409 = make_conv2d_geometry(8, 28, 28, 64, 9, 3, 3, 64, 1, 1, 1, 1, 1, 1);
  const auto g3212 = make_conv2d_geometry(8, 28, 28, 32, 12, 3, 3, 32, 1, 1, 1, 1, 1, 1);
  const auto g0816 = make_conv2d_geometry(8, 28, 28, 8, 16, 3, 3, 8, 1, 1, 1, 1, 1, 1);
  CHECK(winograd_preferred(g6410) && winograd_preferred(g6409) == avx2);
  CHECK(winograd_preferred(g3212) == avx2 && winograd_preferred(g0816) == avx2);
  // Kernel gradient: from 16 channels on both sides (portable: and 32 on one; below, its
  // direct kernel is faster), with at least 4 blocks of tiles to share out.
  const bool vector_level = nablagrad::simd_level() >= SimdLevel::AVX2;
  CHECK(!winograd_preferred_weight<float>(g3));
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(8, 32, 32, 16, 16, 3, 3, 16, 1, 1, 1, 1, 1, 1)) == vector_level);
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(8, 32, 32, 24, 24, 3, 3, 24, 1, 1, 1, 1, 1, 1)) == vector_level);
  CHECK(!winograd_preferred_weight<float>(make_conv2d_geometry(8, 32, 32, 12, 24, 3, 3, 12, 1, 1, 1, 1, 1, 1)));
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(8, 32, 32, 16, 32, 3, 3, 16, 1, 1, 1, 1, 1, 1)));
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(8, 32, 32, 32, 16, 3, 3, 32, 1, 1, 1, 1, 1, 1)));
  // 1 x 7 x 7 (16 F(2x2) tiles) is under 4 blocks at every level (a block is >= 2 register
  // tiles of rows, MR >= 4).
  CHECK(!winograd_preferred_weight<float>(make_conv2d_geometry(1, 7, 7, 512, 512, 3, 3, 512, 1, 1, 1, 1, 1, 1)));
  // 196 F(2x2) tiles of 128 -> 128 channels: 6.5 blocks, enough at AVX2 only (8 elsewhere).
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(1, 28, 28, 128, 128, 3, 3, 128, 1, 1, 1, 1, 1, 1)) == avx2);
  CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(2, 28, 28, 128, 128, 3, 3, 128, 1, 1, 1, 1, 1, 1)));
  // The AVX2 rule, where the CPU has AVX2: 8 -> 8 forward and dX by Winograd (3x3 and 5x5),
  // 5x5 dW from 24 channels; the other levels keep the direct kernels there.
  // (The rules of CPUs whose AVX-512 runs at full rate; the half-rate ones after the loop.)
  const SimdLevel was = nablagrad::simd_level();
  const bool half_was = nablagrad::avx512_half_rate();
  nablagrad::set_avx512_half_rate(false);
  for (SimdLevel level : {SimdLevel::Portable, SimdLevel::AVX2, SimdLevel::AVX512}) {
    if (level > nablagrad::cpu_simd_level()) continue;
    nablagrad::set_simd_level(level);
    const bool at_avx2 = level == SimdLevel::AVX2;
    const auto g88 = make_conv2d_geometry(16, 32, 32, 8, 8, 3, 3, 8, 1, 1, 1, 1, 1, 1);
    const auto g5 = make_conv2d_geometry(4, 48, 48, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
    const auto g5w = make_conv2d_geometry(8, 32, 32, 24, 24, 5, 5, 24, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(g88) == at_avx2 && winograd_preferred(g88, true) == at_avx2);
    CHECK(winograd_preferred(g5) == at_avx2 && winograd_preferred(g5, true) == at_avx2);
    CHECK(!winograd_preferred_weight<float>(g5) && winograd_preferred_weight<float>(g5w) == at_avx2);
    // 5x5 forward and dX at AVX-512: from 24 output columns (filters; dX: channels) on 16 deep
    // (24 -> 24 both passes, 16 -> 24 the forward, 24 -> 16 dX); portable from 32 on 16, or 24
    // on 48.
    const bool vectors = level != SimdLevel::Portable;
    const bool at_avx512 = level == SimdLevel::AVX512;
    const auto g5a = make_conv2d_geometry(8, 48, 48, 16, 24, 5, 5, 16, 1, 1, 2, 2, 2, 2);
    const auto g5b = make_conv2d_geometry(8, 48, 48, 24, 16, 5, 5, 24, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(g5w) == vectors && winograd_preferred(g5w, true) == vectors);
    CHECK(winograd_preferred(g5a) == vectors && winograd_preferred(g5a, true) == at_avx2);
    CHECK(winograd_preferred(g5b) == at_avx2 && winograd_preferred(g5b, true) == vectors);
    // ... and at AVX-512 from 16 columns where the depth is 32 (32 -> 16 forward, 16 -> 32 dX,
    // on rows of 48 that the direct tiles' 24 pixels fill), or where the rows (dX: the input's)
    // fill under 85% of those tiles: 16 -> 16 on rows of 14, 20, 32 and 40, not 24, 48 or 64.
    // (Their other passes have 32 columns on 16 deep: Winograd at every level.)
    const auto g5c = make_conv2d_geometry(8, 48, 48, 32, 16, 5, 5, 32, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(g5c) == (at_avx2 || at_avx512) && winograd_preferred(g5c, true));
    const auto g5d = make_conv2d_geometry(8, 48, 48, 16, 32, 5, 5, 16, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(g5d) && winograd_preferred(g5d, true) == (at_avx2 || at_avx512));
    for (int64_t wide : {14, 20, 32, 40, 24, 48, 64}) {
      const bool poor_fill = wide != 24 && wide != 48 && wide != 64;
      const auto g = make_conv2d_geometry(4, wide, wide, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
      CHECK(winograd_preferred(g) == (at_avx2 || (at_avx512 && poor_fill)));
      CHECK(winograd_preferred(g, true) == (at_avx2 || (at_avx512 && poor_fill)));
    }
    // An empty batch admits rows of 2^55 pixels here (the padded input's element count must
    // fit int64): the fill is counted without overflow, and such rows fill their tiles.
    const auto wide = make_conv2d_geometry(0, 5, int64_t{1} << 55, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(wide) == at_avx2 && winograd_preferred(wide, true) == at_avx2);
    // The forward counts its output rows, dX the input's (P 0: rows of 48 outputs fill two
    // tiles, the input's 52 pixels 72% of three).
    const auto g5e = make_conv2d_geometry(4, 52, 52, 16, 16, 5, 5, 16, 1, 1, 0, 0, 0, 0);
    CHECK(winograd_preferred(g5e) == at_avx2 && winograd_preferred(g5e, true) == (at_avx2 || at_avx512));
    // 5x5 dW: 8 blocks of tiles at AVX2, 10 at AVX-512 (a block is 36 tiles at (4,24,24,48->48),
    // the AVX-512 and AVX2 tiles' case, which has 16): (4,22,22,48->48) has 13.4,
    // (4,16,16,64->64) 10.7 of 24 tiles, (4,14,14,64->64) 8.2, (2,16,16,64->64) 5.3;
    // (2,28,28,64->128) 21.8 of 18.
    if (level != SimdLevel::Portable) {
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(4, 24, 24, 48, 48, 5, 5, 48, 1, 1, 2, 2, 2, 2)));
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(4, 22, 22, 48, 48, 5, 5, 48, 1, 1, 2, 2, 2, 2)));
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(4, 16, 16, 64, 64, 5, 5, 64, 1, 1, 2, 2, 2, 2)));
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(4, 14, 14, 64, 64, 5, 5, 64, 1, 1, 2, 2, 2, 2)) ==
            at_avx2);
      CHECK(!winograd_preferred_weight<float>(make_conv2d_geometry(2, 16, 16, 64, 64, 5, 5, 64, 1, 1, 2, 2, 2, 2)));
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(8, 16, 16, 64, 64, 5, 5, 64, 1, 1, 2, 2, 2, 2)));
      CHECK(winograd_preferred_weight<float>(make_conv2d_geometry(2, 28, 28, 64, 128, 5, 5, 64, 1, 1, 2, 2, 2, 2)));
    }
  }
  // Where AVX-512 runs at half rate (Zen 4), 5x5 16 -> 16 takes Winograd at AVX-512 on rows
  // that fill the direct tiles too (forward and dX; the kernel gradient's rule is unchanged);
  // 8 -> 16 and 16 -> 8 do not, nor does the portable level.
  nablagrad::set_avx512_half_rate(true);
  for (SimdLevel level : {SimdLevel::Portable, SimdLevel::AVX2, SimdLevel::AVX512}) {
    if (level > nablagrad::cpu_simd_level()) continue;
    nablagrad::set_simd_level(level);
    const bool vectors = level != SimdLevel::Portable;
    for (int64_t wide : {24, 48, 64, 96}) {
      const auto g = make_conv2d_geometry(4, wide, wide, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
      CHECK(winograd_preferred(g) == vectors && winograd_preferred(g, true) == vectors);
      CHECK(!winograd_preferred_weight<float>(g));
    }
    const auto g816 = make_conv2d_geometry(4, 48, 48, 8, 16, 5, 5, 8, 1, 1, 2, 2, 2, 2);
    CHECK(winograd_preferred(g816) == (level == SimdLevel::AVX2) &&
          winograd_preferred(g816, true) == (level == SimdLevel::AVX2));
  }
  nablagrad::set_avx512_half_rate(half_was);
  nablagrad::set_simd_level(was);
}

// The entry points of select.h: "winograd" runs exactly winograd_conv2d_* (bitwise), "direct"
// never does, "auto" picks Winograd for 3x3 stride 1 with >= 16 channels on both sides (the
// forward also from 64 channels to 10 filters); the kernel gradient too where there are
// enough tiles.
void test_algorithm_setting() {
  std::mt19937 rng(21);
  const Data<float> d = make_data<float>({2, 11, 10, 16, 20, 1, 1, 1, 1}, rng);
  const auto wy = run_forward(d, 0), wdx = run_backward(d, 0), wdw = run_weight(d, 0);
  std::vector<float> y(wy.size()), dx(wdx.size()), dw(wdw.size()), db(d.b.size());
  set_conv_algorithm(ConvAlgorithm::Winograd);
  CHECK(std::string(conv_kernel_choice<float>(d.g).forward) == "winograd");
  CHECK(std::string(conv_kernel_choice<float>(d.g).backward_input) == "winograd");
  CHECK(std::string(conv_kernel_choice<float>(d.g).backward_weight) == "winograd");
  conv2d_forward(d.g, d.x.data(), d.w.data(), d.b.data(), y.data());
  conv2d_backward_input(d.g, d.dy.data(), d.w.data(), dx.data());
  conv2d_backward_weight(d.g, d.x.data(), d.dy.data(), dw.data(), db.data());
  CHECK(bitwise_equal(y, wy));
  CHECK(bitwise_equal(dx, wdx));
  CHECK(bitwise_equal(dw, wdw));
  for (int64_t q = 0; q < d.g.Q; ++q) {  // the bias gradient beside it: the sum of dY
    double s = 0;
    for (int64_t p = 0; p < d.g.N * d.g.Ho * d.g.Wo; ++p) s += d.dy[p * d.g.Q + q];
    CHECK(std::fabs(db[q] - s) <= 1e-4 * (1 + std::fabs(s)));
  }
  // Forced, but not applicable (stride 2, 7x7): the other kernels run; 5x5 stride 1 runs F(2x2,5x5).
  const auto gs2 = make_conv2d_geometry(1, 9, 9, 16, 16, 3, 3, 16, 2, 2, 1, 1, 1, 1);
  const auto g77 = make_conv2d_geometry(1, 9, 9, 16, 16, 7, 7, 16, 1, 1, 3, 3, 3, 3);
  const auto g55 = make_conv2d_geometry(1, 9, 9, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
  CHECK(std::string(conv_kernel_choice<float>(gs2).forward) != "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g77).backward_input) != "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g55).forward) == "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g55).backward_input) == "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g55).backward_weight) == "winograd");
  set_conv_algorithm(ConvAlgorithm::Direct);
  CHECK(std::string(conv_kernel_choice<float>(d.g).forward) != "winograd");
  CHECK(std::string(conv_kernel_choice<float>(d.g).backward_weight) != "winograd");
  conv2d_forward(d.g, d.x.data(), d.w.data(), d.b.data(), y.data());
  conv2d_backward_input(d.g, d.dy.data(), d.w.data(), dx.data());
  conv2d_backward_weight(d.g, d.x.data(), d.dy.data(), dw.data(), db.data());
  CHECK(rel_err(y, d.y_ref) <= 1e-5);
  CHECK(rel_err(dx, d.dx_ref) <= 1e-5);
  CHECK(rel_err(dw, d.dw_ref) <= 1e-5);
  set_conv_algorithm(ConvAlgorithm::Auto);  // 16 -> 20 channels: forward and dX
  const auto g1620 = make_conv2d_geometry(32, 16, 16, 16, 20, 3, 3, 16, 1, 1, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(g1620).forward) == "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g1620).backward_input) == "winograd");
  // ... but not with too little work (winograd_enough_work: 12M multiply-adds at AVX-512, 6M
  // below): 2 images of 16 x 16 (1.5M), nor 12 (8.8M) at AVX-512.
  const auto g1620_2 = make_conv2d_geometry(2, 16, 16, 16, 20, 3, 3, 16, 1, 1, 1, 1, 1, 1);
  const auto g1620_12 = make_conv2d_geometry(12, 16, 16, 16, 20, 3, 3, 16, 1, 1, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(g1620_2).forward) != "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g1620_2).backward_input) != "winograd");
  CHECK((std::string(conv_kernel_choice<float>(g1620_12).forward) == "winograd") ==
        (nablagrad::simd_level() < SimdLevel::AVX512));
  CHECK(winograd_enough_work(g1620) && !winograd_enough_work(g1620_2));
  // 64 -> 12: the forward only (dX from 16 filters), but at AVX2 (both from 8).
  const auto g6412 = make_conv2d_geometry(20, 11, 10, 64, 12, 3, 3, 64, 1, 1, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(g6412).forward) == "winograd");
  CHECK((std::string(conv_kernel_choice<float>(g6412).backward_input) == "winograd") ==
        (nablagrad::simd_level() == SimdLevel::AVX2));
  const auto g3 = make_conv2d_geometry(2, 16, 16, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(g3).forward) != "winograd");
  CHECK(std::string(conv_kernel_choice<float>(g3).backward_input) != "winograd");
}

// --accuracy: error of the direct path and of each F(m x m, r x r) for the shapes' r (F(2), F(4)
// for 3x3, F(2x2,5x5) for 5x5) against the float64 reference, one table row per shape.
template <typename T>
void accuracy_table(const std::vector<Shape>& realistic, uint32_t seed) {
  std::mt19937 rng(seed);
  for (const Shape& s : realistic) {
    const Data<T> d = make_data<T>(s, rng);
    std::vector<T> yd(d.y_ref.size()), dxd(d.dx_ref.size()), dwd(d.dw_ref.size());
    set_conv_algorithm(ConvAlgorithm::Direct);
    conv2d_forward(d.g, d.x.data(), d.w.data(), d.b.data(), yd.data());
    conv2d_backward_input(d.g, d.dy.data(), d.w.data(), dxd.data());
    conv2d_backward_weight(d.g, d.x.data(), d.dy.data(), dwd.data(), static_cast<T*>(nullptr));
    set_conv_algorithm(ConvAlgorithm::Auto);
    std::printf("| %s | (%lld,%lld,%lld,%lld->%lld)%s | %.2e / %.2e / %.2e |", sizeof(T) == 4 ? "float32" : "float64",
                (long long)s.N, (long long)s.H, (long long)s.W, (long long)s.C, (long long)s.Q, s.r == 5 ? " 5x5" : "",
                rel_err(yd, d.y_ref), rel_err(dxd, d.dx_ref), rel_err(dwd, d.dw_ref));
    for (int m : tile_sizes(s.r))
      std::printf(" %.2e / %.2e / %.2e |", rel_err(run_forward(d, m), d.y_ref), rel_err(run_backward(d, m), d.dx_ref),
                  rel_err(run_weight(d, m), d.dw_ref));
    std::printf("\n");
  }
}

const std::vector<Shape> kAccuracy3 = {
    {2, 32, 32, 16, 16, 1, 1, 1, 1}, {1, 28, 28, 64, 64, 1, 1, 1, 1},
    {1, 14, 14, 256, 256, 1, 1, 1, 1}, {1, 8, 8, 512, 512, 1, 1, 1, 1}};
const std::vector<Shape> kAccuracy5 = {
    {4, 32, 32, 16, 16, 2, 2, 2, 2, 5}, {2, 28, 28, 64, 64, 2, 2, 2, 2, 5}, {1, 14, 14, 256, 256, 2, 2, 2, 2, 5}};

}  // namespace

int main(int argc, char** argv) {
  nablagrad::kernels::gemm_parallel_threshold().store(0);  // push small GEMMs through the threaded path
  if (argc > 1 && std::string(argv[1]) == "--accuracy") {
    std::printf("| type | shape (N,H,W,C->Q) | direct fwd / dX / dW | F(2x2) fwd / dX / dW | F(4x4) fwd / dX / dW |\n|---|---|---|---|---|\n");
    accuracy_table<float>(kAccuracy3, 5);
    accuracy_table<double>(kAccuracy3, 5);
    std::printf("\n| type | shape (N,H,W,C->Q) | direct fwd / dX / dW | F(2x2,5x5) fwd / dX / dW |\n|---|---|---|---|\n");
    accuracy_table<float>(kAccuracy5, 6);
    accuracy_table<double>(kAccuracy5, 6);
    return 0;
  }
  RUN_TEST(test_exact_integers);
  RUN_TEST(test_kernel_transform_g);
  RUN_TEST(test_errors_and_empty);
  RUN_TEST(test_against_reference<double>);
  RUN_TEST(test_against_reference<float>);
  RUN_TEST(test_random_shapes_all_levels<float>);
  RUN_TEST(test_random_shapes_all_levels<double>);
  RUN_TEST(test_forward_tile_rule<float>);
  RUN_TEST(test_forward_tile_rule<double>);
  RUN_TEST(test_filter_panels<float>);
  RUN_TEST(test_filter_panels<double>);
  RUN_TEST(test_threads_bitwise<float>);
  RUN_TEST(test_threads_bitwise<double>);
  RUN_TEST(test_algorithm_setting);
  return test_util::finish();
}
