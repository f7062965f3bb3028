// Tests of kernels/conv2d.h: the reference (the design document, literally) against finite
// differences and a hand-checked example; the fast path against the reference over odd shapes,
// strides, paddings, thread counts (bitwise) and every SIMD level the CPU has; the geometry
// checks; 1x1 convolutions through the GEMM; the kernel choice and the algorithm setting.
#include "nablagrad/kernels/conv2d.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

using nablagrad::SimdLevel;
using namespace nablagrad::kernels;

namespace {

template <typename T>
std::vector<T> random_vector(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& e : v) e = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
double max_rel_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(double(a[i]) - double(b[i])) / (1.0 + std::fabs(double(b[i]))));
  return m;
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

struct Results {
  std::vector<double> y, dx, dw, db;
};

// --- the worked example (also in docs/convolution.md) --------------------------------------
// x (1,4,4,1) = 1..16 row-major, kernel (1,2,2,1) = [[1,2],[3,4]], bias 0.5, stride 2, no pad.
// y = [[1+4+15+24, 3+8+21+32],[9+20+39+56, 11+24+45+64]] + 0.5 = [[44.5, 64.5],[124.5, 144.5]]
// dy = [[1,2],[3,4]]:
//   dx = each 2x2 block of x gets dy(i,j) * k  -> rows [1 2 2 4; 3 4 6 8; 3 6 4 8; 9 12 12 16]
//   dw(a,b) = sum_ij dy(i,j) x(2i+a, 2j+b)      -> [[1+6+27+44, 2+8+30+48],[5+14+39+60, 6+16+42+64]]
//              = [[78, 88],[118, 128]],  db = 10.
void test_worked_example() {
  auto g = make_conv2d_geometry(1, 4, 4, 1, 1, 2, 2, 1, 2, 2, 0, 0, 0, 0);
  CHECK(g.Ho == 2 && g.Wo == 2);
  std::vector<double> x(16), w = {1, 2, 3, 4}, b = {0.5}, dy = {1, 2, 3, 4};
  for (int i = 0; i < 16; ++i) x[i] = i + 1;
  const std::vector<double> y_expect = {44.5, 64.5, 124.5, 144.5};
  const std::vector<double> dx_expect = {1, 2, 2, 4, 3, 4, 6, 8, 3, 6, 4, 8, 9, 12, 12, 16};
  const std::vector<double> dw_expect = {78, 88, 118, 128};
  for (int fast = 0; fast < 2; ++fast) {
    std::vector<double> y(4), dx(16), dw(4), db(1);
    if (fast) {
      conv2d_forward(g, x.data(), w.data(), b.data(), y.data());
      conv2d_backward_input(g, dy.data(), w.data(), dx.data());
      conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
    } else {
      conv2d_reference_forward(g, x.data(), w.data(), b.data(), y.data());
      conv2d_reference_backward_input(g, dy.data(), w.data(), dx.data());
      conv2d_reference_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
    }
    CHECK(y == y_expect);
    CHECK(dx == dx_expect);
    CHECK(dw == dw_expect);
    CHECK(db[0] == 10.0);
  }
}

void test_helpers() {
  // dilate: 2x2 with stride (2,3) -> 3x4
  std::vector<double> in = {1, 2, 3, 4}, out(12);
  dilate(in.data(), 1, 2, 2, 1, 2, 3, out.data());
  CHECK((out == std::vector<double>{1, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 4}));
  std::vector<double> p(3 * 5);
  pad(in.data(), 1, 2, 2, 1, 0, 1, 2, 1, p.data());
  CHECK((p == std::vector<double>{0, 0, 1, 2, 0, 0, 0, 3, 4, 0, 0, 0, 0, 0, 0}));
  // flip: Q=2, 2x1 kernel, C=1: k(q, a, 0, 0) -> kr(0, a, 0, q) = k(q, 1-a, 0, 0)
  std::vector<double> k = {1, 2, 3, 4}, kr(4);
  flip_kernel(k.data(), 2, 2, 1, 1, kr.data());
  CHECK((kr == std::vector<double>{2, 4, 1, 3}));
  // In 16 x 16 blocks of Q x C per tap, with partial blocks: the formula, value by value.
  {
    const int64_t Q = 37, FH = 3, FW = 2, C = 21;
    std::vector<double> kq(Q * FH * FW * C), kf(kq.size(), -1.0);
    for (size_t i = 0; i < kq.size(); ++i) kq[i] = double(i);
    flip_kernel(kq.data(), Q, FH, FW, C, kf.data());
    bool same = true;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = 0; a < FH; ++a)
        for (int64_t b = 0; b < FW; ++b)
          for (int64_t q = 0; q < Q; ++q)
            same = same && kf[((c * FH + a) * FW + b) * Q + q] == kq[((q * FH + (FH - 1 - a)) * FW + (FW - 1 - b)) * C + c];
    CHECK(same);
  }
  // The packed kernel panels and the per-thread scratch start on a cache line (the kernels'
  // whole-vector loads from them would straddle two lines otherwise), whatever their size and
  // however the scratch grew; std::vector's own allocator gave 16 or 48 past a line here.
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; };
  using conv_detail::AlignedVector;
  using conv_detail::PackedB;
  using conv_detail::scratch;
  const auto cf = conv_detail::conv_kernels<float>(nablagrad::simd_level());
  const auto cd = conv_detail::conv_kernels<double>(nablagrad::simd_level());
  for (int64_t K : {1, 7, 288, 1568, 4608}) {
    PackedB<float> bf;
    bf.pack(cf, K, 64, [](int64_t k, int64_t q) { return float(k + q); });
    PackedB<double> bd;
    bd.pack(cd, K, 3, [](int64_t k, int64_t q) { return double(k - q); });  // the narrow layout
    CHECK(aligned(bf.data.data()) && aligned(bd.data.data()));
    CHECK(aligned(scratch<float, 0>(static_cast<size_t>(K) * 37)) && aligned(scratch<double, 1>(static_cast<size_t>(K) * 5 + 3)));
  }
  AlignedVector<float> v(5, 1.0f);
  v.resize(100003, 2.0f);  // grown: a new aligned block, the values kept
  CHECK(aligned(v.data()) && v[4] == 1.0f && v[5] == 2.0f && v.back() == 2.0f);
}

// Finite differences of the reference forward check the reference backward.
void test_reference_gradcheck() {
  std::mt19937 rng(7);
  struct Case { int64_t N, H, W, C, Q, FH, FW, sh, sw, pt, pb, pl, pr; };
  const Case cases[] = {{2, 5, 6, 2, 3, 3, 2, 2, 1, 1, 0, 0, 1},
                        {1, 7, 5, 3, 2, 3, 3, 2, 3, 1, 1, 1, 1},
                        {1, 6, 6, 1, 2, 2, 2, 1, 1, 0, 1, 0, 1},
                        {2, 5, 5, 2, 1, 1, 1, 2, 2, 0, 0, 0, 0}};
  for (const Case& c : cases) {
    auto g = make_conv2d_geometry(c.N, c.H, c.W, c.C, c.Q, c.FH, c.FW, c.C, c.sh, c.sw, c.pt,
                                  c.pb, c.pl, c.pr);
    const int64_t nx = g.N * g.H * g.W * g.C, nw = g.Q * g.FH * g.FW * g.C,
                  ny = g.N * g.Ho * g.Wo * g.Q;
    auto x = random_vector<double>(nx, rng), w = random_vector<double>(nw, rng),
         b = random_vector<double>(g.Q, rng), dy = random_vector<double>(ny, rng);
    std::vector<double> dx(nx), dw(nw), db(g.Q), y(ny);
    conv2d_reference_backward_input(g, dy.data(), w.data(), dx.data());
    conv2d_reference_backward_weight(g, x.data(), dy.data(), dw.data(), db.data());
    auto loss = [&]() {
      conv2d_reference_forward(g, x.data(), w.data(), b.data(), y.data());
      double s = 0;
      for (int64_t i = 0; i < ny; ++i) s += y[i] * dy[i];
      return s;
    };
    const double h = 1e-6;
    auto fd = [&](std::vector<double>& v, int64_t i) {
      const double old = v[i];
      v[i] = old + h;
      const double lp = loss();
      v[i] = old - h;
      const double lm = loss();
      v[i] = old;
      return (lp - lm) / (2 * h);
    };
    for (int64_t i = 0; i < nx; ++i) CHECK_NEAR(dx[i], fd(x, i), 1e-6);
    for (int64_t i = 0; i < nw; ++i) CHECK_NEAR(dw[i], fd(w, i), 1e-6);
    for (int64_t i = 0; i < g.Q; ++i) CHECK_NEAR(db[i], fd(b, i), 1e-6);
  }
}

// PITFALLS item 1: 28 -> 14 with F=3, S=2, P=1; the last input row/col is never read.
void test_uneven_stride_28_to_14() {
  auto g = make_conv2d_geometry(2, 28, 28, 3, 4, 3, 3, 3, 2, 2, 1, 1, 1, 1);
  CHECK(g.Ho == 14 && g.Wo == 14);
  std::mt19937 rng(28);
  auto w = random_vector<double>(4 * 9 * 3, rng);
  auto dy = random_vector<double>(2 * 14 * 14 * 4, rng);
  std::vector<double> dx_ref(2 * 28 * 28 * 3), dx(2 * 28 * 28 * 3, 99.0);
  conv2d_reference_backward_input(g, dy.data(), w.data(), dx_ref.data());
  conv2d_backward_input(g, dy.data(), w.data(), dx.data());
  CHECK(max_rel_diff(dx, dx_ref) < 1e-12);
  // padded row 28 (= input row 27) is only reached by tap fh=2 from ho=13: 13*2+2 = 28 -> yes;
  // so here every row is touched; with P=0 the last row is not:
  auto g0 = make_conv2d_geometry(1, 28, 28, 1, 1, 3, 3, 1, 2, 2, 0, 0, 0, 0);
  CHECK(g0.Ho == 13);
  std::vector<double> w0(9, 1.0), dy0(13 * 13, 1.0), dx0(28 * 28, 99.0), dx0r(28 * 28);
  conv2d_backward_input(g0, dy0.data(), w0.data(), dx0.data());
  conv2d_reference_backward_input(g0, dy0.data(), w0.data(), dx0r.data());
  CHECK(dx0 == dx0r);
  CHECK(dx0[27 * 28 + 5] == 0.0 && dx0[5 * 28 + 27] == 0.0);
}

template <typename T>
Results run_fast(const Conv2dGeometry& g, const std::vector<T>& x, const std::vector<T>& w,
                 const std::vector<T>& b, const std::vector<T>& dy, bool with_bias) {
  std::vector<T> y(g.N * g.Ho * g.Wo * g.Q, T(77)), dx(x.size(), T(77)), dw(w.size(), T(77)),
      db(g.Q, T(77));
  conv2d_forward(g, x.data(), w.data(), with_bias ? b.data() : nullptr, y.data());
  conv2d_backward_input(g, dy.data(), w.data(), dx.data());
  conv2d_backward_weight(g, x.data(), dy.data(), dw.data(), with_bias ? db.data() : nullptr);
  Results r;
  r.y.assign(y.begin(), y.end());
  r.dx.assign(dx.begin(), dx.end());
  r.dw.assign(dw.begin(), dw.end());
  if (with_bias) r.db.assign(db.begin(), db.end());
  return r;
}

template <typename T>
Results run_reference(const Conv2dGeometry& g, const std::vector<T>& x, const std::vector<T>& w,
                      const std::vector<T>& b, const std::vector<T>& dy, bool with_bias) {
  std::vector<T> y(g.N * g.Ho * g.Wo * g.Q), dx(x.size()), dw(w.size()), db(g.Q);
  conv2d_reference_forward(g, x.data(), w.data(), with_bias ? b.data() : nullptr, y.data());
  conv2d_reference_backward_input(g, dy.data(), w.data(), dx.data());
  conv2d_reference_backward_weight(g, x.data(), dy.data(), dw.data(), with_bias ? db.data() : nullptr);
  Results r;
  r.y.assign(y.begin(), y.end());
  r.dx.assign(dx.begin(), dx.end());
  r.dw.assign(dw.begin(), dw.end());
  if (with_bias) r.db.assign(db.begin(), db.end());
  return r;
}

// Random x, w, b and dy for g (drawn in that order from seed) and the oracle's results on them.
template <typename T>
struct Case {
  std::vector<T> x, w, b, dy;
  Results ref;
};
template <typename T>
Case<T> make_case(const Conv2dGeometry& g, uint32_t seed) {
  std::mt19937 rng(seed);
  Case<T> c;
  c.x = random_vector<T>(g.N * g.H * g.W * g.C, rng);
  c.w = random_vector<T>(g.Q * g.FH * g.FW * g.C, rng);
  c.b = random_vector<T>(g.Q, rng);
  c.dy = random_vector<T>(g.N * g.Ho * g.Wo * g.Q, rng);
  c.ref = run_reference(g, c.x, c.w, c.b, c.dy, true);
  return c;
}

// run(level, threads) at every SIMD level the CPU has and 1, 2, 3 threads (both set first;
// threads = 1 comes first at each level, so a check can keep its result to compare the others
// with bitwise), then the level it found (NABLAGRAD_SIMD's, where that is set) and 2 threads
// restored.
template <typename Run>
void at_every_level_and_thread_count(const Run& run) {
  const SimdLevel found = nablagrad::simd_level();
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    for (int threads = 1; threads <= 3; ++threads) {
      nablagrad::set_num_threads(threads);
      run(level, threads);
    }
  }
  nablagrad::set_simd_level(found);
  nablagrad::set_num_threads(2);
}

// Fast vs reference for one shape at every SIMD level the CPU has and 1, 2, 3 threads: every
// pass within tol of the reference (db too when with_bias), and at each level every thread
// count bitwise the same as 1 thread. A failure prints the whole shape, the level, the thread
// count and the errors.
template <typename T>
void check_against_reference(const Conv2dGeometry& g, const std::vector<T>& x, const std::vector<T>& w,
                             const std::vector<T>& b, const std::vector<T>& dy, bool with_bias, const Results& ref,
                             double tol, const char* label) {
  Results first;
  at_every_level_and_thread_count([&](int level, int threads) {
    const Results r = run_fast(g, x, w, b, dy, with_bias);
    const double ey = max_rel_diff(r.y, ref.y), edx = max_rel_diff(r.dx, ref.dx), edw = max_rel_diff(r.dw, ref.dw),
                 edb = with_bias ? max_rel_diff(r.db, ref.db) : 0.0;
    if (threads == 1) first = r;
    const bool ok = ey < tol && edx < tol && edw < tol && edb < tol;
    const bool same = bitwise_equal(r.y, first.y) && bitwise_equal(r.dx, first.dx) && bitwise_equal(r.dw, first.dw) &&
                      bitwise_equal(r.db, first.db);
    CHECK(ok && same);
    if (!(ok && same))
      std::printf(
          "  %s %s: N=%lld H=%lld W=%lld C=%lld Q=%lld F=%lldx%lld S=%lldx%lld pad(t%lld,b%lld,l%lld,r%lld) "
          "bias=%d simd=%d threads=%d: err y=%g dx=%g dw=%g db=%g bitwise_same=%d\n",
          sizeof(T) == 4 ? "float" : "double", label, (long long)g.N, (long long)g.H, (long long)g.W,
          (long long)g.C, (long long)g.Q, (long long)g.FH, (long long)g.FW, (long long)g.stride_h,
          (long long)g.stride_w, (long long)g.pad_top, (long long)g.pad_bottom, (long long)g.pad_left,
          (long long)g.pad_right, with_bias, level, threads, ey, edx, edw, edb, same);
  });
}

// Fast vs reference over random shapes (check_against_reference: every level, 1-3 threads).
template <typename T>
void sweep(int cases, uint32_t seed, double tol) {
  std::mt19937 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int t = 0; t < cases; ++t) {
    const int64_t N = pick(1, 3), C = (t % 5 == 0) ? pick(1, 3) : pick(1, 19),
                  Q = (t % 7 == 0) ? pick(1, 3) : pick(1, 21);
    const int64_t FH = pick(1, 5), FW = pick(1, 5), sh = pick(1, 3), sw = pick(1, 3);
    const int64_t pt = pick(0, FH - 1), pb = pick(0, FH - 1), pl = pick(0, FW - 1),
                  pr = pick(0, FW - 1);
    const int64_t H = std::max<int64_t>(pick(1, 13), FH - pt - pb),
                  W = std::max<int64_t>(pick(1, 13), FW - pl - pr);
    const Conv2dGeometry g =
        make_conv2d_geometry(N, H, W, C, Q, FH, FW, C, sh, sw, pt, pb, pl, pr);
    auto x = random_vector<T>(N * H * W * C, rng), w = random_vector<T>(Q * FH * FW * C, rng),
         b = random_vector<T>(Q, rng), dy = random_vector<T>(N * g.Ho * g.Wo * Q, rng);
    const bool with_bias = t % 3 != 0;
    check_against_reference(g, x, w, b, dy, with_bias, run_reference(g, x, w, b, dy, with_bias), tol,
                            ("case " + std::to_string(t)).c_str());
  }
}

void test_sweep_double() { sweep<double>(150, 1234, 1e-12); }
void test_sweep_float() { sweep<float>(40, 99, 2e-5); }

// A few larger shapes (several tiles, several weight-gradient chunks, K blocking) to exercise
// the tiling and the chunked reduction; checked against the reference at every level and across
// threads (check_against_reference).
void test_larger_shapes() {
  struct Case { int64_t N, H, W, C, Q, F, S, P; };
  // The last two take the small-depth direct forward and the GEMM + col2im input gradient
  // (C <= 2 in double), with Wo not a multiple of 6 and Q not a multiple of the panel width.
  const Case cases[] = {{2, 17, 19, 40, 33, 3, 1, 1}, {3, 24, 20, 7, 18, 5, 2, 2},
                        {1, 30, 30, 3, 8, 7, 2, 3},   {2, 12, 12, 70, 5, 2, 1, 0},
                        {3, 16, 13, 1, 20, 3, 1, 1},  {2, 21, 17, 2, 12, 5, 2, 2},
                        // The small-C weight gradient with many row chunks, a masked last
                        // filter block (Q mod 4 != 0) and several tap blocks (K = 147).
                        {9, 30, 30, 2, 19, 3, 1, 1},  {4, 40, 36, 3, 10, 7, 2, 3}};
  std::mt19937 rng(5);
  for (const Case& c : cases) {
    auto g = make_conv2d_geometry(c.N, c.H, c.W, c.C, c.Q, c.F, c.F, c.C, c.S, c.S, c.P, c.P,
                                  c.P, c.P);
    auto x = random_vector<double>(c.N * c.H * c.W * c.C, rng),
         w = random_vector<double>(c.Q * c.F * c.F * c.C, rng), b = random_vector<double>(c.Q, rng),
         dy = random_vector<double>(c.N * g.Ho * g.Wo * c.Q, rng);
    check_against_reference(g, x, w, b, dy, true, run_reference(g, x, w, b, dy, true), 1e-12, "larger");
  }
}

// check_against_reference on random x, w, b and dy drawn from seed, with a bias.
template <typename T>
void check_everywhere(const Conv2dGeometry& g, double tol, uint32_t seed) {
  const Case<T> c = make_case<T>(g, seed);
  check_against_reference(g, c.x, c.w, c.b, c.dy, true, c.ref, tol, "");
}

// 1x1 convolutions without padding go straight to the GEMM (stride 1: the input as it lies;
// strided: gathered rows, and the input gradient scattered back with zeros in between).
void test_pointwise() {
  const auto g1 = make_conv2d_geometry(2, 5, 7, 16, 24, 1, 1, 16, 1, 1, 0, 0, 0, 0);
  const auto g2 = make_conv2d_geometry(2, 9, 8, 12, 20, 1, 1, 12, 2, 3, 0, 0, 0, 0);
  const auto g3 = make_conv2d_geometry(3, 14, 14, 40, 70, 1, 1, 40, 1, 1, 0, 0, 0, 0);
  for (const auto* g : {&g1, &g2, &g3}) {
    const ConvKernelChoice c = conv_kernel_choice<float>(*g);
    CHECK(std::string(c.forward) == "1x1_gemm" && std::string(c.backward_input) == "1x1_gemm" &&
          std::string(c.backward_weight) == "1x1_gemm");
    check_everywhere<double>(*g, 1e-12, 7);
    check_everywhere<float>(*g, 2e-5, 8);
  }
  // From 16384 pixels on, a small kernel's gradient (C x Q <= 65536) sums fixed chunks of
  // pixels side by side, with the bias gradient from the same rows (18432 pixels; strided:
  // 16384 gathered ones); bitwise the same for 1-3 threads (check_everywhere).
  const auto gc = make_conv2d_geometry(2, 96, 96, 5, 7, 1, 1, 5, 1, 1, 0, 0, 0, 0);
  const auto gcs = make_conv2d_geometry(2, 255, 128, 6, 17, 1, 1, 6, 2, 2, 0, 0, 0, 0);
  CHECK(gc.N * gc.Ho * gc.Wo >= conv_detail::kPointwiseChunkedPixels && gcs.N * gcs.Ho * gcs.Wo == 16384);
  // 64 -> 64 channels: chunks of 1024 pixels in sub-blocks of 512 (doubles) and 1024 (floats).
  const auto gsub = make_conv2d_geometry(1, 128, 128, 64, 64, 1, 1, 64, 1, 1, 0, 0, 0, 0);
  for (const auto* g : {&gc, &gcs, &gsub}) {
    CHECK(std::string(conv_kernel_choice<float>(*g).backward_weight) == "1x1_gemm");
    check_everywhere<double>(*g, 1e-12, 11);
    check_everywhere<float>(*g, g == &gsub ? 1e-3 : 1e-4, 12);  // sums of 16384+ float products
  }
  // Too few channels to pay for the GEMM's packing but also too few filters (4 Q <= NR, floats,
  // every level) for the direct kernel's tile, and a 1x1 the narrow kernel declines (3-31
  // filters under 32 Q channels): the GEMM all the same.
  const auto gtiny = make_conv2d_geometry(4, 14, 14, 2, 4, 1, 1, 2, 1, 1, 0, 0, 0, 0);
  at_every_level_and_thread_count([&](int, int) {
    CHECK(std::string(conv_kernel_choice<float>(gtiny).forward) == "1x1_gemm");
  });
  check_everywhere<float>(gtiny, 2e-5, 13);
  check_everywhere<double>(gtiny, 1e-12, 13);
  // A strided 1x1 with filters at most 128 and at most its channels (>= 64), on more than 800
  // output pixels: the indirect forward reads the pixels in place (strided_pointwise_indirect)
  // at the vector levels; with more filters than channels, or at the portable level, the
  // gathered GEMM. Strides (2, 2) and (3, 2); 2 x 20 x 21 = 840 and 2 x 14 x 31 = 868 pixels.
  const auto gsi = make_conv2d_geometry(2, 40, 42, 64, 48, 1, 1, 64, 2, 2, 0, 0, 0, 0);
  const auto gsi3 = make_conv2d_geometry(2, 40, 62, 80, 80, 1, 1, 80, 3, 2, 0, 0, 0, 0);
  const auto gsw = make_conv2d_geometry(2, 40, 42, 64, 96, 1, 1, 64, 2, 2, 0, 0, 0, 0);
  const auto gsf = make_conv2d_geometry(2, 38, 42, 64, 48, 1, 1, 64, 2, 2, 0, 0, 0, 0);  // 798 pixels
  CHECK(gsi.N * gsi.Ho * gsi.Wo == 840 && gsi3.N * gsi3.Ho * gsi3.Wo == 868 && gsf.N * gsf.Ho * gsf.Wo == 798);
  at_every_level_and_thread_count([&](int level, int) {
    const bool vector = level > static_cast<int>(SimdLevel::Portable);
    CHECK(std::string(conv_kernel_choice<float>(gsi).forward) == (vector ? "indirect" : "1x1_gemm"));
    CHECK(std::string(conv_kernel_choice<double>(gsi3).forward) == (vector ? "indirect" : "1x1_gemm"));
    CHECK(std::string(conv_kernel_choice<float>(gsi).backward_input) == "1x1_gemm");
    CHECK(std::string(conv_kernel_choice<float>(gsw).forward) == "1x1_gemm");
    CHECK(std::string(conv_kernel_choice<float>(gsf).forward) == "1x1_gemm");
  });
  for (const auto* g : {&gsi, &gsi3}) {
    check_everywhere<double>(*g, 1e-12, 17);
    check_everywhere<float>(*g, 2e-5, 18);
  }
  // A padded 1x1 (its border outputs are the bias alone) is not a plain GEMM.
  const auto gp = make_conv2d_geometry(1, 5, 5, 16, 16, 1, 1, 16, 1, 1, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(gp).forward) != "1x1_gemm");
  check_everywhere<double>(gp, 1e-12, 9);
}

// Widths that take each register tile of every level (at AVX-512: the 2-vector tile for 32 /
// 64 / 128+ columns, the 1-vector one otherwise), through every pass, incl. the direct forward.
void test_register_tiles() {
  check_everywhere<float>(make_conv2d_geometry(2, 9, 10, 32, 64, 3, 3, 32, 1, 1, 1, 1, 1, 1), 2e-5, 21);
  check_everywhere<double>(make_conv2d_geometry(2, 9, 10, 32, 64, 3, 3, 32, 1, 1, 1, 1, 1, 1), 1e-12, 22);
  check_everywhere<double>(make_conv2d_geometry(1, 11, 13, 16, 48, 3, 3, 16, 2, 2, 1, 1, 1, 1), 1e-12, 23);
  check_everywhere<float>(make_conv2d_geometry(2, 15, 14, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1), 2e-5, 24);
  check_everywhere<double>(make_conv2d_geometry(2, 15, 14, 1, 32, 5, 5, 1, 2, 2, 2, 2, 2, 2), 1e-12, 25);
  check_everywhere<double>(make_conv2d_geometry(1, 8, 9, 130, 16, 3, 3, 130, 1, 1, 0, 0, 0, 0), 1e-12, 26);
  check_everywhere<double>(make_conv2d_geometry(2, 12, 12, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2), 1e-12, 27);
  // The direct forward's rows cut into full blocks of MR pixels and shorter tail blocks
  // (direct_row_blocks): rows of 32 run 6+6+6+6+4+4 (AVX2) and 12+12+8 (AVX-512), rows the
  // full tile divides have no tail, and a row shorter than every block is one tail block.
  CHECK(conv_detail::direct_row_blocks(32, 6, 4).full == 4 && conv_detail::direct_row_blocks(32, 12, 8).full == 2);
  CHECK(conv_detail::direct_row_blocks(30, 6, 4).full == 5 && conv_detail::direct_row_blocks(48, 12, 8).full == 4);
  CHECK(conv_detail::direct_row_blocks(7, 6, 4).full == 0 && conv_detail::direct_row_blocks(7, 12, 8).full == 0);
  CHECK(conv_detail::direct_row_blocks(28, 12, 8).full == 1 && conv_detail::direct_row_blocks(32, 6, 0).full == 6);
  // With the 14-row tile beside the 12-row one (AVX-512): 28 = 14 + 14 and 56 = 4 x 14 (as
  // many pixels in fewer blocks), 14 = 14 (fewer pixels than 8 + 8), but 32 stays 12 + 12 + 8
  // (14 + 14 + 8 computes 4 more) and 16 stays 8 + 8 (a tie).
  {
    const auto r28 = conv_detail::direct_row_blocks(28, 12, 8, 14), r56 = conv_detail::direct_row_blocks(56, 12, 8, 14);
    const auto r14 = conv_detail::direct_row_blocks(14, 12, 8, 14), r32 = conv_detail::direct_row_blocks(32, 12, 8, 14);
    const auto r16 = conv_detail::direct_row_blocks(16, 12, 8, 14);
    CHECK(r28.mr == 14 && r28.full == 2 && r28.tails == 0 && r28.span == 28);
    CHECK(r56.mr == 14 && r56.full == 4 && r56.tails == 0);
    CHECK(r14.mr == 14 && r14.full == 1 && r14.span == 14);
    CHECK(r32.mr == 12 && r32.full == 2 && r32.tails == 1 && r32.span == 32);
    CHECK(r16.mr == 12 && r16.full == 0 && r16.tails == 2);
    CHECK(conv_detail::direct_row_blocks(28, 12, 8).mr == 12);  // no wide tile
  }
  // The tail kernels through every pass: rows of 32 (7x7 stride 2, C = 3; tails at AVX2 and
  // AVX-512), rows of 7 (one partial tail block), rows of 28 (C = 1; 14 + 14 at AVX-512, the
  // wide tile; 6 x 4 + 4 at AVX2) and, below, the flipped dX of a 5x5 on rows of 16 (8 + 8
  // at AVX-512).
  check_everywhere<float>(make_conv2d_geometry(2, 9, 7, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1), 2e-5, 31);
  check_everywhere<double>(make_conv2d_geometry(2, 9, 7, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1), 1e-12, 31);
  check_everywhere<float>(make_conv2d_geometry(3, 28, 28, 1, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 2e-5, 32);
  check_everywhere<double>(make_conv2d_geometry(2, 6, 28, 1, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1e-12, 32);
  // The stride-2 dX's phases of 14 and 28 pixels per row (inputs 28 and 56 wide): the wide
  // tile at AVX-512 in the direct phases (14 and 14 + 14), two 2-vector panels (C = 64).
  for (const Conv2dGeometry& g : {make_conv2d_geometry(2, 6, 28, 64, 32, 3, 3, 64, 2, 2, 1, 1, 1, 1),
                                  make_conv2d_geometry(1, 5, 56, 64, 32, 3, 3, 64, 2, 2, 1, 1, 1, 1)}) {
    CHECK(std::string(conv_kernel_choice<float>(g).backward_input) == "phases_direct");
    check_everywhere<float>(g, 2e-5, 33);
    check_everywhere<double>(g, 1e-12, 33);
  }
  check_everywhere<float>(make_conv2d_geometry(2, 64, 64, 3, 32, 7, 7, 3, 2, 2, 3, 3, 3, 3), 1e-4, 28);  // dW: sums of 2048 products
  check_everywhere<float>(make_conv2d_geometry(1, 20, 95, 3, 32, 7, 7, 3, 2, 2, 3, 3, 3, 3), 2e-5, 29);
  // The flipped dX of a 5x5 on rows of 16 (C = 32 outputs: the 2-vector tile, two 8-row tails);
  // "auto" runs this dX by Winograd F(2x2,5x5) (test_winograd), "direct" by the flipped kernel.
  const auto gf = make_conv2d_geometry(2, 9, 16, 32, 16, 5, 5, 32, 1, 1, 2, 2, 2, 2);
  set_conv_algorithm(ConvAlgorithm::Direct);
  CHECK(std::string(conv_kernel_choice<float>(gf).backward_input) == "flipped_direct");
  check_everywhere<double>(gf, 1e-12, 30);
  check_everywhere<float>(gf, 2e-5, 30);
  set_conv_algorithm(ConvAlgorithm::Auto);
}
// At AVX-512, 17-31 float columns (9-15 doubles) keep the 12 x 2-vector tile (one panel of
// 32) for the forward and dX, the 24 x 1-vector one (two panels of 16) for dW; other widths
// take the same row in every pass. Through the entry points against the oracle, every level:
// 24 filters (strided: indirect forward) and 20 channels (phases_direct dX).
void test_avx512_tile_per_pass() {
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    nablagrad::set_simd_level(SimdLevel::AVX512);
    for (int64_t n : {17, 20, 24, 31})
      CHECK(conv_kernels_for_width<float>(n).NR == 32 && conv_kernels_for_width<float>(n, true).NR == 16);
    for (int64_t n : {9, 12, 15})
      CHECK(conv_kernels_for_width<double>(n).NR == 16 && conv_kernels_for_width<double>(n, true).NR == 8);
    for (int64_t n : {8, 16, 40, 48}) CHECK(conv_kernels_for_width<float>(n).NR == conv_kernels_for_width<float>(n, true).NR);
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  const auto g = make_conv2d_geometry(2, 17, 15, 20, 24, 3, 3, 20, 2, 2, 1, 1, 0, 1);
  check_everywhere<float>(g, 2e-5, 71);
  check_everywhere<double>(make_conv2d_geometry(2, 17, 15, 10, 12, 3, 3, 10, 2, 2, 1, 1, 0, 1), 1e-12, 72);
}

// Each kernel of a ConvKernels row straight (not through the selection), all passes, against
// the oracle: direct and indirect forward, the gather GEMM's tile (col2im dX),
// the direct dX of the stride phases, and the kernel gradient's tile and column kernels.
template <typename T>
void check_kernel_row(const conv_detail::ConvKernels<T>& cfg, const Conv2dGeometry& g, double tol, uint32_t seed) {
  const Case<T> c = make_case<T>(g, seed);
  const auto &x = c.x, &w = c.w, &b = c.b, &dy = c.dy;
  const Results& ref = c.ref;
  std::vector<T> y(ref.y.size()), dx(x.size()), dw(w.size()), db(g.Q);
  auto same_y = [&] { return max_rel_diff(std::vector<double>(y.begin(), y.end()), ref.y) < tol; };
  auto same_dx = [&] { return max_rel_diff(std::vector<double>(dx.begin(), dx.end()), ref.dx) < tol; };
  auto same_dw = [&] {
    return max_rel_diff(std::vector<double>(dw.begin(), dw.end()), ref.dw) < tol &&
           max_rel_diff(std::vector<double>(db.begin(), db.end()), ref.db) < tol;
  };
  conv_detail::forward_direct(cfg, g, x.data(), w.data(), b.data(), y.data());
  CHECK(same_y());
  conv_detail::forward_indirect(cfg, g, x.data(), w.data(), b.data(), y.data());
  CHECK(same_y());
  conv_detail::backward_input_col2im(cfg, g, dy.data(), w.data(), dx.data());
  CHECK(same_dx());
  if (g.stride_h > 1 || g.stride_w > 1) {
    conv_detail::backward_input_phases_direct(cfg, g, dy.data(), w.data(), dx.data());
    CHECK(same_dx());
  }
  conv_detail::backward_weight_direct(cfg, g, x.data(), dy.data(), dw.data(), db.data());
  CHECK(same_dw());
  conv_detail::backward_weight_gemm(cfg, g, x.data(), dy.data(), dw.data(), db.data());
  CHECK(same_dw());
}

// The AVX2 level's 4 x 3-vector tile (24 floats / 12 doubles wide) for widths of 3 vectors
// that the 6 x 2 tile would pad (conv_kernels_for_width): chosen for exactly those widths,
// each of its kernels right in every pass, and the passes through the entry points at every
// level for 24 and 72 filters / channels (floats) and 12 (doubles).
void test_avx2_three_vector_tile() {
  if (nablagrad::cpu_simd_level() < SimdLevel::AVX2) return;
  nablagrad::set_simd_level(SimdLevel::AVX2);
  for (int64_t n : {24, 72, 120}) CHECK(conv_kernels_for_width<float>(n).NR == 24 && conv_kernels_for_width<float>(n).MR == 4);
  for (int64_t n : {8, 16, 32, 40, 48, 56, 96}) CHECK(conv_kernels_for_width<float>(n).NR == 16);
  for (int64_t n : {12, 36}) CHECK(conv_kernels_for_width<double>(n).NR == 12);
  for (int64_t n : {4, 8, 20, 24}) CHECK(conv_kernels_for_width<double>(n).NR == 8);
  const auto s1 = make_conv2d_geometry(2, 9, 10, 24, 24, 3, 3, 24, 1, 1, 1, 1, 1, 1);
  const auto s2 = make_conv2d_geometry(2, 13, 15, 24, 72, 3, 3, 24, 2, 2, 1, 0, 1, 2);
  const auto s2d = make_conv2d_geometry(3, 11, 9, 12, 12, 3, 2, 12, 2, 3, 0, 1, 1, 0);
  for (const auto* g : {&s1, &s2}) check_kernel_row(conv_detail::conv_kernels<float>(SimdLevel::AVX2, true), *g, 2e-5, 61);
  for (const auto* g : {&s1, &s2, &s2d}) check_kernel_row(conv_detail::conv_kernels<double>(SimdLevel::AVX2, true), *g, 1e-12, 62);
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  check_everywhere<float>(make_conv2d_geometry(2, 9, 10, 6, 24, 3, 3, 6, 1, 1, 1, 1, 1, 1), 2e-5, 63);
  check_everywhere<float>(s2, 2e-5, 64);
  check_everywhere<float>(make_conv2d_geometry(1, 6, 7, 72, 24, 3, 3, 72, 1, 1, 1, 1, 1, 1), 2e-5, 65);
  check_everywhere<double>(s2d, 1e-12, 66);
}


// The stride-1 direct kernel that broadcasts each input value once (direct_s1_kernel_avx512,
// the 1-vector AVX-512 tile, FW = 3 or 5): rows narrower than its 24 pixels and not a multiple
// of them, FH != FW, uneven paddings, Q over several panels and below one, C = 1, and its dX
// (the flipped kernel of a 5x5 on 16 channels).
void test_direct_s1() {
  set_conv_algorithm(ConvAlgorithm::Direct);  // the direct kernels (at AVX2 "auto" runs Winograd for 16 -> 16)
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    nablagrad::set_simd_level(SimdLevel::AVX512);
    CHECK(conv_detail::direct_s1_kernel(conv_kernels_for_width<float>(16), 5) != nullptr);
    CHECK(conv_detail::direct_s1_kernel(conv_kernels_for_width<double>(24), 3) != nullptr);
    CHECK(conv_detail::direct_s1_kernel(conv_kernels_for_width<float>(16), 7) == nullptr);
    CHECK(conv_detail::direct_s1_kernel(conv_kernels_for_width<float>(64), 5) == nullptr);  // 2-vector tile
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 13, 30, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),  // 30 = 24 + 6
      make_conv2d_geometry(3, 7, 9, 12, 80, 3, 3, 12, 1, 1, 1, 1, 1, 1),    // 9 < 24, 5 panels
      make_conv2d_geometry(2, 9, 51, 5, 12, 3, 5, 5, 1, 1, 0, 2, 1, 3),     // FH != FW, Q < NR
      make_conv2d_geometry(2, 10, 26, 1, 20, 5, 5, 1, 1, 1, 2, 2, 2, 2),    // C = 1
      make_conv2d_geometry(1, 12, 50, 16, 16, 5, 3, 16, 1, 1, 2, 2, 1, 1)};
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<float>(g).forward) == "direct");
    check_everywhere<double>(g, 1e-12, 42);
    check_everywhere<float>(g, 2e-5, 43);
  }
  CHECK(std::string(conv_kernel_choice<float>(shapes[0]).backward_input) == "flipped_direct");
  // Beside the stride-1 kernel, the remainder of a row past its whole 24-pixel blocks runs
  // as up to two 8-pixel direct blocks (direct_row_blocks_s1), else as one more s1 block.
  auto blocks = [](int64_t Wo) {
    const auto rb = conv_detail::direct_row_blocks_s1(Wo, 24, 8);
    return std::vector<int64_t>{rb.full, rb.tails, rb.span};
  };
  CHECK(blocks(32) == (std::vector<int64_t>{1, 1, 32}));
  CHECK(blocks(28) == (std::vector<int64_t>{1, 1, 32}));
  CHECK(blocks(16) == (std::vector<int64_t>{0, 2, 16}));
  CHECK(blocks(14) == (std::vector<int64_t>{0, 2, 16}));
  CHECK(blocks(43) == (std::vector<int64_t>{2, 0, 48}));  // 19 left: one more s1 block
  CHECK(blocks(48) == (std::vector<int64_t>{2, 0, 48}));
  CHECK(blocks(7) == (std::vector<int64_t>{0, 1, 8}));
  CHECK(conv_detail::direct_row_blocks_s1(30, 24, 0).full == 2);  // no tail kernel
  const Conv2dGeometry tails[] = {
      make_conv2d_geometry(2, 7, 32, 16, 16, 3, 3, 16, 1, 1, 1, 1, 1, 1),  // 24 + 8
      make_conv2d_geometry(2, 5, 28, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),  // 24 + 8 (4 used)
      make_conv2d_geometry(1, 6, 16, 8, 16, 3, 3, 8, 1, 1, 1, 1, 1, 1),    // 8 + 8
      make_conv2d_geometry(1, 4, 14, 16, 16, 3, 3, 16, 1, 1, 1, 1, 1, 1),  // 8 + 8 (6 used)
      make_conv2d_geometry(1, 4, 43, 16, 16, 3, 3, 16, 1, 1, 1, 1, 1, 1),  // 24 + 24 (19 used)
      make_conv2d_geometry(1, 10, 64, 3, 16, 7, 7, 3, 2, 2, 3, 3, 3, 3)};  // strided: 24 + 8
  for (const Conv2dGeometry& g : tails) {
    CHECK(std::string(conv_kernel_choice<float>(g).forward) == "direct");
    check_everywhere<double>(g, 1e-12, 44);
    check_everywhere<float>(g, 2e-5, 45);
  }
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// The stride-1 kernel of the AVX-512 2-vector tile (direct_s1_two_kernel_avx512: 7 wide, blocks
// of 8 pixels and tails of 4), for the forward and, on the flipped kernel, the input gradient:
// chosen at AVX-512 for 7-wide kernels on rows of >= 24 pixels (not on rows of 23, not for 48
// filters, which the 3-vector tile takes, not for 5-wide kernels); right at every level and
// thread count on rows of 24, 25 (one tail), 30 (two tails) and 32, a 3 x 7 kernel with
// vertical stride 2, uneven paddings, 2 panels of filters, float and double.
void test_direct_s1_two() {
  const auto g24 = make_conv2d_geometry(2, 9, 24, 8, 32, 7, 7, 8, 1, 1, 3, 3, 3, 3);
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    nablagrad::set_simd_level(SimdLevel::AVX512);
    const auto main = conv_kernels_for_width<float>(32);
    CHECK(conv_detail::direct_s1_two_for(main, g24));
    CHECK(!conv_detail::direct_s1_two_for(main, make_conv2d_geometry(2, 9, 23, 8, 32, 7, 7, 8, 1, 1, 3, 3, 3, 3)));
    CHECK(!conv_detail::direct_s1_two_for(main, make_conv2d_geometry(2, 9, 24, 8, 32, 5, 5, 8, 1, 1, 2, 2, 2, 2)));
    CHECK(!conv_detail::direct_s1_two_for(conv_kernels_for_width<float>(48),
                                          make_conv2d_geometry(2, 9, 24, 8, 48, 7, 7, 8, 1, 1, 3, 3, 3, 3)));
    CHECK(!conv_detail::direct_s1_two_for(conv_kernels_for_width<float>(16), g24));  // 1-vector tile
    CHECK(std::string(conv_kernel_choice<float>(g24).forward) == "direct");
    const auto gi = make_conv2d_geometry(2, 9, 24, 32, 16, 7, 7, 32, 1, 1, 3, 3, 3, 3);  // dX: 32 wide
    CHECK(std::string(conv_kernel_choice<float>(gi).backward_input) == "flipped_direct");
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  const Conv2dGeometry shapes[] = {
      g24,
      make_conv2d_geometry(1, 8, 25, 5, 64, 7, 7, 5, 1, 1, 3, 2, 3, 3),    // 25 = 3 x 8 + 1 tail, 2 panels
      make_conv2d_geometry(2, 7, 30, 6, 32, 7, 7, 6, 1, 1, 2, 4, 1, 5),    // 30: two tails, uneven
      make_conv2d_geometry(1, 11, 32, 3, 32, 3, 7, 3, 2, 1, 1, 1, 3, 3),   // 3 x 7, S_h 2
      make_conv2d_geometry(1, 6, 32, 16, 16, 7, 7, 16, 1, 1, 3, 3, 3, 3),   // 16 doubles: 2 vectors
      make_conv2d_geometry(2, 9, 24, 32, 16, 7, 7, 32, 1, 1, 3, 3, 3, 3)};  // dX on it
  for (const Conv2dGeometry& g : shapes) {
    check_everywhere<double>(g, 1e-12, 47);
    check_everywhere<float>(g, 1e-4, 48);
  }
}

// Stride 1 without left or right padding, on output rows that the direct kernel's blocks cover
// badly: the indirect kernel, which walks the pixels flat across rows (select_forward). LeNet's
// second layer (64,14,14,6->16, 5x5), rows of 10: at AVX-512 two blocks of 8 of the 24 x 1
// tile, on the portable 6-row tile two blocks of 6 (12 pixels) -> indirect; at AVX2 a block of
// 6 and one of 4 (no waste) -> direct. Kept direct at every level: the same with padding
// (border copies for every pixel), and at AVX-512 rows of 26 (a stride-1 block of 24 + 8) and
// of 14 (16 = 1.14 x 14). The indirect kernel sums in the direct kernel's order: the same bits.
void test_indirect_short_rows() {
  // (16 images: 1600 output pixels, past the 800 that go to the GEMM.)
  const auto lenet = make_conv2d_geometry(16, 14, 14, 6, 16, 5, 5, 6, 1, 1, 0, 0, 0, 0);
  const auto padded = make_conv2d_geometry(16, 9, 9, 6, 16, 5, 5, 6, 1, 1, 2, 2, 2, 2);
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    const auto lv = static_cast<SimdLevel>(level);
    nablagrad::set_simd_level(lv);
    const char* expect = lv == SimdLevel::AVX2 ? "direct" : "indirect";
    CHECK(std::string(conv_kernel_choice<float>(lenet).forward) == expect);
    CHECK(std::string(conv_kernel_choice<float>(padded).forward) == "direct");
    if (lv == SimdLevel::AVX512) {
      CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(16, 30, 30, 6, 16, 5, 5, 6, 1, 1, 0, 0, 0, 0)).forward) == "direct");
      CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(16, 18, 18, 6, 16, 5, 5, 6, 1, 1, 0, 0, 0, 0)).forward) == "direct");
    }
    // The same bits by either kernel, float and double (a few filters past a panel too).
    for (int64_t q : {16, 20}) {
      const auto g = make_conv2d_geometry(3, 14, 14, 6, q, 5, 5, 6, 1, 1, 1, 0, 0, 0);
      const Case<float> cf = make_case<float>(g, 61);
      const Case<double> cd = make_case<double>(g, 62);
      auto both = [&g](const auto& c) {
        using T = typename std::decay_t<decltype(c.x)>::value_type;
        const auto cfg = conv_kernels_for_width<T>(g.Q);
        std::vector<T> y0(static_cast<size_t>(g.N * g.Ho * g.Wo * g.Q), T(7)), y1 = y0;
        conv_detail::forward_direct(cfg, g, c.x.data(), c.w.data(), c.b.data(), y0.data());
        conv_detail::forward_indirect(cfg, g, c.x.data(), c.w.data(), c.b.data(), y1.data());
        CHECK(bitwise_equal(y0, y1));
      };
      both(cf);
      both(cd);
    }
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  check_everywhere<double>(lenet, 1e-12, 63);
  check_everywhere<float>(lenet, 2e-5, 64);
}

// Strided first layers with wide kernels (FW >= 7 on <= 8 channels, runs of >= 32 values) keep
// the direct forward on a packed panel of up to 64 KiB, its depth past KC (AlexNet's 11x11 on
// 3 channels: 363), where the output rows fill its blocks; 5x5 on 8 channels and rows the
// blocks cover badly take the indirect kernel (select_forward). Right at every level and
// thread count, float and double.
void test_direct_wide_first_layers() {
  const auto alexnet = make_conv2d_geometry(8, 224, 224, 3, 64, 11, 11, 3, 4, 4, 2, 2, 2, 2);
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    CHECK(std::string(conv_kernel_choice<float>(alexnet).forward) == "direct");
    CHECK(std::string(conv_kernel_choice<double>(alexnet).forward) == "direct");
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(8, 112, 112, 6, 32, 7, 7, 6, 2, 2, 3, 3, 3, 3)).forward) ==
          "direct");
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(8, 64, 64, 8, 64, 5, 5, 8, 2, 2, 2, 2, 2, 2)).forward) ==
          "indirect");
    if (static_cast<SimdLevel>(level) == SimdLevel::AVX512)  // rows of 24 pixels for 17
      CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(4, 72, 72, 3, 16, 11, 11, 3, 4, 4, 2, 2, 2, 2)).forward) ==
            "indirect");
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(5, 60, 60, 3, 32, 11, 11, 3, 4, 4, 2, 2, 2, 2),  // K = 363, rows of 14
      make_conv2d_geometry(4, 32, 32, 6, 40, 7, 7, 6, 2, 2, 3, 3, 3, 3),    // K = 294, 40 filters
      make_conv2d_geometry(2, 45, 37, 4, 32, 9, 9, 4, 2, 3, 4, 3, 2, 5)};   // uneven strides and pads
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<float>(g).forward) == "direct");
    check_everywhere<double>(g, 1e-12, 65);
    check_everywhere<float>(g, 1e-4, 66);
  }
}

// The 1-vector AVX2 direct tiles (use_direct_one, with_direct_one; 12, 14 and 4 ymm rows) for
// outputs of at most one AVX2 vector: the direct forward of 5-8 filters (3-4 in double) ahead of
// the narrow kernel where its runs are short, and the strided input gradient's phases of <= 8
// channels. The choices at each level, the plan's tile, and shapes whose rows take each of the
// three tiles against the oracle at every level and thread count.
void test_direct_one_vector() {
  const auto lenet = make_conv2d_geometry(3, 28, 28, 1, 6, 5, 5, 1, 1, 1, 0, 0, 0, 0);    // rows of 24: 12 + 12
  const auto rows17 = make_conv2d_geometry(2, 20, 17, 4, 8, 5, 5, 4, 1, 1, 2, 2, 2, 2);   // 17: 14 + 4
  const auto first = make_conv2d_geometry(2, 30, 30, 3, 7, 7, 7, 3, 2, 2, 3, 3, 3, 3);    // strided first layer
  const auto odd = make_conv2d_geometry(2, 18, 31, 5, 6, 3, 3, 5, 1, 1, 1, 1, 1, 1);      // dX flipped: 5 channels
  const auto phases8 = make_conv2d_geometry(2, 28, 28, 8, 24, 7, 7, 8, 2, 2, 0, 0, 0, 0);  // dX phases of 14: 14
  const auto phases6 = make_conv2d_geometry(2, 29, 27, 6, 16, 3, 3, 6, 2, 2, 1, 1, 1, 1);  // of 15 and 14
  const auto long_runs = make_conv2d_geometry(2, 20, 20, 24, 8, 7, 7, 24, 1, 1, 0, 0, 0, 0);  // FW*C = 168 >= 160
  const auto four = make_conv2d_geometry(2, 20, 20, 3, 4, 5, 5, 3, 1, 1, 2, 2, 2, 2);
  // Strided dX of 3-4 channels under at most 8 filters: the phases too (uneven strides, pads).
  const auto rgb_phases = make_conv2d_geometry(2, 41, 38, 3, 8, 7, 7, 3, 2, 2, 3, 3, 3, 3);
  const auto four_phases = make_conv2d_geometry(2, 33, 30, 4, 7, 5, 4, 4, 2, 3, 2, 1, 1, 2);
  const auto rgb_col2im = make_conv2d_geometry(2, 41, 38, 3, 16, 7, 7, 3, 2, 2, 3, 3, 3, 3);
  const auto two_phases = make_conv2d_geometry(2, 21, 19, 2, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1);  // double: 2 of 4
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    const auto lv = static_cast<SimdLevel>(level);
    nablagrad::set_simd_level(lv);
    const auto f8 = conv_kernels_for_width<float>(8), f9 = conv_kernels_for_width<float>(9);
    const auto d4 = conv_kernels_for_width<double>(4);
    if (lv == SimdLevel::Portable) {
      CHECK(!conv_detail::use_direct_one(f8, 8) && !conv_detail::use_direct_one(d4, 4));
      continue;
    }
    CHECK(conv_detail::use_direct_one(f8, 8) && !conv_detail::use_direct_one(f9, 9));
    CHECK(conv_detail::use_direct_one(d4, 4) && !conv_detail::use_direct_one(conv_kernels_for_width<double>(5), 5));
    CHECK(conv_detail::with_direct_one(f8).NR == 8 && conv_detail::with_direct_one(d4).NR == 4);
    for (const auto* g : {&lenet, &rows17, &first, &odd})
      CHECK(std::string(conv_kernel_choice<float>(*g).forward) == "direct");
    CHECK(conv_detail::direct_forward_plan(conv_kernels_for_width<float>(6), lenet).cfg.NR == 8);
    const auto rb17 = conv_detail::direct_forward_plan(f8, rows17).rb;
    CHECK(rb17.mr == conv_detail::kDirectOneWideRows && rb17.full == 1 && rb17.tails == 1);
    CHECK(std::string(conv_kernel_choice<float>(odd).backward_input) == "flipped_direct");
    CHECK(std::string(conv_kernel_choice<float>(phases8).backward_input) == "phases_direct");
    CHECK(std::string(conv_kernel_choice<float>(phases6).backward_input) == "phases_direct");
    CHECK(std::string(conv_kernel_choice<float>(long_runs).forward) == "narrow");
    // 5 filters: runs of 39 values direct, 48 narrow (the limit is 40).
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 12, 12, 13, 5, 3, 3, 13, 1, 1, 1, 1, 1, 1)).forward) ==
          "direct");
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 12, 12, 16, 5, 3, 3, 16, 1, 1, 1, 1, 1, 1)).forward) ==
          "narrow");
    CHECK(std::string(conv_kernel_choice<float>(four).forward) == "narrow");
    CHECK(std::string(conv_kernel_choice<double>(four).forward) == "direct");
    CHECK(std::string(conv_kernel_choice<float>(rgb_phases).backward_input) == "phases_direct");
    CHECK(std::string(conv_kernel_choice<float>(four_phases).backward_input) == "phases_direct");
    CHECK(std::string(conv_kernel_choice<float>(rgb_col2im).backward_input) == "col2im");
    CHECK(std::string(conv_kernel_choice<float>(two_phases).backward_input) != "phases_direct");
    CHECK(std::string(conv_kernel_choice<double>(two_phases).backward_input) == "phases_direct");
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  for (const auto* g : {&lenet, &rows17, &first, &odd, &phases8, &phases6, &four, &rgb_phases, &four_phases, &two_phases}) {
    check_everywhere<double>(*g, 1e-12, 67);
    check_everywhere<float>(*g, 1e-4, 68);
  }
}

// The direct kernel with its pixel stride fixed at compile time (direct_kernel_for: floats,
// AVX-512's 12- and 14-row and AVX2's 6-row 2-vector tiles, strides 1, 2, 3, 4, 6, 8, 12): chosen for exactly
// those, the same bits as the runtime-stride kernel (with and without bias, a wider output
// row, kernel rows skipped), and the first layers that run it right through the entry points.
void test_direct_fixed_stride() {
  std::mt19937 rng(71);
  const int64_t hs = 301, len = 9, ldo = 40;
  const auto a = random_vector<float>(3 * hs + 14 * 12 + len, rng);
  const auto b = random_vector<float>(3 * len * 32, rng), bias = random_vector<float>(32, rng);
  // The level's tiles of mrs rows: each fixed-stride copy against the tile's own kernel.
  auto same_bits = [&](const conv_detail::ConvKernels<float>& cfg, std::initializer_list<int64_t> mrs) {
    for (int64_t rs : {1, 2, 3, 4, 6, 8, 12})
      for (int64_t mr : mrs) {
        const auto own = mr == cfg.MR ? cfg.direct : cfg.direct_wide;
        const auto fixed = conv_detail::direct_kernel_for(cfg, mr, rs);
        CHECK(fixed != nullptr && fixed != own);
        for (int64_t nh : {3, 2, 0})
          for (const float* bp : {bias.data(), static_cast<const float*>(nullptr)}) {
            std::vector<float> y0(static_cast<size_t>(mr * ldo), 5.f), y1 = y0;
            own(nh, len, a.data(), rs, hs, b.data(), y0.data(), ldo, bp);
            fixed(nh, len, a.data(), rs, hs, b.data(), y1.data(), ldo, bp);
            CHECK(bitwise_equal(y0, y1));
          }
      }
    for (int64_t rs : {5, 7, 16, 64}) CHECK(conv_detail::direct_kernel_for(cfg, cfg.MR, rs) == cfg.direct);
  };
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX2) {
    const auto alt = conv_detail::conv_kernels<float>(SimdLevel::AVX2, true);
    same_bits(conv_detail::conv_kernels<float>(SimdLevel::AVX2), {6});
    CHECK(conv_detail::direct_kernel_for(alt, 4, 6) == alt.direct);
  }
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    const auto cfg = conv_detail::conv_kernels<float>(SimdLevel::AVX512);
    same_bits(cfg, {12, 14});
    const auto alt = conv_detail::conv_kernels<float>(SimdLevel::AVX512, true);
    CHECK(conv_detail::direct_kernel_for(alt, 24, 6) == alt.direct);
    const auto dbl = conv_detail::conv_kernels<double>(SimdLevel::AVX512);
    CHECK(conv_detail::direct_kernel_for(dbl, 12, 6) == dbl.direct);
  }
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 9, 56, 3, 32, 3, 3, 3, 2, 2, 1, 1, 1, 1),   // S_w C = 6, rows 14 + 14
      make_conv2d_geometry(2, 7, 24, 3, 64, 3, 3, 3, 1, 1, 1, 1, 1, 1),   // 3, rows 12 + 12, 2 panels
      make_conv2d_geometry(2, 5, 32, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1),   // 3, rows 12 + 12 + 8 (runtime-stride tail)
      make_conv2d_geometry(1, 9, 64, 3, 32, 3, 3, 3, 2, 2, 1, 1, 1, 1),   // 6, the same rows of 32
      make_conv2d_geometry(3, 8, 28, 1, 32, 5, 5, 1, 1, 1, 2, 2, 2, 2),   // 1, 5x5
      make_conv2d_geometry(1, 9, 48, 4, 64, 3, 3, 4, 2, 2, 1, 1, 1, 1),   // 8
      make_conv2d_geometry(2, 16, 96, 3, 96, 4, 4, 3, 4, 4, 0, 0, 0, 0),  // 12, 4x4 patches
      make_conv2d_geometry(1, 6, 36, 2, 32, 3, 3, 2, 1, 1, 1, 1, 1, 1),   // 2, rows 12 x 3
      make_conv2d_geometry(2, 9, 53, 1, 32, 3, 3, 1, 2, 4, 1, 0, 1, 1),   // 4 (S_w 4), uneven padding
      make_conv2d_geometry(1, 30, 60, 3, 64, 7, 7, 3, 2, 2, 3, 3, 3, 3)}; // 6, the 7x7 first layer
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<float>(g).forward) == "direct");
    check_everywhere<float>(g, 2e-5, 46);
  }
}

// The indirect forward called straight with the row for Q filters, against the oracle at
// every level the CPU has, at 1-3 threads bitwise the same, into a y that it must overwrite.
template <typename T>
void check_indirect_straight(const Conv2dGeometry& g, double tol, uint32_t seed) {
  const Case<T> c = make_case<T>(g, seed);
  std::vector<T> first;
  at_every_level_and_thread_count([&](int, int threads) {
    std::vector<T> y(c.ref.y.size(), T(7));  // overwritten, not added to
    conv_detail::forward_indirect(conv_kernels_for_width<T>(g.Q), g, c.x.data(), c.w.data(), c.b.data(), y.data());
    if (threads == 1) first = y;
    CHECK(max_rel_diff(std::vector<double>(y.begin(), y.end()), c.ref.y) < tol);
    CHECK(bitwise_equal(y, first));
  });
}

// The indirect forward on a kernel whose packed panels pass 256 KiB (K = 3136: 802 KB of
// 64-filter panel on the AVX-512 6 x 4-vector tile, 200 KB on AVX2's 16 filters), straight
// (the selection sends so few pixels to gemm()), against the oracle at every level.
void test_indirect_big_panel() {
  const auto g = make_conv2d_geometry(2, 9, 9, 64, 64, 7, 7, 64, 1, 1, 3, 3, 3, 3);
  check_indirect_straight<float>(g, 2e-4, 38);
  check_indirect_straight<double>(g, 1e-12, 39);
  // A kernel past 1 MiB (1.15 MiB, K = 1296 x 232 filters) that the forward's indirect kernel
  // still takes (forward_kernel_fits_cache; 232 filters are no whole panels of the GEMM's
  // tiles, which 256 would be: the GEMM in place), its dX and dW on the gemm() paths.
  const auto deep = make_conv2d_geometry(1, 58, 58, 144, 232, 3, 3, 144, 2, 2, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(deep).forward) == "indirect");
  CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(1, 58, 58, 128, 256, 3, 3, 128, 2, 2, 1, 1, 1, 1)).forward) == "gemm");
  check_everywhere<float>(deep, 2e-4, 40);
}

// A kernel K x Q beyond 1 MiB: every pass through gemm() (forward_gemm, dX by
// backward_input_col2im_gemm, dW by backward_weight_im2col_gemm), in one block of rows / images
// and, with 2 images of 16 x 16 outputs of K = 4320 (past their 8 MiB of rows), in two.
void test_forward_gemm() {
  const auto g = make_conv2d_geometry(2, 7, 7, 480, 64, 3, 3, 480, 2, 2, 1, 1, 1, 1);
  const ConvKernelChoice c = conv_kernel_choice<float>(g);
  CHECK(std::string(c.forward) == "gemm" && std::string(c.backward_input) == "col2im_gemm" &&
        std::string(c.backward_weight) == "im2col_gemm");
  check_everywhere<double>(g, 1e-12, 37);
  check_everywhere<float>(g, 2e-4, 38);
  // Stride 1 (a deep 3x3 on 5 x 5 images: Winograd's transformed kernel would be 500 KB per tile).
  const auto s1 = make_conv2d_geometry(2, 5, 5, 384, 384, 3, 3, 384, 1, 1, 1, 1, 1, 1);
  const ConvKernelChoice c1 = conv_kernel_choice<float>(s1);
  CHECK(std::string(c1.forward) == "gemm" && std::string(c1.backward_input) == "col2im_gemm" &&
        std::string(c1.backward_weight) == "im2col_gemm");
  check_everywhere<float>(s1, 2e-4, 40);
  const auto two = make_conv2d_geometry(2, 32, 32, 480, 64, 3, 3, 480, 2, 2, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(two).forward) == "gemm");
  check_everywhere<float>(two, 2e-4, 39);
  // Kernels under 1 MiB whose strided dX takes the same path (select.h: Q >= C and a deep
  // enough dY.W; narrow images, or 3x3 with Q >= 96).
  const auto narrow = make_conv2d_geometry(3, 14, 13, 64, 64, 3, 3, 64, 2, 2, 1, 1, 1, 1);
  const auto deepq = make_conv2d_geometry(2, 19, 20, 48, 96, 3, 3, 48, 2, 2, 1, 0, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(narrow).backward_input) == "col2im_gemm");
  CHECK(std::string(conv_kernel_choice<double>(deepq).backward_input) == "col2im_gemm");
  check_everywhere<float>(narrow, 2e-5, 43);
  check_everywhere<double>(deepq, 1e-12, 44);
}

// The forward's GEMM called straight, each pixel's im2col row read in place slice by slice
// (gemm_indirect) and gathered first, against the oracle at every level the CPU has, at 1-3
// threads bitwise the same, into a y that it must overwrite. In place, the pixels reordered
// and the tile chosen (forward_rows_plan) bitwise as in raster order on the default tile: only
// zero products skipped.
template <typename T>
void check_forward_gemm_straight(const Conv2dGeometry& g, double tol, uint32_t seed) {
  const Case<T> c = make_case<T>(g, seed);
  for (bool in_place : {true, false}) {
    std::vector<T> first;
    at_every_level_and_thread_count([&](int level, int threads) {
      std::vector<T> y(c.ref.y.size(), T(7)), raster(c.ref.y.size(), T(9));
      conv_detail::forward_gemm(g, c.x.data(), c.w.data(), c.b.data(), y.data(), in_place);
      conv_detail::forward_gemm(g, c.x.data(), c.w.data(), c.b.data(), raster.data(), in_place, false);
      if (threads == 1) first = y;
      const double err = max_rel_diff(std::vector<double>(y.begin(), y.end()), c.ref.y);
      CHECK(err < tol && bitwise_equal(y, first) && bitwise_equal(y, raster));
      if (!(err < tol && bitwise_equal(y, first) && bitwise_equal(y, raster)))
        std::printf("  forward_gemm(in_place=%d) C=%lld Q=%lld %lldx%lld: simd=%d threads=%d err=%g\n", int(in_place),
                    (long long)g.C, (long long)g.Q, (long long)g.FH, (long long)g.FW, level, threads, err);
    });
  }
}

// dX by dY.W and col2im (backward_input_col2im_gemm) called straight: against the oracle at
// every level and 1-3 threads, and bitwise the same with the tiles of padded taps skipped
// (dy_columns_plan, gemm_indirect's keep) as through gemm() (skip_padding false) and as with 1
// thread, into a dx that it must overwrite.
template <typename T>
void check_dx_col2im_gemm_straight(const Conv2dGeometry& g, double tol, uint32_t seed) {
  const Case<T> c = make_case<T>(g, seed);
  std::vector<T> first;
  at_every_level_and_thread_count([&](int level, int threads) {
    std::vector<T> dx(c.ref.dx.size(), T(7)), plain(c.ref.dx.size(), T(9));
    conv_detail::backward_input_col2im_gemm(g, c.dy.data(), c.w.data(), dx.data());
    conv_detail::backward_input_col2im_gemm(g, c.dy.data(), c.w.data(), plain.data(), false);
    if (threads == 1) first = dx;
    const double err = max_rel_diff(std::vector<double>(dx.begin(), dx.end()), c.ref.dx);
    const bool ok = err < tol && bitwise_equal(dx, first) && bitwise_equal(dx, plain);
    CHECK(ok);
    if (!ok)
      std::printf("  col2im_gemm C=%lld Q=%lld %lldx%lld: simd=%d threads=%d err=%g\n", (long long)g.C,
                  (long long)g.Q, (long long)g.FH, (long long)g.FW, level, threads, err);
  });
}

// Its plan: the columns of padded taps per class (valid), a permutation when reordered.
void test_dx_col2im_gemm_skips_padding() {
  const auto seven = make_conv2d_geometry(4, 7, 7, 64, 256, 7, 7, 64, 1, 1, 3, 3, 3, 3);
  const auto strided = make_conv2d_geometry(12, 8, 8, 256, 128, 3, 3, 256, 2, 2, 1, 1, 1, 1);
  const auto straddle = make_conv2d_geometry(3, 6, 5, 40, 24, 5, 5, 40, 1, 2, 2, 1, 2, 2);  // 40-channel taps across panels
  const auto unpadded = make_conv2d_geometry(2, 9, 9, 64, 32, 3, 3, 64, 1, 1, 0, 0, 0, 0);
  const auto many = make_conv2d_geometry(3, 20, 20, 64, 72, 3, 3, 64, 1, 1, 1, 1, 1, 1);
  for (const auto* g : {&seven, &strided, &straddle, &unpadded, &many}) {
    check_dx_col2im_gemm_straight<float>(*g, 2e-4, 61);
    check_dx_col2im_gemm_straight<double>(*g, 1e-12, 62);
  }
  // seven: the corner class (output pixel (0,0), taps 3..6 x 3..6 inside) has no valid panel
  // among the taps of kernel rows 0-2, and one at tap (3,3); all 49 taps for the centre.
  const conv_detail::PixelClasses pc = conv_detail::pixel_classes(seven);
  const auto plan = conv_detail::dy_columns_plan<float>(seven, pc, 4);
  const size_t corner = static_cast<size_t>(pc.cls[0]), centre = static_cast<size_t>(pc.cls[3 * 7 + 3]);
  const int64_t per_tap = 64 / plan.NR > 0 ? 64 / plan.NR : 1;  // panels per tap (NR <= 64)
  CHECK(plan.panels == static_cast<size_t>(49 * 64 / plan.NR));
  int corner_valid = 0, centre_valid = 0;
  for (size_t p = 0; p < plan.panels; ++p) {
    corner_valid += plan.valid[corner * plan.panels + p];
    centre_valid += plan.valid[centre * plan.panels + p];
  }
  CHECK(corner_valid == 16 * per_tap && centre_valid == static_cast<int>(plan.panels));
  CHECK(plan.valid[corner * plan.panels + static_cast<size_t>((3 * 7 + 3) * per_tap)] == 1);
  CHECK(plan.valid[corner * plan.panels + 0] == 0);
  std::vector<int64_t> sorted(plan.rows.order);
  std::sort(sorted.begin(), sorted.end());
  bool perm = sorted.empty() || sorted.size() == 4 * 49;
  for (size_t i = 0; perm && i < sorted.size(); ++i) perm = sorted[i] == static_cast<int64_t>(i);
  CHECK(perm && !plan.rows.order.empty() && plan.skip);
  // Run instead of gemm() only where the plan's price, the pointer tile charged 8 multiply-adds
  // more per row and panel, is 6% under gemm()'s at AVX-512 (25% at the other levels):
  // (32,8,8,256->512, 3x3 S 2) and `strided` (their top row and left column, 16% left out),
  // (16,14,14,64->64, 7x7 S 2) (23%) and `seven` (43%); not (32,16,16,64->128, 3x3 S 2) (8% at
  // a depth of 128, measured slower), `strided` with 40 filters (16% at a depth of 40), `many`
  // (3%) nor (2,32,32,480->64, 3x3 S 2) (2%).
  const auto skips = [](const Conv2dGeometry& h, int64_t images) {
    return conv_detail::dy_columns_plan<float>(h, conv_detail::pixel_classes(h), images).skip;
  };
  const bool avx512 = nablagrad::simd_at_least(SimdLevel::AVX512);
  CHECK(skips(make_conv2d_geometry(32, 8, 8, 256, 512, 3, 3, 256, 2, 2, 1, 1, 1, 1), 32) == avx512);
  CHECK(skips(make_conv2d_geometry(16, 14, 14, 64, 64, 7, 7, 64, 2, 2, 3, 3, 3, 3), 16) == avx512);
  CHECK(skips(seven, 4));
  CHECK(!skips(make_conv2d_geometry(32, 16, 16, 64, 128, 3, 3, 64, 2, 2, 1, 1, 1, 1), 32));
  CHECK(skips(strided, 12) == avx512);
  CHECK(!skips(make_conv2d_geometry(12, 8, 8, 256, 40, 3, 3, 256, 2, 2, 1, 1, 1, 1), 12));
  CHECK(!skips(many, 3));
  CHECK(!skips(make_conv2d_geometry(2, 32, 32, 480, 64, 3, 3, 480, 2, 2, 1, 1, 1, 1), 2));
}

// The forward's GEMM with its rows read in place (forward_run_slices, forward_slice_rows):
// slices of whole taps (256 channels), of half taps (384: two of 192; 300: two of 150), of a
// kernel row's run (32 channels x 7: 224 values) and of parts of one that end inside a tap
// (128 x 3 = 384: two of 192; 40 x 7 = 280: two of 140), so border pixels' slices are copied
// whole or in part; kernel rows in the top and bottom padding (whole register tiles of them,
// skipped, in `runs` and `many`); asymmetric padding and strides;
// windows wider than the input (every pixel a border one); more pixels than one block of the
// product's rows (MC); pixels reordered by class (forward_rows_plan): image by image (`many`
// at 6-row tiles), pixel by pixel (`b12`, `b5`, `wide`), and not (the rest); 4-row tiles at
// AVX-512 (`seven`).
void test_forward_gemm_in_place() {
  using conv_detail::forward_run_slices;
  const auto taps = make_conv2d_geometry(2, 7, 9, 256, 40, 3, 3, 256, 2, 2, 1, 0, 1, 2);
  const auto thirds = make_conv2d_geometry(2, 7, 9, 128, 40, 3, 3, 128, 2, 2, 1, 0, 1, 2);
  const auto halves = make_conv2d_geometry(1, 5, 6, 384, 20, 3, 3, 384, 1, 1, 1, 1, 1, 1);
  const auto uneven = make_conv2d_geometry(2, 4, 5, 300, 17, 2, 3, 300, 1, 2, 0, 1, 2, 0);
  const auto runs = make_conv2d_geometry(2, 9, 10, 32, 24, 7, 7, 32, 1, 1, 3, 3, 3, 3);
  const auto parts = make_conv2d_geometry(1, 8, 11, 40, 70, 7, 7, 40, 2, 1, 3, 2, 3, 1);
  const auto wide = make_conv2d_geometry(3, 6, 3, 24, 16, 5, 5, 24, 1, 1, 2, 2, 2, 2);
  const auto many = make_conv2d_geometry(3, 20, 20, 64, 72, 3, 3, 64, 1, 1, 1, 1, 1, 1);
  const auto b12 = make_conv2d_geometry(12, 8, 8, 256, 40, 3, 3, 256, 2, 2, 1, 1, 1, 1);
  const auto b5 = make_conv2d_geometry(5, 7, 7, 64, 48, 7, 7, 64, 1, 1, 3, 3, 3, 3);
  const auto seven = make_conv2d_geometry(4, 7, 7, 64, 256, 7, 7, 64, 1, 1, 3, 3, 3, 3);
  CHECK(forward_run_slices(taps, 256).size() == 9 && forward_run_slices(taps, 256)[4].k0 == 4 * 256);
  CHECK(forward_run_slices(thirds, 256).size() == 6 && forward_run_slices(thirds, 256)[1].k0 == 192 &&
        forward_run_slices(thirds, 256)[1].kc == 192);
  CHECK(forward_run_slices(halves, 256).size() == 18 && forward_run_slices(halves, 256)[1].kc == 192);
  CHECK(forward_run_slices(uneven, 256).size() == 12 && forward_run_slices(uneven, 256)[1].kc == 150);
  CHECK(forward_run_slices(runs, 256).size() == 7 && forward_run_slices(runs, 256)[2].k0 == 2 * 224);
  const auto p = forward_run_slices(parts, 256);
  CHECK(p.size() == 14 && p[1].k0 == 140 && p[1].kc == 140 && p[13].k0 + p[13].kc == 7 * 280);
  for (const auto* g : {&taps, &thirds, &halves, &uneven, &runs, &parts, &wide, &many, &b12, &b5, &seven}) {
    check_forward_gemm_straight<float>(*g, 2e-4, 51);
    check_forward_gemm_straight<double>(*g, 1e-12, 52);
  }
  // The plan itself (6-row tiles, 256-deep slices): the order a permutation of the pixels,
  // each class together; pixel by pixel where a layer has many images, image by image where
  // tiles fill a class's pixels of one image, none where classes are a few pixels each
  // ((1,7,7,512->512): reordered it ran 1.14 -> 1.17 ms) or where every pixel is one class
  // (unpadded). With groups, each group of images in turn. With 4-row tiles offered, taken
  // where their tiles hold whole classes better.
  const auto plan_of = [](const Conv2dGeometry& g, std::vector<int64_t> tile_rows, int64_t groups) {
    return conv_detail::forward_rows_plan(g, forward_run_slices(g, 256), tile_rows, groups);
  };
  const auto order_of = [&](const Conv2dGeometry& g) {
    const conv_detail::PixelRowsPlan plan = plan_of(g, {6}, 1);
    CHECK(plan.tile_rows == 6);
    return plan.order;
  };
  const auto permutation = [](const std::vector<int64_t>& o, int64_t M) {
    std::vector<int64_t> sorted(o);
    std::sort(sorted.begin(), sorted.end());
    bool ok = static_cast<int64_t>(o.size()) == M;
    for (int64_t i = 0; ok && i < M; ++i) ok = sorted[static_cast<size_t>(i)] == i;
    return ok;
  };
  const auto big = make_conv2d_geometry(32, 8, 8, 256, 512, 3, 3, 256, 2, 2, 1, 1, 1, 1);
  const std::vector<int64_t> ob = order_of(big), om = order_of(many);
  CHECK(permutation(ob, 32 * 16) && permutation(om, 3 * 400) && permutation(order_of(b5), 5 * 49));
  if (ob.size() == 32 * 16 && om.size() == 3 * 400) {  // (else failed above)
    // big: the 9 inner pixels (ho, wo >= 1) of all 32 images first, pixel by pixel (5 = (1,1)).
    CHECK(ob[0] == 5 && ob[1] == 16 + 5 && ob[31] == 31 * 16 + 5 && ob[32] == 6);
    for (size_t i = 0; i < 9 * 32; ++i) CHECK(ob[i] % 4 != 0 && ob[i] % 16 >= 4);
    // many: a corner's 3 pixels, then a border row's 18 pixels of image 0 in raster order.
    CHECK(om[3] + 1 == om[4] && om[4] + 1 == om[5] && om[3] / 400 == 0);
  }
  CHECK(order_of(make_conv2d_geometry(1, 7, 7, 512, 512, 3, 3, 512, 1, 1, 1, 1, 1, 1)).empty());
  CHECK(order_of(make_conv2d_geometry(8, 16, 16, 256, 16, 3, 3, 256, 2, 2, 0, 0, 0, 0)).empty());
  CHECK(order_of(runs).empty());
  // Two groups: images 0-15, then 16-31, each pixel by pixel.
  const std::vector<int64_t> og = plan_of(big, {6}, 2).order;
  CHECK(permutation(og, 32 * 16) && og[0] == 5 && og[15] == 15 * 16 + 5 && og[16] == 6);  // (&&: no index past an empty one)
  for (size_t i = 0; i < og.size(); ++i) CHECK((og[i] / 16 < 16) == (i < og.size() / 2));
  const conv_detail::PixelRowsPlan p4 = plan_of(seven, {6, 4}, 1);
  CHECK(p4.tile_rows == 4 && permutation(p4.order, 4 * 49));
  CHECK(plan_of(make_conv2d_geometry(1, 7, 7, 512, 512, 3, 3, 512, 1, 1, 1, 1, 1, 1), {6, 4}, 1).tile_rows == 6);
  // At AVX2 the 4-row tile is charged 10% more per multiply-add (gemm_indirect_tile_cost):
  // `big`, whose 4-row plan prices a few % under the 6-row one, keeps 6 rows there (it ran
  // 4.92 -> 5.28 ms on 4), `seven` (16% under) takes 4 (1.10 -> 1.00).
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX2) {
    nablagrad::set_simd_level(SimdLevel::AVX2);
    CHECK(plan_of(big, {6, 4}, 1).tile_rows == 6);
    CHECK(plan_of(seven, {6, 4}, 1).tile_rows == 4);
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  // The choice (select.h's gemm_rows_in_place): slices of 64+ values, however many output
  // columns are border ones (6 of 14, 3 of 4: their tiles of padding are skipped); not 48-value
  // slices.
  CHECK(gemm_rows_in_place<float>(make_conv2d_geometry(8, 14, 14, 256, 512, 3, 3, 256, 2, 2, 1, 1, 1, 1)));
  CHECK(gemm_rows_in_place<float>(make_conv2d_geometry(2, 14, 14, 48, 64, 7, 7, 48, 1, 1, 0, 0, 0, 0)));
  CHECK(gemm_rows_in_place<double>(make_conv2d_geometry(8, 16, 16, 64, 64, 2, 2, 64, 2, 2, 0, 0, 0, 0)));
  CHECK(!gemm_rows_in_place<float>(make_conv2d_geometry(4, 224, 224, 3, 192, 16, 16, 3, 16, 16, 0, 0, 0, 0)));
  CHECK(gemm_rows_in_place<float>(make_conv2d_geometry(2, 14, 14, 32, 256, 7, 7, 32, 1, 1, 3, 3, 3, 3)));
  CHECK(gemm_rows_in_place<float>(make_conv2d_geometry(32, 8, 8, 32, 96, 7, 7, 32, 2, 2, 3, 3, 3, 3)));
  CHECK(!gemm_rows_in_place<float>(make_conv2d_geometry(8, 28, 28, 7, 64, 3, 3, 7, 1, 1, 1, 1, 1, 1)));  // 21
  // Strided with a deep kernel (K >= 1024) whose filters fill the GEMM's panels, on more than
  // the 800 pixels that go to the GEMM anyway: the GEMM in place, not the indirect kernel, at
  // both vector levels (not with the algorithm "direct").
  // Through conv2d_forward at every level against the oracle.
  const auto strided = make_conv2d_geometry(4, 30, 29, 160, 64, 3, 3, 160, 2, 2, 1, 1, 1, 0);  // 840 pixels
  const auto shallow = make_conv2d_geometry(4, 30, 29, 96, 64, 3, 3, 96, 2, 2, 1, 1, 1, 0);  // K = 864
  const auto q24 = make_conv2d_geometry(4, 30, 29, 160, 24, 3, 3, 160, 2, 2, 1, 1, 1, 0);
  for (SimdLevel level : {SimdLevel::AVX2, SimdLevel::AVX512}) {
    if (static_cast<int>(level) > static_cast<int>(nablagrad::cpu_simd_level())) continue;
    nablagrad::set_simd_level(level);
    CHECK(std::string(conv_kernel_choice<float>(strided).forward) == "gemm");
    CHECK(std::string(conv_kernel_choice<float>(shallow).forward) == "indirect");
    // 24 filters: the AVX-512 GEMM's 32-wide tile, a quarter empty; AVX2's 4 x 24 one, whole.
    CHECK(std::string(conv_kernel_choice<float>(q24).forward) == (level == SimdLevel::AVX512 ? "indirect" : "gemm"));
    set_conv_algorithm(ConvAlgorithm::Direct);
    CHECK(std::string(conv_kernel_choice<float>(strided).forward) == "indirect");
    set_conv_algorithm(ConvAlgorithm::Auto);
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  check_everywhere<float>(strided, 2e-4, 53);
  check_everywhere<double>(strided, 1e-12, 54);
}

// The strided dX by the phase gather GEMMs (backward_input_phases): one channel and a 2x2
// kernel, too few values (4 per pixel) for the col2im GEMM's or the direct phases' tiles.
void test_backward_input_phases_gather() {
  const auto g = make_conv2d_geometry(3, 11, 10, 1, 24, 2, 2, 1, 2, 2, 1, 0, 0, 1);
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  CHECK(std::string(conv_kernel_choice<float>(g).backward_input) == "phases");
  check_everywhere<float>(g, 2e-5, 46);
  check_everywhere<double>(g, 1e-12, 47);
}

// The kernel gradient's product dW = sum over pixel blocks of dY_b^T B_b: run as the transposed
// product plus a transpose where dW is wider than tall over >= 1024 pixels, it must give the
// bits of the plain product accumulated block by block (tile edges: 40 rows, 100 columns), at
// every SIMD level; and the convolutions that use it (a 1x1 256 -> 64 like layer and a deep
// strided 3x3 past 1 MiB of kernel, both over 1024+ pixels) against the reference.
template <typename T>
void check_weight_gradient_product(int64_t Q, int64_t Kw, const std::vector<int64_t>& blocks, uint32_t seed) {
  int64_t P = 0;
  for (int64_t b : blocks) P += b;
  std::mt19937 rng(seed);
  const auto dy = random_vector<T>(P * Q, rng), b = random_vector<T>(P * (Kw + 3), rng);
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    std::vector<T> plain(static_cast<size_t>(Q * Kw)), got(plain.size(), T(7));
    conv_detail::WeightGradientProduct<T> prod(Q, Kw, P, got.data());
    int64_t p0 = 0;
    for (int64_t nb : blocks) {
      gemm<T>(Q, Kw, nb, dy.data() + p0 * Q, 1, Q, b.data() + p0 * (Kw + 3), Kw + 3, 1, plain.data(), Kw, p0 > 0);
      prod.add(nb, dy.data() + p0 * Q, b.data() + p0 * (Kw + 3), Kw + 3, p0 > 0);
      p0 += nb;
    }
    prod.finish();
    CHECK(bitwise_equal(got, plain));
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

void test_weight_gradient_product() {
  check_weight_gradient_product<float>(40, 100, {700, 500}, 61);   // transposed
  check_weight_gradient_product<double>(40, 100, {700, 500}, 62);  // transposed, scalar copy
  check_weight_gradient_product<float>(64, 256, {1100}, 63);       // transposed, whole tiles
  check_weight_gradient_product<float>(100, 40, {1200}, 64);       // taller than wide: plain
  check_weight_gradient_product<float>(40, 100, {600}, 65);        // too few pixels: plain
  const auto pw = make_conv2d_geometry(1, 32, 36, 40, 12, 1, 1, 40, 1, 1, 0, 0, 0, 0);
  CHECK(std::string(conv_kernel_choice<float>(pw).backward_weight) == "1x1_gemm");
  check_everywhere<double>(pw, 1e-12, 66);
  check_everywhere<float>(pw, 2e-5, 67);
  const auto deep = make_conv2d_geometry(4, 32, 32, 128, 232, 3, 3, 128, 2, 2, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(deep).backward_weight) == "im2col_gemm");
  check_everywhere<float>(deep, 2e-4, 68);
}

// The indirect forward: blocks of MR pixels across output rows (and past the last pixel),
// runs in the input, in the top/bottom padding (zeros) and across the left/right padding
// (copied runs), uneven strides and paddings.
void test_forward_indirect() {
  // "direct": the indirect kernel on these small shapes too ("auto" runs gemm() on at most 800
  // output pixels; test_kernel_choice).
  set_conv_algorithm(ConvAlgorithm::Direct);
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(3, 13, 17, 32, 64, 3, 3, 32, 2, 2, 1, 1, 1, 1),
      make_conv2d_geometry(2, 11, 12, 20, 24, 4, 4, 20, 2, 3, 1, 2, 0, 3),
      make_conv2d_geometry(1, 9, 30, 40, 40, 2, 5, 40, 3, 2, 0, 1, 2, 2)};
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<double>(g).forward) == "indirect");
    check_everywhere<double>(g, 1e-12, 37);
    check_everywhere<float>(g, 2e-5, 38);
  }
  // Tasks of several blocks (2793 pixels: 233 blocks of 12, 117 of 24, 466 of 6; the shapes
  // above make tasks of one block): a left border copy in most blocks, a last partial block,
  // a partial filter panel (Q = 40) and uneven padding.
  const auto many = make_conv2d_geometry(7, 40, 38, 16, 40, 3, 3, 16, 2, 2, 1, 2, 1, 0);
  CHECK(std::string(conv_kernel_choice<double>(many).forward) == "indirect");
  CHECK(std::string(conv_kernel_choice<float>(many).forward) == "indirect");
  check_everywhere<double>(many, 1e-12, 42);
  check_everywhere<float>(many, 1e-4, 43);  // dW: sums of 2793 float products
  // Rows of 6 pixels: every block of 6, 12 or 24 starts a row, so every block copies border
  // runs into the same slots of its task's copy buffer.
  const auto rows6 = make_conv2d_geometry(32, 24, 12, 16, 40, 3, 3, 16, 2, 2, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(rows6).forward) == "indirect");
  check_everywhere<double>(rows6, 1e-12, 44);
  check_everywhere<float>(rows6, 1e-4, 45);
  // Stride 1, a panel too large for the direct kernel (K = 640): indirect at AVX-512.
  check_everywhere<double>(make_conv2d_geometry(2, 10, 9, 40, 64, 4, 4, 40, 1, 1, 1, 2, 2, 1), 1e-12, 39);
  // Filters in whole panels of the wider tile (6 x 4 vectors at AVX-512: 64 floats, 32
  // doubles; the first shape's 64 filters too): 363 pixels, a last partial block of 3.
  const auto wide_q = make_conv2d_geometry(3, 21, 21, 24, 128, 3, 3, 24, 2, 2, 1, 1, 1, 1);
  CHECK(std::string(conv_kernel_choice<float>(wide_q).forward) == "indirect");
  check_everywhere<double>(wide_q, 1e-12, 46);
  check_everywhere<float>(wide_q, 1e-4, 47);
  // The stride-1 input gradient through it: the flipped kernel (K = 25*48 = 1200, a panel
  // beyond the direct kernel's 64 KiB at every level) on dY padded by F-1-P ("direct": "auto"
  // runs this 5x5 by Winograd).
  const auto gi = make_conv2d_geometry(2, 9, 11, 64, 48, 5, 5, 64, 1, 1, 2, 1, 2, 3);
  CHECK(std::string(conv_kernel_choice<double>(gi).backward_input) == "flipped_indirect");
  CHECK(std::string(conv_kernel_choice<float>(gi).backward_input) == "flipped_indirect");
  check_everywhere<double>(gi, 1e-12, 40);
  check_everywhere<float>(gi, 1e-4, 41);  // sums of 1200-1600 float products
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// The indirect forward's tile by the filters: the last panel on the row's narrower kernel
// of the same rows (indirect_last) where that covers it: AVX2 6 x 1 vectors (56 floats = 16 x
// 3 + 8, 8 floats alone, 4 doubles), AVX-512 12 x 1 (80 floats = 32 + 32 + 16, 40 doubles =
// 16 + 16 + 8); at AVX2 the 4 x 3-vector row with a 4 x 2 last panel for 24k + 16 floats
// (40, 88) and 12k + 8 doubles (20, 44); at AVX-512 the 8 x 3-vector tile for 3-vector
// panels, the last at least two-thirds full (36, 40, 48, 88 floats; 20, 24, 44 doubles).
// Straight through forward_indirect with the row conv_kernels_for_width gives (partial last
// blocks, border copies, a partial last panel), with and without bias, against the oracle,
// then through the entry points at every level.
template <typename T>
void check_forward_indirect_row(const conv_detail::ConvKernels<T>& cfg, const Conv2dGeometry& g, double tol,
                                uint32_t seed) {
  std::mt19937 rng(seed);
  const auto x = random_vector<T>(g.N * g.H * g.W * g.C, rng), w = random_vector<T>(g.Q * g.FH * g.FW * g.C, rng),
             b = random_vector<T>(g.Q, rng);
  for (const T* bias : {static_cast<const T*>(b.data()), static_cast<const T*>(nullptr)}) {
    std::vector<T> want(static_cast<size_t>(g.N * g.Ho * g.Wo * g.Q)), y(want.size(), T(7));
    conv2d_reference_forward(g, x.data(), w.data(), bias, want.data());
    conv_detail::forward_indirect(cfg, g, x.data(), w.data(), bias, y.data());
    const bool ok = max_rel_diff(y, want) < tol;
    CHECK(ok);
    if (!ok)
      std::printf("  %s Q=%lld level=%d NR=%lld bias=%d\n", sizeof(T) == 4 ? "float" : "double", (long long)g.Q,
                  static_cast<int>(cfg.level), (long long)cfg.NR, bias != nullptr);
  }
}

void test_indirect_tiles_by_filters() {
  set_conv_algorithm(ConvAlgorithm::Direct);
  const auto shape = [](int64_t C, int64_t Q) { return make_conv2d_geometry(2, 13, 11, C, Q, 3, 3, C, 2, 2, 1, 1, 0, 1); };
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX2) {
    CHECK(conv_detail::conv_kernels<float>(SimdLevel::AVX2).NR_indirect_last == 8);
    CHECK(conv_detail::conv_kernels<double>(SimdLevel::AVX2).NR_indirect_last == 4);
    CHECK(conv_detail::conv_kernels<float>(SimdLevel::AVX2, true).NR_indirect_last == 16);
    CHECK(conv_detail::conv_kernels<double>(SimdLevel::AVX2, true).NR_indirect_last == 8);
  }
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    CHECK(conv_detail::conv_kernels<float>(SimdLevel::AVX512).NR_indirect_last == 16);
    CHECK(conv_detail::conv_kernels<double>(SimdLevel::AVX512).NR_indirect_last == 8);
    for (bool alt : {false, true}) {
      CHECK(conv_detail::conv_kernels<float>(SimdLevel::AVX512, alt).NR_indirect_three == 48);
      CHECK(conv_detail::conv_kernels<double>(SimdLevel::AVX512, alt).NR_indirect_three == 24);
    }
  }
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    for (int64_t q : {8, 36, 40, 48, 56, 80, 88})
      check_forward_indirect_row(conv_kernels_for_width<float>(q), shape(12, q), 2e-5, static_cast<uint32_t>(80 + q));
    for (int64_t q : {4, 20, 24, 40, 44})
      check_forward_indirect_row(conv_kernels_for_width<double>(q), shape(7, q), 1e-12, static_cast<uint32_t>(90 + q));
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  for (int64_t q : {8, 40, 48}) {
    CHECK(q == 8 || std::string(conv_kernel_choice<float>(shape(12, q)).forward) == "indirect");
    check_everywhere<float>(shape(12, q), 2e-5, static_cast<uint32_t>(100 + q));
  }
  for (int64_t q : {20, 24}) check_everywhere<double>(shape(7, q), 1e-12, static_cast<uint32_t>(110 + q));
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// NaN in one input value (image 1, row 2, column 3, channel 5; g.N >= 2, C >= 6): the fast
// forward's NaNs are the reference's, at every SIMD level the CPU has, under the current
// algorithm setting.
void check_nan_reaches_its_windows(const Conv2dGeometry& g, uint32_t seed) {
  std::mt19937 rng(seed);
  auto x = random_vector<float>(g.N * g.H * g.W * g.C, rng), w = random_vector<float>(g.Q * g.FH * g.FW * g.C, rng),
       b = random_vector<float>(g.Q, rng);
  x[static_cast<size_t>((1 * g.H + 2) * g.W + 3) * g.C + 5] = std::nanf("");
  std::vector<float> ref(static_cast<size_t>(g.N * g.Ho * g.Wo * g.Q)), y(ref.size());
  conv2d_reference_forward<float>(g, x.data(), w.data(), b.data(), ref.data());
  size_t nans = 0;
  for (float v : ref) nans += std::isnan(v) ? 1 : 0;
  CHECK(nans > 0 && nans < ref.size() / 4);
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    conv2d_forward<float>(g, x.data(), w.data(), b.data(), y.data());
    bool same_nans = true;
    for (size_t k = 0; k < y.size(); ++k) same_nans = same_nans && (std::isnan(y[k]) == std::isnan(ref[k]));
    CHECK(same_nans);
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// The narrow kernels (narrow.h; vectors along each pixel's runs, for 1-8 float / 1-4 double
// filters), forward and kernel gradient: every row of the forward's table (1, 2, 3 filters;
// 4 and more in blocks of 4 and a rest of 1-3), runs shorter than a vector and not a
// multiple of one (masked loads; the kernel gradient's vectors reading past the run), FH !=
// FW, uneven strides and paddings, whole output rows in the padding, 1x1, a last partial
// block of pixels, several blocks and chunks; at every level (the choice is checked at
// each), bitwise across thread counts, and NaN reaching exactly the outputs whose windows
// hold it. (5-8 float or 3-4 double filters take the narrow kernel on runs of at least 20
// values per filter past half an AVX2 vector, or where the direct forward does not apply:
// test_direct_one_vector.)
void test_narrow() {
  struct Case {
    Conv2dGeometry g;
    bool in_double;  // Q <= 4: narrow for double too (half of its 8-double tile)
    bool weight;     // runs of >= 12 values: the kernel gradient too
  };
  const Case cases[] = {
      {make_conv2d_geometry(2, 9, 11, 7, 1, 3, 3, 7, 1, 1, 1, 1, 1, 1), true, true},     // runs of 21
      {make_conv2d_geometry(1, 8, 13, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1), true, false},    // runs of 3 (< W)
      {make_conv2d_geometry(3, 10, 7, 6, 2, 5, 3, 6, 2, 1, 2, 1, 0, 3), true, true},     // FH != FW, strides 2x1
      {make_conv2d_geometry(2, 12, 9, 16, 3, 3, 3, 16, 1, 1, 1, 1, 1, 1), true, true},   // runs of 48
      {make_conv2d_geometry(2, 7, 8, 33, 4, 3, 3, 33, 2, 2, 3, 1, 2, 0), true, true},    // 99; rows of bias alone
      {make_conv2d_geometry(2, 9, 9, 20, 5, 3, 3, 20, 1, 1, 1, 1, 1, 1), false, true},   // 4 + 1 filters
      {make_conv2d_geometry(3, 6, 10, 48, 7, 3, 3, 48, 1, 2, 0, 1, 1, 1), false, true},  // 4 + 3
      {make_conv2d_geometry(1, 11, 11, 40, 8, 2, 4, 40, 1, 1, 1, 0, 2, 1), false, true}, // 4 + 4, FW even
      {make_conv2d_geometry(4, 7, 9, 24, 2, 1, 1, 24, 1, 1, 0, 0, 0, 0), true, true},    // 1x1, 2 filters
      {make_conv2d_geometry(5, 17, 19, 9, 2, 3, 3, 9, 1, 1, 1, 1, 1, 1), true, true},    // 1615 pixels: 7 chunks
      {make_conv2d_geometry(2, 6, 7, 4, 2, 3, 3, 4, 1, 1, 1, 1, 1, 1), true, true}};     // runs of 12
  set_conv_algorithm(ConvAlgorithm::Direct);  // at AVX2 "auto" runs the 3x3 Q = 5..8 by Winograd
  uint32_t seed = 300;
  for (const Case& c : cases) {
    for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
      nablagrad::set_simd_level(static_cast<SimdLevel>(level));
      const ConvKernelChoice f = conv_kernel_choice<float>(c.g), d = conv_kernel_choice<double>(c.g);
      CHECK(std::string(f.forward) == "narrow");
      CHECK((std::string(d.forward) == "narrow") == c.in_double);
      CHECK((std::string(f.backward_weight) == "narrow") == c.weight);
      CHECK((std::string(d.backward_weight) == "narrow") == (c.weight && c.in_double));
    }
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
    check_everywhere<double>(c.g, 1e-12, seed++);
    check_everywhere<float>(c.g, 2e-5, seed++);
  }
  // Not narrow: 8 filters on runs of 15 (shorter than a tile's width; the direct kernel
  // measured 2x faster; the kernel gradient is narrow from 12), 9 float filters, 5 double ones;
  // the kernel gradient of runs of 9 (small-C).
  const auto short_runs = make_conv2d_geometry(2, 16, 16, 3, 8, 5, 5, 3, 1, 1, 2, 2, 2, 2);
  CHECK(std::string(conv_kernel_choice<float>(short_runs).forward) == "direct");
  CHECK(std::string(conv_kernel_choice<float>(short_runs).backward_weight) == "narrow");
  check_everywhere<float>(short_runs, 2e-5, 299);
  CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 8, 8, 3, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1)).backward_weight) == "smallc");
  // A 1x1 with short runs (C < 32 Q) keeps the GEMM forward; its kernel gradient past Q C = 512
  // at AVX-512, 64 below.
  const auto pw = make_conv2d_geometry(2, 8, 8, 32, 4, 1, 1, 32, 1, 1, 0, 0, 0, 0);
  const auto pw_wide = make_conv2d_geometry(2, 8, 8, 128, 4, 1, 1, 128, 1, 1, 0, 0, 0, 0);
  const auto pw_small = make_conv2d_geometry(2, 8, 8, 16, 4, 1, 1, 16, 1, 1, 0, 0, 0, 0);
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    const bool avx512 = level >= static_cast<int>(SimdLevel::AVX512);
    CHECK(std::string(conv_kernel_choice<float>(pw).forward) == "1x1_gemm");
    CHECK(std::string(conv_kernel_choice<float>(pw).backward_weight) == (avx512 ? "narrow" : "1x1_gemm"));
    CHECK(std::string(conv_kernel_choice<float>(pw_wide).forward) == "narrow");
    CHECK(std::string(conv_kernel_choice<float>(pw_wide).backward_weight) == (avx512 ? "narrow" : "1x1_gemm"));
    CHECK(std::string(conv_kernel_choice<float>(pw_small).backward_weight) == "narrow");
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  check_everywhere<float>(pw_wide, 2e-5, 298);
  // The stride-1 input gradient of layers with few channels: the narrow forward on the
  // flipped geometry (C = 3..8 of dX's filters, runs FW*Q long enough for C = 5..8; C <= 2
  // keeps smallc), uneven paddings, a 5x3 kernel, padding as deep as the kernel (zero
  // rows of dX), NaN.
  const Conv2dGeometry few_channels[] = {
      make_conv2d_geometry(2, 9, 10, 8, 56, 3, 3, 8, 1, 1, 1, 1, 1, 1),
      make_conv2d_geometry(3, 11, 9, 4, 32, 3, 3, 4, 1, 1, 2, 0, 1, 2),
      make_conv2d_geometry(2, 8, 12, 6, 48, 5, 3, 6, 1, 1, 2, 2, 0, 1),
      make_conv2d_geometry(2, 7, 7, 3, 16, 3, 3, 3, 1, 1, 0, 0, 0, 0)};
  for (const Conv2dGeometry& g : few_channels) {
    for (int level = 1; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
      nablagrad::set_simd_level(static_cast<SimdLevel>(level));
      CHECK(std::string(conv_kernel_choice<float>(g).backward_input) == "flipped_narrow");
    }
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
    check_everywhere<double>(g, 1e-12, seed++);
    check_everywhere<float>(g, 2e-5, seed++);
  }
  CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 9, 10, 2, 40, 3, 3, 2, 1, 1, 1, 1, 1, 1)).backward_input) == "smallc");
  CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 9, 9, 20, 9, 3, 3, 20, 1, 1, 1, 1, 1, 1)).forward) != "narrow");
  CHECK(std::string(conv_kernel_choice<double>(cases[5].g).forward) != "narrow");
  // NaN in one input value: NaN exactly where the reference has it, at every level.
  check_nan_reaches_its_windows(cases[6].g, 91);
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// Kernel rows wholly in the top or bottom padding are skipped by the direct and indirect
// forwards (and the stride-1 input gradient that runs them on the flipped geometry):
// paddings as deep as the kernel (whole output rows of bias alone), uneven top / bottom,
// blocks of the indirect kernel that cross from such a row into the next, and NaN in the
// input, which must reach exactly the outputs whose taps read it.
void test_padding_rows_skipped() {
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 7, 9, 3, 32, 3, 3, 3, 1, 1, 3, 2, 1, 1),         // direct, rows of bias
      make_conv2d_geometry(2, 8, 10, 16, 32, 5, 5, 16, 1, 1, 4, 1, 2, 2),      // direct, 5x5
      make_conv2d_geometry(2, 9, 7, 32, 64, 3, 3, 32, 2, 2, 3, 2, 1, 1),       // indirect, strided
      make_conv2d_geometry(1, 6, 11, 40, 64, 4, 4, 40, 1, 1, 4, 3, 1, 2)};     // indirect, stride 1
  const char* expect[] = {"direct", "direct", "indirect", "indirect"};
  set_conv_algorithm(ConvAlgorithm::Direct);  // "auto" runs the 5x5 (16 -> 32) by Winograd
  for (int i = 0; i < 4; ++i) {
    const Conv2dGeometry& g = shapes[i];
    const std::string got = conv_kernel_choice<double>(g).forward;
    CHECK(got == expect[i]);
    if (got != expect[i]) std::printf("  shape %d runs %s\n", i, got.c_str());
    check_everywhere<double>(g, 1e-12, 70 + i);
    check_everywhere<float>(g, 1e-4, 80 + i);
  }
  // NaN in one input pixel: the fast forward's NaNs are the reference's, at every level, by
  // the direct kernel and by Winograd F(2x2,5x5) (its transforms add no term with a zero
  // coefficient, so a tile's NaN reaches only the outputs whose windows hold it).
  for (ConvAlgorithm a : {ConvAlgorithm::Direct, ConvAlgorithm::Winograd}) {
    set_conv_algorithm(a);
    CHECK(std::string(conv_kernel_choice<float>(shapes[1]).forward) == (a == ConvAlgorithm::Winograd ? "winograd" : "direct"));
    check_nan_reaches_its_windows(shapes[1], 90);
  }
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// The strided input gradient by phases read in place from a padded dY (phases_direct):
// uneven strides and paddings, S > F (phases no tap reaches), C over two panels. Without
// padding dY itself is read (the last blocks, whose reads run past its end, from a copy: ASan
// would see a read past it); where the phases have as many tasks each, their tasks alternate
// (the first two, and the last three with S == F or S > F).
void test_backward_input_phases_direct() {
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 13, 15, 16, 24, 3, 3, 16, 2, 2, 1, 1, 1, 1),
      make_conv2d_geometry(3, 17, 16, 24, 20, 4, 4, 24, 3, 2, 1, 2, 0, 3),
      make_conv2d_geometry(2, 12, 14, 20, 12, 2, 2, 20, 3, 3, 0, 0, 1, 0),  // S > F: empty phases
      make_conv2d_geometry(1, 9, 30, 40, 8, 5, 3, 40, 2, 1, 2, 2, 1, 1),    // stride in H only
      make_conv2d_geometry(2, 8, 8, 70, 16, 3, 3, 70, 2, 2, 1, 0, 1, 0),    // C over two panels
      make_conv2d_geometry(2, 16, 22, 24, 32, 2, 2, 24, 2, 2, 0, 0, 0, 0),  // in place, rows of 11
      make_conv2d_geometry(2, 12, 21, 16, 20, 3, 3, 16, 3, 3, 0, 0, 0, 0),  // in place, 9 phases
      make_conv2d_geometry(2, 12, 12, 8, 8, 2, 2, 8, 3, 3, 0, 0, 0, 0)};    // in place, S > F
  for (const Conv2dGeometry& g : shapes) {
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
    CHECK(std::string(conv_kernel_choice<double>(g).backward_input) == "phases_direct");
    check_everywhere<double>(g, 1e-12, 33);
    check_everywhere<float>(g, 2e-5, 34);
  }
}

// The 3-vector direct tile (use_direct_three: 8 x 3 vectors at AVX-512) where the output
// fills its panels (48 or 96 floats, 24 doubles) or leaves a last one at least two-thirds
// full (40 floats), not otherwise. The strided input gradient's phases on it (channels) right
// at every level and thread count, by rows and by the flat walk, in place and from the padded
// copy, 3x3 to 5x5, strides 2 and 3; and the direct forward (filters): first layers of 3
// channels at strides 2 and 1 (where the 24 x 1 tile has a stride-1 kernel), rows narrower
// than 8 and not a multiple of it, 40 and 144 filters.
void test_direct_three() {
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    nablagrad::set_simd_level(SimdLevel::AVX512);
    for (int64_t c : {48, 40, 96, 144}) CHECK(conv_detail::use_direct_three(conv_kernels_for_width<float>(c), c));
    for (int64_t c : {32, 16, 24, 64, 80}) CHECK(!conv_detail::use_direct_three(conv_kernels_for_width<float>(c), c));
    CHECK(conv_detail::use_direct_three(conv_kernels_for_width<double>(24), 24));
    CHECK(!conv_detail::use_direct_three(conv_kernels_for_width<double>(16), 16));
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX2) {
    nablagrad::set_simd_level(SimdLevel::AVX2);
    CHECK(!conv_detail::use_direct_three(conv_kernels_for_width<float>(48), 48));  // no such tile
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 13, 15, 48, 24, 3, 3, 48, 2, 2, 1, 1, 1, 1),
      make_conv2d_geometry(1, 11, 29, 48, 16, 5, 5, 48, 2, 2, 2, 2, 2, 2),
      make_conv2d_geometry(2, 9, 10, 96, 8, 3, 3, 96, 2, 2, 1, 0, 0, 1),
      make_conv2d_geometry(2, 14, 12, 40, 24, 3, 3, 40, 3, 2, 1, 2, 0, 1),
      make_conv2d_geometry(2, 16, 22, 48, 32, 2, 2, 48, 2, 2, 0, 0, 0, 0)};  // in place
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<float>(g).backward_input) == "phases_direct");
    check_everywhere<double>(g, 1e-12, 35);
    check_everywhere<float>(g, 1e-4, 36);
  }
  const Conv2dGeometry forwards[] = {
      make_conv2d_geometry(2, 17, 19, 3, 48, 3, 3, 3, 2, 2, 1, 1, 1, 1),
      make_conv2d_geometry(1, 20, 21, 3, 48, 7, 7, 3, 2, 2, 3, 3, 3, 3),
      make_conv2d_geometry(2, 9, 13, 8, 48, 3, 3, 8, 1, 1, 1, 1, 1, 1),   // stride 1, rows of 13
      make_conv2d_geometry(2, 8, 6, 4, 40, 5, 5, 4, 1, 1, 2, 2, 2, 2),    // rows of 6 < 8
      make_conv2d_geometry(1, 9, 10, 3, 144, 3, 3, 3, 1, 1, 1, 1, 1, 1)};
  for (const Conv2dGeometry& g : forwards) {
    CHECK(std::string(conv_kernel_choice<float>(g).forward) == "direct");
    check_everywhere<double>(g, 1e-12, 37);
    check_everywhere<float>(g, 1e-4, 38);
  }
}

// The kernel gradient read in place from the padded input (backward_weight_direct; from x
// itself without padding, or through the indirect forward's pointer tables): shapes
// whose kernel rows are not a multiple of MR (the last block reads past the run, the last
// pixel's into the copy's zero tail), uneven paddings and strides, Q not a multiple of NR
// (packed dY panels) and Q == NR (dY rows used as they lie), several chunks; blocks of 64
// pixels across output rows (column kernel; chunks of 256-pixel groups, a last block short)
// and, for rows of >= 64 pixels, per row.
void test_backward_weight_direct() {
  set_conv_algorithm(ConvAlgorithm::Direct);  // the direct kernels (at AVX2 "auto" runs Winograd for 16 -> 16)
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 5, 70, 16, 40, 3, 3, 16, 1, 1, 1, 1, 1, 1),   // rows of 70: per row
      make_conv2d_geometry(2, 9, 66, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),   // 80 = 3 x 24 + 8 tail, per row
      make_conv2d_geometry(3, 9, 12, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),   // the same across rows
      make_conv2d_geometry(2, 11, 13, 20, 64, 2, 2, 20, 2, 2, 0, 1, 1, 0),  // 40 = 3 x 12 + 4 tail
      make_conv2d_geometry(3, 21, 19, 32, 64, 3, 3, 32, 2, 2, 1, 1, 1, 1),  // several chunks
      make_conv2d_geometry(2, 15, 17, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),
      make_conv2d_geometry(3, 20, 36, 3, 32, 7, 7, 3, 2, 2, 3, 3, 3, 3),
      make_conv2d_geometry(2, 11, 30, 7, 20, 3, 3, 7, 1, 2, 0, 2, 1, 0),
      make_conv2d_geometry(1, 9, 40, 10, 40, 4, 2, 10, 2, 1, 1, 2, 0, 1),
      make_conv2d_geometry(5, 6, 24, 8, 16, 3, 3, 8, 1, 1, 1, 1, 1, 1),
      make_conv2d_geometry(0, 9, 66, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2),   // no pixels: dW = db = 0
      // No padding, runs a whole number of blocks: x read in place, no copy. The last pixel's
      // run ends where x ends (2x2 S 2 on 16 x 20; ASan would see a read past it).
      make_conv2d_geometry(2, 16, 20, 32, 64, 2, 2, 32, 2, 2, 0, 0, 0, 0),
      make_conv2d_geometry(2, 6, 70, 16, 16, 3, 3, 16, 1, 1, 0, 0, 0, 0),   // rows of 68: per row
      make_conv2d_geometry(3, 11, 13, 16, 24, 3, 3, 16, 2, 2, 0, 0, 0, 0),
      // Padded, runs of 48 (a whole number of blocks at every level), rows of < 64 pixels:
      // pointers from indirect_block_table, no copy. Uneven paddings, a pad of 2 rows (kernel
      // rows above the image for a whole block), border runs on both sides.
      make_conv2d_geometry(2, 20, 22, 16, 32, 3, 3, 16, 2, 2, 1, 1, 1, 1),
      make_conv2d_geometry(3, 13, 17, 16, 24, 3, 3, 16, 2, 1, 2, 0, 1, 2),
      make_conv2d_geometry(2, 9, 30, 16, 16, 3, 3, 16, 1, 1, 2, 2, 0, 2)};
  for (const Conv2dGeometry& g : shapes) {
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
    CHECK(std::string(conv_kernel_choice<double>(g).backward_weight) == "direct");
    check_everywhere<double>(g, 1e-12, 31);
    check_everywhere<float>(g, 2e-5, 32);
  }
  set_conv_algorithm(ConvAlgorithm::Auto);
}

// The kernel gradient's stride-1 kernel on two vectors of filters (dw_s1_kernel_avx512 <FW = 7,
// 1 channel, 2 vectors>, the AVX-512 12 x 2-vector tile) from output rows of 24 pixels: chosen
// for exactly that, and right (float and double, every level and thread count) on rows of 24,
// 30 and 70 pixels, 1-3 panels of filters, uneven paddings, a 3 x 7 kernel with vertical
// stride 2, and rows of 23 (the column kernel's).
void test_dw_s1_two_vectors() {
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    const auto f2 = conv_detail::conv_kernels<float>(SimdLevel::AVX512);
    const auto d2 = conv_detail::conv_kernels<double>(SimdLevel::AVX512);
    const auto f1 = conv_detail::conv_kernels<float>(SimdLevel::AVX512, /*alt_tile=*/true);
    const auto k = conv_detail::dw_s1_kernels(f2, 7);
    CHECK(k.cb == 1 && k.min_wo == 24 && k.by_count[1] != nullptr);
    CHECK(conv_detail::dw_s1_kernels(d2, 7).cb == 1);
    CHECK(conv_detail::dw_s1_kernels(f2, 5).cb == 0 && conv_detail::dw_s1_kernels(f2, 3).cb == 0);
    CHECK(conv_detail::dw_s1_kernels(f1, 7).cb == 0 && conv_detail::dw_s1_kernels(f1, 5).cb == 3);
  }
  CHECK(conv_detail::dw_s1_kernels(conv_detail::conv_kernels<float>(SimdLevel::Portable), 7).cb == 0);
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 9, 24, 32, 32, 7, 7, 32, 1, 1, 3, 3, 3, 3),   // rows of 24, one panel
      make_conv2d_geometry(2, 8, 30, 5, 64, 7, 7, 5, 1, 1, 2, 4, 1, 5),     // 30, two panels, uneven
      make_conv2d_geometry(1, 5, 70, 3, 96, 7, 7, 3, 1, 1, 3, 3, 3, 3),     // 70 (per row anyway), three
      make_conv2d_geometry(2, 11, 26, 12, 32, 3, 7, 12, 2, 1, 1, 0, 2, 2),  // 3 x 7, S_h 2
      make_conv2d_geometry(2, 7, 23, 8, 32, 7, 7, 8, 1, 1, 3, 3, 3, 3)};    // 23: column kernel
  for (const Conv2dGeometry& g : shapes) {
    CHECK(std::string(conv_kernel_choice<float>(g).backward_weight) == "direct");
    check_everywhere<double>(g, 1e-12, 91);
    check_everywhere<float>(g, 1e-4, 92);  // sums of 200-1400 float products
  }
}

// indirect_block_table's pointers against the runs they stand for (copy_clipped_run of the
// kernel row's input row, zeros above and below the image and past the block's last pixel),
// value for value: one border copy serves the consecutive border pixels of an output row
// where S_w <= FW (7x7 padded by 3: three on each side; images narrower than the kernel:
// every pixel on both borders; blocks that start or end inside such a run of pixels), and
// where S_w > FW each pixel has its own.
template <typename T>
void check_indirect_table(const Conv2dGeometry& g, int64_t MR) {
  std::mt19937 rng(static_cast<uint32_t>(g.W * 131 + g.FW * 17 + MR));
  const auto x = random_vector<T>(g.N * g.H * g.W * g.C, rng);
  const int64_t len = g.FW * g.C, rows = g.N * g.Ho * g.Wo;
  const std::vector<T> zeros(static_cast<size_t>(len), T(0));
  std::vector<const T*> ptr(static_cast<size_t>(g.FH * MR));
  std::vector<T> edge(static_cast<size_t>(g.FH * MR * len)), want(static_cast<size_t>(len));
  bool ok = true;
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    const int64_t nr = std::min(MR, rows - r0);
    std::fill(edge.begin(), edge.end(), T(777));
    int64_t h0 = -1, h1 = -1;
    conv_detail::indirect_block_table(g, x.data(), zeros.data(), MR, r0, nr, ptr.data(), edge.data(), h0, h1);
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t h = 0; h < g.FH; ++h) {
        std::fill(want.begin(), want.end(), T(0));
        const int64_t r = r0 + i, n = r / (g.Ho * g.Wo), ho = r / g.Wo % g.Ho, wo = r % g.Wo;
        const int64_t ih = ho * g.stride_h - g.pad_top + h;
        if (i < nr && ih >= 0 && ih < g.H)
          conv_detail::copy_clipped_run(want.data(), x.data() + (n * g.H + ih) * g.W * g.C,
                                        wo * g.stride_w - g.pad_left, g.FW, g.C, g.W);
        const T* got = ptr[static_cast<size_t>(h * MR + i)];
        ok = ok && std::equal(want.begin(), want.end(), got);
        if (i < nr && ih >= 0 && ih < g.H) ok = ok && h >= h0 && h < h1;
      }
  }
  CHECK(ok);
  if (!ok)
    std::printf("  table W=%lld FW=%lld S_w=%lld MR=%lld\n", (long long)g.W, (long long)g.FW, (long long)g.stride_w,
                (long long)MR);
}

void test_indirect_table_border_runs() {
  const Conv2dGeometry shapes[] = {
      make_conv2d_geometry(2, 6, 11, 3, 8, 7, 7, 3, 1, 1, 3, 3, 3, 3),   // 3 + 5 inside + 3
      make_conv2d_geometry(2, 5, 4, 2, 8, 7, 7, 2, 1, 1, 3, 3, 3, 3),    // W < FW: all on both
      make_conv2d_geometry(1, 7, 13, 4, 8, 3, 5, 4, 2, 2, 1, 2, 2, 3),   // S 2, uneven pads
      make_conv2d_geometry(1, 6, 14, 3, 8, 3, 2, 3, 1, 3, 1, 1, 1, 2),   // S_w 3 > FW 2
      make_conv2d_geometry(2, 4, 9, 5, 8, 2, 4, 5, 1, 4, 0, 1, 3, 3),    // S_w 4 = FW 4
      make_conv2d_geometry(1, 9, 20, 1, 8, 5, 5, 1, 2, 1, 4, 4, 4, 4)};  // pads of 4 (FW - 1)
  for (const Conv2dGeometry& g : shapes)
    for (int64_t MR : {1, 2, 5, 12, 24}) {
      check_indirect_table<float>(g, MR);
      check_indirect_table<double>(g, MR);
    }
}

// The small-C kernel gradient (backward_weight_smallc) at every level, called directly: filter
// counts below, at and past one vector and two (the AVX-512 block is two zmm vectors, the last
// one masked), tap blocks of 1-4 kernel rows x 1-3 run values (7x7: row groups 4 + 3), strides
// and uneven paddings, float and double. The per-lane sums run in the same order at AVX2 and
// AVX-512, so those two give the same bits.
template <typename T>
void check_smallc_weight_gradient(const Conv2dGeometry& g, double tol, uint32_t seed) {
  std::mt19937 rng(seed);
  auto x = random_vector<T>(g.N * g.H * g.W * g.C, rng), dy = random_vector<T>(g.N * g.Ho * g.Wo * g.Q, rng);
  const size_t nw = static_cast<size_t>(g.Q * g.FH * g.FW * g.C);
  std::vector<T> dw_ref(nw), db_ref(static_cast<size_t>(g.Q));
  conv2d_reference_backward_weight(g, x.data(), dy.data(), dw_ref.data(), db_ref.data());
  std::vector<T> dw_avx2, db_avx2;
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    std::vector<T> dw(nw, T(7)), db(static_cast<size_t>(g.Q), T(7));
    conv_detail::backward_weight_smallc(conv_detail::conv_kernels<T>(), g, x.data(), dy.data(), dw.data(), db.data());
    for (size_t i = 0; i < nw; ++i) CHECK_NEAR(dw[i], dw_ref[i], tol);
    for (int64_t q = 0; q < g.Q; ++q) CHECK_NEAR(db[q], db_ref[q], tol);
    if (level == static_cast<int>(SimdLevel::AVX2)) {
      dw_avx2 = dw;
      db_avx2 = db;
    }
    if (level == static_cast<int>(SimdLevel::AVX512)) CHECK(dw == dw_avx2 && db == db_avx2);
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

void test_smallc_weight_gradient() {
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX512) {
    CHECK(conv_detail::conv_kernels<float>(SimdLevel::AVX512).VL == 32);
    CHECK(conv_detail::conv_kernels<double>(SimdLevel::AVX512).VL == 16);
  }
  for (int64_t q : {1, 5, 16, 17, 31, 32, 33, 40, 70}) {
    check_smallc_weight_gradient<float>(make_conv2d_geometry(2, 9, 11, 3, q, 3, 3, 3, 2, 2, 1, 1, 1, 0), 2e-5,
                                        static_cast<uint32_t>(300 + q));
    check_smallc_weight_gradient<double>(make_conv2d_geometry(2, 9, 11, 3, q, 3, 3, 3, 2, 2, 1, 1, 1, 0), 1e-12,
                                         static_cast<uint32_t>(400 + q));
  }
  const Conv2dGeometry shapes[] = {make_conv2d_geometry(3, 20, 18, 3, 24, 7, 7, 3, 2, 2, 3, 3, 3, 3),
                                   make_conv2d_geometry(2, 12, 10, 1, 32, 5, 5, 1, 1, 1, 2, 2, 2, 2),
                                   make_conv2d_geometry(2, 8, 9, 4, 48, 2, 3, 4, 1, 2, 0, 1, 1, 0),
                                   make_conv2d_geometry(1, 6, 7, 2, 9, 4, 1, 2, 1, 1, 2, 1, 0, 0)};
  uint32_t seed = 500;
  for (const Conv2dGeometry& g : shapes) {
    check_smallc_weight_gradient<float>(g, 2e-5, ++seed);
    check_smallc_weight_gradient<double>(g, 1e-12, ++seed);
  }
}

// Which kernel each pass picks for shapes of each family (select.h), at every level.
void test_kernel_choice() {
  for (int level = 0; level <= static_cast<int>(nablagrad::cpu_simd_level()); ++level) {
    nablagrad::set_simd_level(static_cast<SimdLevel>(level));
    const auto cfg = nablagrad::kernels::conv_detail::conv_kernels<float>();
    CHECK(static_cast<int>(cfg.level) <= level);
    CHECK(cfg.MR * cfg.NR <= nablagrad::kernels::conv_detail::kMaxTileValues);
    CHECK(cfg.VL <= nablagrad::kernels::conv_detail::kSmallCAccStride);
    const auto first = make_conv2d_geometry(8, 32, 32, 3, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1);
    const ConvKernelChoice c = conv_kernel_choice<float>(first);
    CHECK(std::string(c.forward) == "direct");
    CHECK(std::string(c.backward_weight) == "smallc");
    // A strided layer the indirect kernel runs, but with at most 800 output pixels (128 here,
    // 800 at 2 x 20 x 20): im2col + gemm(), except with the algorithm set to "direct".
    const auto wide = make_conv2d_geometry(2, 16, 16, 128, 64, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(wide).forward) == "gemm");
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 40, 40, 96, 64, 3, 3, 96, 2, 2, 1, 1, 1, 1)).forward) == "gemm");
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 40, 42, 96, 64, 3, 3, 96, 2, 2, 1, 1, 1, 1)).forward) == "indirect");
    // (With 128 channels, K = 1152, past 800 pixels too at the vector levels: the GEMM, in place.)
    const bool vec = nablagrad::simd_level() != SimdLevel::Portable;
    CHECK(std::string(conv_kernel_choice<float>(make_conv2d_geometry(2, 40, 42, 128, 64, 3, 3, 128, 2, 2, 1, 1, 1, 1)).forward) == (vec ? "gemm" : "indirect"));
    set_conv_algorithm(ConvAlgorithm::Direct);
    CHECK(std::string(conv_kernel_choice<float>(wide).forward) == "indirect");
    set_conv_algorithm(ConvAlgorithm::Auto);
    // A kernel panel K x NR beyond 256 KiB (K = 4608, 884 KB of kernel): at the portable level
    // the indirect kernel all the same, at the vector levels the GEMM in place (its filters
    // whole panels of the GEMM's tile; gemm() on at most 800 pixels anyway); with 64 filters the
    // whole kernel passes 1 MiB: gemm().
    const auto huge_k = make_conv2d_geometry(1, 8, 8, 512, 48, 3, 3, 512, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(huge_k).forward) == "gemm");
    const auto deep_s2 = make_conv2d_geometry(2, 48, 48, 512, 48, 3, 3, 512, 2, 2, 1, 1, 1, 1);
    const auto deep_7x7 = make_conv2d_geometry(2, 32, 32, 64, 64, 7, 7, 64, 1, 1, 3, 3, 3, 3);
    CHECK(std::string(conv_kernel_choice<float>(deep_s2).forward) == (vec ? "gemm" : "indirect"));
    // (At AVX-512 the 7x7 on rows of 32 runs the 2-vector stride-1 direct kernel, panels up
    // to 512 KiB; past that, 96 channels, the indirect kernel there too.)
    const bool s1_two = nablagrad::simd_level() >= SimdLevel::AVX512;
    CHECK(std::string(conv_kernel_choice<float>(deep_7x7).forward) == (s1_two ? "direct" : "indirect"));
    const auto wide_7x7 = make_conv2d_geometry(2, 32, 32, 96, 32, 7, 7, 96, 1, 1, 3, 3, 3, 3);
    CHECK(std::string(conv_kernel_choice<float>(wide_7x7).forward) == "indirect");
    const auto huge_kq = make_conv2d_geometry(1, 8, 8, 512, 64, 3, 3, 512, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(huge_kq).forward) == "gemm");
    // The forward's indirect kernel up to 1.25 MiB of kernel (forward_kernel_fits_cache; at the
    // vector levels the GEMM in place takes these deep kernels first), its dX and dW's paths only
    // up to 1 MiB (kernel_fits_cache): 1.13 MiB at 128 -> 256 (841 output pixels), 1.41 MiB at
    // 160 -> 256.
    const auto mib_1_13 = make_conv2d_geometry(1, 58, 58, 128, 256, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    const auto mib_1_41 = make_conv2d_geometry(1, 58, 58, 160, 256, 3, 3, 160, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(mib_1_13).forward) == (vec ? "gemm" : "indirect"));
    CHECK(std::string(conv_kernel_choice<float>(mib_1_13).backward_input) == "col2im_gemm");
    CHECK(std::string(conv_kernel_choice<float>(mib_1_13).backward_weight) == "im2col_gemm");
    CHECK(std::string(conv_kernel_choice<float>(mib_1_41).forward) == "gemm");

    CHECK(std::string(conv_kernel_choice<float>(wide).backward_input) == "phases_direct");
    // 32 times more filters than channels on dY rows of 8: dY.W by gemm() and col2im (with
    // 128 channels the whole kernel passes 1 MiB, the same path).
    const auto deep = make_conv2d_geometry(2, 16, 16, 16, 512, 3, 3, 16, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(deep).backward_input) == "col2im_gemm");
    // Deep 3x3 stride-1 layers on small images: too few tiles for Winograd's transformed
    // kernel (winograd_amortized: 64 here) send them to the gemm() paths, pass by pass.
    const auto c7 = conv_kernel_choice<float>(make_conv2d_geometry(4, 7, 7, 512, 512, 3, 3, 512, 1, 1, 1, 1, 1, 1));
    CHECK(std::string(c7.forward) == "gemm" && std::string(c7.backward_input) == "col2im_gemm" &&
          std::string(c7.backward_weight) == "im2col_gemm");
    const auto c14 = conv_kernel_choice<float>(make_conv2d_geometry(8, 14, 14, 256, 256, 3, 3, 256, 1, 1, 1, 1, 1, 1));
    CHECK(std::string(c14.forward) == "winograd" && std::string(c14.backward_input) == "winograd" &&
          std::string(c14.backward_weight) == "im2col_gemm");
    // The rule counts tiles: from 96 they repay the kernel transform (128 here).
    const auto c7w = conv_kernel_choice<float>(make_conv2d_geometry(8, 7, 7, 512, 512, 3, 3, 512, 1, 1, 1, 1, 1, 1));
    CHECK(std::string(c7w.forward) == "winograd" && std::string(c7w.backward_input) == "winograd" &&
          std::string(c7w.backward_weight) == "im2col_gemm");
    const auto c55 = conv_kernel_choice<float>(make_conv2d_geometry(8, 7, 7, 256, 256, 5, 5, 256, 1, 1, 2, 2, 2, 2));
    CHECK(std::string(c55.forward) == "winograd" && std::string(c55.backward_weight) == "im2col_gemm");
    // A 5x5 dW's transformed kernel may take 8 KB per tile (3x3: 4): 4.6 KB at (8,14,14,112->112),
    // 12 KB with 4 images of 128 -> 128, 9.4 KB with 8 of 160 -> 160; a 3x3 of 192 -> 192 on 8
    // images of 14 x 14 takes 6 KB.
    const auto amortized = [](int64_t n, int64_t c, int64_t f) {
      return nablagrad::kernels::winograd_amortized<float>(make_conv2d_geometry(n, 14, 14, c, c, f, f, c, 1, 1, f / 2, f / 2, f / 2, f / 2), true);
    };
    CHECK(amortized(8, 112, 5) && !amortized(4, 128, 5) && !amortized(8, 160, 5));
    CHECK(!amortized(8, 192, 3));
    // Batch 1 (winograd_amortized's small-batch rule: 3x3 in float from AVX2, outputs of even
    // height and width): 49 tiles of 86 KB of transformed kernel and 36 of 117 KB at AVX2 and
    // AVX-512; 342 KB per tile (512 -> 512) and 25 tiles (10 x 10) only at AVX2; 7 x 7 never.
    {
      const bool vec = level >= static_cast<int>(SimdLevel::AVX2), avx2 = level == static_cast<int>(SimdLevel::AVX2);
      const auto choice = [](int64_t n, int64_t hw, int64_t c) {
        return conv_kernel_choice<float>(make_conv2d_geometry(n, hw, hw, c, c, 3, 3, c, 1, 1, 1, 1, 1, 1));
      };
      const auto wino = [&](int64_t n, int64_t hw, int64_t c) {
        const ConvKernelChoice k = choice(n, hw, c);
        const bool f = std::string(k.forward) == "winograd", b = std::string(k.backward_input) == "winograd";
        CHECK(f == b);
        CHECK(f || (std::string(k.forward) == "gemm" && std::string(k.backward_input) == "col2im_gemm"));
        return f;
      };
      CHECK(wino(1, 14, 256) == vec && wino(1, 16, 256) == vec && wino(1, 12, 256) == vec);
      CHECK(wino(1, 14, 512) == avx2 && wino(1, 10, 256) == avx2);
      CHECK(!wino(2, 7, 512) && !wino(4, 7, 256) && !wino(1, 8, 256));
      const auto d14 = conv_kernel_choice<double>(make_conv2d_geometry(1, 14, 14, 256, 256, 3, 3, 256, 1, 1, 1, 1, 1, 1));
      CHECK(std::string(d14.forward) == "gemm");
    }
    // 5x5 under 96 tiles (winograd_amortized): from 24 tiles with C Q >= 16384 at the vector
    // levels in float; else the gemm() paths.
    {
      const bool vec = level >= static_cast<int>(SimdLevel::AVX2);
      const auto wino5 = [](int64_t n, int64_t hw, int64_t c, int64_t q) {
        const ConvKernelChoice k = conv_kernel_choice<float>(make_conv2d_geometry(n, hw, hw, c, q, 5, 5, c, 1, 1, 2, 2, 2, 2));
        const bool f = std::string(k.forward) == "winograd", b = std::string(k.backward_input) == "winograd";
        CHECK(f == b);
        CHECK(f || (std::string(k.forward) == "gemm" && std::string(k.backward_input) == "col2im_gemm"));
        return f;
      };
      CHECK(wino5(4, 7, 256, 256) == vec && wino5(2, 8, 128, 128) == vec && wino5(1, 10, 256, 256) == vec);
      CHECK(wino5(2, 8, 64, 256) == vec && wino5(4, 6, 256, 256) == vec);
      CHECK(!wino5(1, 8, 512, 512) && !wino5(2, 6, 128, 128) && !wino5(1, 10, 96, 128) && !wino5(2, 8, 96, 128));
      const auto d5 = conv_kernel_choice<double>(make_conv2d_geometry(2, 8, 8, 128, 128, 5, 5, 128, 1, 1, 2, 2, 2, 2));
      CHECK(std::string(d5.forward) == "gemm");
    }
    const auto c28 = conv_kernel_choice<float>(make_conv2d_geometry(8, 28, 28, 128, 128, 3, 3, 128, 1, 1, 1, 1, 1, 1));
    CHECK(std::string(c28.forward) == "winograd" && std::string(c28.backward_weight) == "winograd");
    const auto deeper = make_conv2d_geometry(2, 16, 16, 128, 512, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(deeper).backward_input) == "col2im_gemm");
    CHECK(std::string(conv_kernel_choice<float>(deeper).backward_weight) == "im2col_gemm");
    // From 128 channels over at most 8 Q (and 4096) pixels: im2col + gemm(), not the direct
    // kernel's partial sums of the whole kernel; over more pixels the direct kernel.
    CHECK(std::string(conv_kernel_choice<float>(wide).backward_weight) == "im2col_gemm");
    // The edge, under Auto (strided: no Winograd): 2 x 16 x 16 = 512 = 8 Q pixels, then 3 x 16 x
    // 16; and 512 -> 32 over 2048 pixels (im2col + gemm() measured 2.3x slower).
    const auto edge_in = make_conv2d_geometry(2, 32, 32, 128, 64, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    const auto edge_out = make_conv2d_geometry(3, 32, 32, 128, 64, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    const auto few_filters = make_conv2d_geometry(8, 32, 32, 512, 32, 3, 3, 512, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(few_filters).backward_weight) == "direct");
    CHECK(std::string(conv_kernel_choice<float>(edge_in).backward_weight) == "im2col_gemm");
    CHECK(std::string(conv_kernel_choice<float>(edge_out).backward_weight) == "direct");
    CHECK(std::string(conv_kernel_choice<double>(edge_out).backward_weight) == "direct");
    // Past 3x3 only with Q >= C: 5x5 128 -> 64 keeps the direct kernel, 128 -> 128 does not.
    // (2 images: 4 take Winograd at AVX-512, 16 blocks of its tiles.)
    const auto k5_down = make_conv2d_geometry(2, 16, 16, 128, 64, 5, 5, 128, 1, 1, 2, 2, 2, 2);
    const auto k5_same = make_conv2d_geometry(4, 8, 8, 128, 128, 5, 5, 128, 1, 1, 2, 2, 2, 2);
    CHECK(std::string(conv_kernel_choice<float>(k5_down).backward_weight) == "direct");
    CHECK(std::string(conv_kernel_choice<float>(k5_same).backward_weight) == "im2col_gemm");
    const auto wide_many = make_conv2d_geometry(8, 28, 28, 128, 64, 3, 3, 128, 1, 1, 1, 1, 1, 1);
    set_conv_algorithm(ConvAlgorithm::Direct);
    CHECK(std::string(conv_kernel_choice<float>(wide_many).backward_weight) == "direct");
    set_conv_algorithm(ConvAlgorithm::Auto);
    const auto c1 = make_conv2d_geometry(4, 28, 28, 1, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(c1).backward_input) == (level >= 1 ? "smallc" : "flipped_narrow"));
    CHECK(std::string(conv_kernel_choice<float>(c1).backward_weight) == "smallc");  // FW*C = 3: MR wastes most
    // Kernel rows of FW*C values that blocks of MR cover with little waste, filters Q <= 2*Wo:
    // the kernel gradient reads the padded input in place (no im2col), first layers included.
    const auto k5 = make_conv2d_geometry(4, 96, 96, 16, 16, 5, 5, 16, 1, 1, 2, 2, 2, 2);
    CHECK(std::string(conv_kernel_choice<float>(k5).backward_weight) == "direct");
    CHECK(std::string(conv_kernel_choice<double>(k5).backward_weight) == "direct");
    const auto k7 = make_conv2d_geometry(8, 64, 64, 3, 32, 7, 7, 3, 2, 2, 3, 3, 3, 3);
    CHECK(std::string(conv_kernel_choice<float>(k7).backward_weight) == "direct");
    // Strided with short kernel-row runs (7x7 on 3 channels: 21 values): the direct forward.
    CHECK(std::string(conv_kernel_choice<float>(k7).forward) == "direct");
    // Strided input gradient with channels that fill the tile: phases read in place from dY.
    CHECK(std::string(conv_kernel_choice<float>(k7).backward_input) == "col2im");  // C = 3
    const auto s2w = make_conv2d_geometry(16, 32, 32, 32, 64, 3, 3, 32, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(s2w).backward_input) == "phases_direct");
    // ... unless the filters make dY.W a deep GEMM: Q >= C with Q >= 64 on dY rows of <= 12
    // pixels, or 3x3 with Q >= 96 on inputs up to 64 wide (dY.W by gemm(), then col2im).
    const auto s2n = make_conv2d_geometry(4, 14, 14, 64, 64, 3, 3, 64, 2, 2, 1, 1, 1, 1);
    const auto s2q = make_conv2d_geometry(2, 32, 32, 64, 128, 3, 3, 64, 2, 2, 1, 1, 1, 1);
    const auto s2big = make_conv2d_geometry(1, 66, 66, 64, 128, 3, 3, 64, 2, 2, 1, 1, 1, 1);
    const auto s2c = make_conv2d_geometry(2, 32, 32, 128, 96, 3, 3, 128, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(s2n).backward_input) == "col2im_gemm");
    CHECK(std::string(conv_kernel_choice<float>(s2q).backward_input) == "col2im_gemm");
    CHECK(std::string(conv_kernel_choice<float>(s2big).backward_input) == "phases_direct");
    CHECK(std::string(conv_kernel_choice<float>(s2c).backward_input) == "phases_direct");
    // A tall narrow image whose dY.W rows would pass col2im_gemm's 8 MiB block (4000 x 7
    // pixels x 576 values) keeps the direct phases.
    const auto s2tall = make_conv2d_geometry(1, 8000, 14, 64, 64, 3, 3, 64, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(s2tall).backward_input) == "phases_direct");
    const auto s2 = make_conv2d_geometry(16, 32, 32, 32, 64, 3, 3, 32, 2, 2, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(s2).backward_weight) == "direct");
    // Kernel rows of 9 or 7 values (3x1 on 9 or 7 channels): blocks of MR (and of the shorter
    // tail tile) pad a third or more at some levels, but with more than 4 channels the direct
    // kernel all the same (the GEMM pads its depth too), at every level.
    const auto r9 = make_conv2d_geometry(2, 16, 16, 9, 64, 3, 1, 9, 2, 2, 1, 1, 0, 0);
    CHECK(std::string(conv_kernel_choice<float>(r9).backward_weight) == "direct");
    CHECK(std::string(conv_kernel_choice<double>(r9).backward_weight) == "direct");
    const auto r7 = make_conv2d_geometry(2, 16, 16, 7, 64, 3, 1, 7, 2, 2, 1, 1, 0, 0);
    CHECK(std::string(conv_kernel_choice<float>(r7).backward_weight) == "direct");
    // 6 channels on 24 filters: rows of 18 on the narrow AVX-512 tile's 24 rows.
    const auto r18 = make_conv2d_geometry(2, 12, 12, 6, 24, 3, 3, 6, 1, 1, 1, 1, 1, 1);
    CHECK(std::string(conv_kernel_choice<float>(r18).backward_weight) == "direct");
    // A padded copy far larger than the input and output (padding 1000, stride 200): the
    // im2col GEMM, which reads the padding as zeros.
    const auto far = make_conv2d_geometry(1, 3, 3, 8, 16, 3, 3, 8, 200, 200, 1000, 1000, 1000, 1000);
    CHECK(std::string(conv_kernel_choice<float>(far).backward_weight) == "gemm");
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  // A 5x5 that the rule sends to Winograd at AVX2 and AVX-512, to the gemm() paths at the
  // portable level: every pass at every level against the oracle (F(2x2,5x5)'s float error:
  // dX 4.4e-4 by this element-wise measure, its sums 256 x 25 deep).
  check_everywhere<float>(make_conv2d_geometry(2, 8, 8, 64, 256, 5, 5, 64, 1, 1, 2, 2, 2, 2), 2e-3, 61);
}

// The kernel gradient's direct kernel on kernel rows its tiles pad by a third or more (more
// than 4 channels), and the im2col GEMM where the padded copy would dwarf the input, against
// the oracle at every level.
void test_backward_weight_padded_rows() {
  const auto r9 = make_conv2d_geometry(2, 16, 16, 9, 64, 3, 1, 9, 2, 2, 1, 1, 0, 0);
  const auto r18 = make_conv2d_geometry(2, 12, 12, 6, 24, 3, 3, 6, 1, 1, 1, 1, 1, 1);
  const auto r5 = make_conv2d_geometry(2, 9, 7, 5, 40, 3, 1, 5, 1, 1, 1, 1, 0, 0);
  const auto far = make_conv2d_geometry(1, 3, 3, 8, 16, 3, 3, 8, 200, 200, 1000, 1000, 1000, 1000);
  uint32_t seed = 90;
  for (const auto& g : {r9, r18, r5, far}) {
    check_everywhere<float>(g, 2e-4, seed++);
    check_everywhere<double>(g, 1e-12, seed++);
  }
}

// The process-wide algorithm setting: names, parsing, invalid values; "direct" never picks a
// Winograd kernel, and every setting computes the same convolution.
void test_algorithm_setting() {
  CHECK(conv_algorithm() == ConvAlgorithm::Auto);
  for (ConvAlgorithm a : {ConvAlgorithm::Auto, ConvAlgorithm::Direct, ConvAlgorithm::Winograd})
    CHECK(parse_conv_algorithm(conv_algorithm_name(a)) == a);
  CHECK_THROWS(parse_conv_algorithm("fft"), std::invalid_argument);
  CHECK_THROWS(parse_conv_algorithm("Auto"), std::invalid_argument);
  const auto g = make_conv2d_geometry(2, 12, 12, 8, 16, 3, 3, 8, 1, 1, 1, 1, 1, 1);
  for (ConvAlgorithm a : {ConvAlgorithm::Direct, ConvAlgorithm::Winograd, ConvAlgorithm::Auto}) {
    set_conv_algorithm(a);
    CHECK(conv_algorithm() == a);
    if (a == ConvAlgorithm::Direct)
      CHECK(std::string(conv_kernel_choice<float>(g).forward).find("winograd") == std::string::npos);
    check_everywhere<double>(g, 1e-10, 11);
  }
  CHECK(conv_algorithm() == ConvAlgorithm::Auto);
}

void test_geometry_errors() {
  CHECK_THROWS(make_conv2d_geometry(2, 8, 8, 3, 4, 3, 3, 4, 1, 1, 0, 0, 0, 0),
               std::invalid_argument);
  try {
    make_conv2d_geometry(2, 8, 8, 3, 4, 3, 3, 4, 1, 1, 0, 0, 0, 0);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "conv2d: input has C=3 channels but kernel expects C=4 (input (2,8,8,3), kernel "
          "(4,3,3,4))");
  }
  CHECK_THROWS(make_conv2d_geometry(1, 2, 8, 1, 1, 3, 3, 1, 1, 1, 0, 0, 0, 0),
               std::invalid_argument);  // kernel taller than input
  CHECK_THROWS(make_conv2d_geometry(1, 8, 8, 1, 1, 3, 3, 1, 0, 1, 0, 0, 0, 0),
               std::invalid_argument);  // stride 0
  CHECK_THROWS(make_conv2d_geometry(1, 8, 8, 1, 1, 3, 3, 1, 1, -1, 0, 0, 0, 0),
               std::invalid_argument);  // negative stride
  CHECK_THROWS(make_conv2d_geometry(1, 8, 8, 1, 1, 3, 3, 1, 1, 1, -1, 0, 0, 0),
               std::invalid_argument);  // negative padding
  CHECK_THROWS(make_conv2d_geometry(1, 8, 8, 0, 1, 3, 3, 0, 1, 1, 0, 0, 0, 0),
               std::invalid_argument);  // C = 0
  CHECK_THROWS(make_conv2d_geometry(1, 8, 8, 1, 0, 3, 3, 1, 1, 1, 0, 0, 0, 0),
               std::invalid_argument);  // Q = 0
  CHECK_THROWS(make_conv2d_geometry(-1, 8, 8, 1, 1, 3, 3, 1, 1, 1, 0, 0, 0, 0),
               std::invalid_argument);  // N < 0
  // Kernel fits only thanks to padding: fine. padding="same" with an even kernel.
  auto g = make_conv2d_geometry(1, 2, 2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  CHECK(g.Ho == 2 && g.Wo == 2);
  auto s = make_conv2d_geometry(1, 9, 7, 1, 1, 4, 4, 1, 1, 1, 1, 2, 1, 2);
  CHECK(s.Ho == 9 && s.Wo == 7);
  // N = 0 is an empty batch: no work, zero weight gradient.
  auto e = make_conv2d_geometry(0, 5, 5, 2, 3, 3, 3, 2, 1, 1, 1, 1, 1, 1);
  std::vector<double> dw(3 * 9 * 2, 1.0), db(3, 1.0);
  conv2d_backward_weight<double>(e, nullptr, nullptr, dw.data(), db.data());
  CHECK(dw == std::vector<double>(3 * 9 * 2, 0.0));
  CHECK(db == std::vector<double>(3, 0.0));
}

}  // namespace

int main() {
  RUN_TEST(test_worked_example);
  RUN_TEST(test_helpers);
  RUN_TEST(test_reference_gradcheck);
  RUN_TEST(test_uneven_stride_28_to_14);
  RUN_TEST(test_geometry_errors);
  RUN_TEST(test_backward_weight_direct);
  RUN_TEST(test_dw_s1_two_vectors);
  RUN_TEST(test_indirect_table_border_runs);
  RUN_TEST(test_backward_input_phases_direct);
  RUN_TEST(test_direct_three);
  RUN_TEST(test_direct_s1_two);
  RUN_TEST(test_indirect_short_rows);
  RUN_TEST(test_direct_wide_first_layers);
  RUN_TEST(test_direct_one_vector);
  RUN_TEST(test_backward_input_phases_gather);
  RUN_TEST(test_indirect_big_panel);
  RUN_TEST(test_forward_gemm);
  RUN_TEST(test_forward_gemm_in_place);
  RUN_TEST(test_dx_col2im_gemm_skips_padding);
  RUN_TEST(test_weight_gradient_product);
  RUN_TEST(test_forward_indirect);
  RUN_TEST(test_indirect_tiles_by_filters);
  RUN_TEST(test_narrow);
  RUN_TEST(test_padding_rows_skipped);
  RUN_TEST(test_sweep_double);
  RUN_TEST(test_sweep_float);
  RUN_TEST(test_larger_shapes);
  RUN_TEST(test_pointwise);
  RUN_TEST(test_register_tiles);
  RUN_TEST(test_direct_s1);
  RUN_TEST(test_direct_fixed_stride);
  RUN_TEST(test_avx2_three_vector_tile);
  RUN_TEST(test_avx512_tile_per_pass);
  RUN_TEST(test_kernel_choice);
  RUN_TEST(test_backward_weight_padded_rows);
  RUN_TEST(test_smallc_weight_gradient);
  RUN_TEST(test_algorithm_setting);
  return test_util::finish();
}
