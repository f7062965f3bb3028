// Tests for kernels::gemm against the kernels::gemm_reference oracle.
//
// Every case runs gemm for each simd level (portable, and AVX2 when the CPU has it) and for
// 1, 2 and 3 threads, and checks
//   * the error against a float64 reference is within the worst-case rounding bound,
//   * the result is bitwise identical for every thread count (fixed simd level).
// Shapes sweep odd sizes (1..70, not multiples of the 6x16 / 4x8 tiles) and a few large
// ones, all four transpose combinations (through strides), accumulate on/off, padded leading
// dimensions, float and double. main() lowers gemm_parallel_threshold() to 0 so that small
// shapes take the multithreaded path too.
//
//   g++ -std=c++17 -O2 -Wall -Wextra -Werror -pthread -I cpp/include tests/cpp/test_gemm.cpp
#include "nablagrad/kernels/gemm.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "test_util.h"

namespace {

using nablagrad::SimdLevel;
using nablagrad::kernels::gemm;
using nablagrad::kernels::gemm_reference;

std::vector<SimdLevel> simd_levels() {
  std::vector<SimdLevel> levels = {SimdLevel::Portable};
  if (nablagrad::cpu_has_avx2_fma()) levels.push_back(SimdLevel::AVX2);
  if (nablagrad::cpu_has_avx512f()) levels.push_back(SimdLevel::AVX512);
  return levels;
}

const char* level_name(SimdLevel level) { return nablagrad::simd_level_name(level); }

struct Shape {
  int64_t M, N, K;
};

// One problem: operands stored with padded leading dimensions, optionally transposed.
template <typename T>
struct Problem {
  int64_t M, N, K;
  bool trans_a, trans_b, accumulate;
  int64_t lda, ldb, ldc;
  std::vector<T> a, b, c0;
  // A(i,k) = a[i*a_rs + k*a_cs], B(k,j) = b[k*b_rs + j*b_cs]
  int64_t a_rs, a_cs, b_rs, b_cs;

  Problem(Shape s, bool ta, bool tb, bool acc, std::mt19937& rng)
      : M(s.M), N(s.N), K(s.K), trans_a(ta), trans_b(tb), accumulate(acc) {
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    // Stored as [M,K] (or [K,M] when transposed) with 0..2 elements of row padding.
    const int64_t pad_a = static_cast<int64_t>(rng() % 3), pad_b = static_cast<int64_t>(rng() % 3);
    lda = (ta ? M : K) + pad_a;
    ldb = (tb ? K : N) + pad_b;
    ldc = N + static_cast<int64_t>(rng() % 3);
    a.resize(static_cast<size_t>((ta ? K : M) * lda + 1));
    b.resize(static_cast<size_t>((tb ? N : K) * ldb + 1));
    c0.resize(static_cast<size_t>(M * ldc + 1));
    for (auto& x : a) x = static_cast<T>(dist(rng));
    for (auto& x : b) x = static_cast<T>(dist(rng));
    for (auto& x : c0) x = static_cast<T>(dist(rng));
    a_rs = ta ? 1 : lda;
    a_cs = ta ? lda : 1;
    b_rs = tb ? 1 : ldb;
    b_cs = tb ? ldb : 1;
    compute_reference();
  }

  std::vector<T> run_gemm() const {
    std::vector<T> c = c0;
    gemm<T>(M, N, K, a.data(), a_rs, a_cs, b.data(), b_rs, b_cs, c.data(), ldc, accumulate);
    return c;
  }

  // float64 reference and, per element, sum|a b| (+ |c0| when accumulating).
  std::vector<double> ref, abs_ref;

  void compute_reference() {
    std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end());
    std::vector<double> abs_a(ad.size()), abs_b(bd.size());
    for (size_t i = 0; i < ad.size(); ++i) abs_a[i] = std::fabs(ad[i]);
    for (size_t i = 0; i < bd.size(); ++i) abs_b[i] = std::fabs(bd[i]);
    ref.assign(c0.begin(), c0.end());
    abs_ref.resize(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) abs_ref[i] = std::fabs(ref[i]);
    gemm_reference<double>(M, N, K, ad.data(), a_rs, a_cs, bd.data(), b_rs, b_cs, ref.data(), ldc,
                           accumulate);
    gemm_reference<double>(M, N, K, abs_a.data(), a_rs, a_cs, abs_b.data(), b_rs, b_cs,
                           abs_ref.data(), ldc, accumulate);
  }

  // Worst-case check against the float64 reference: |c - ref| <= (K + 2) eps (sum|a b| + |c0|).
  // Also checks that the padding of C (columns N..ldc) was left untouched.
  bool matches_reference(const std::vector<T>& c, double* worst_ratio) const {
    const std::vector<double>& cd = ref;
    const std::vector<double>& abs_c = abs_ref;
    const double eps = std::numeric_limits<T>::epsilon();
    bool ok = true;
    *worst_ratio = 0.0;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < ldc; ++j) {
        const size_t idx = static_cast<size_t>(i * ldc + j);
        if (j >= N) {
          if (std::memcmp(&c[idx], &c0[idx], sizeof(T)) != 0) ok = false;
          continue;
        }
        const double bound = (static_cast<double>(K) + 2.0) * eps * (abs_c[idx] + 1e-30);
        const double err = std::fabs(static_cast<double>(c[idx]) - cd[idx]);
        if (!(err <= bound)) ok = false;
        *worst_ratio = std::max(*worst_ratio, err / bound);
      }
    }
    if (std::memcmp(&c.back(), &c0.back(), sizeof(T)) != 0) ok = false;  // element past the end
    return ok;
  }
};

template <typename T>
void check_shape(Shape s, std::mt19937& rng) {
  for (int trans = 0; trans < 4; ++trans) {
    for (int acc = 0; acc < 2; ++acc) {
      const Problem<T> p(s, trans & 1, trans & 2, acc == 1, rng);
      for (SimdLevel level : simd_levels()) {
        nablagrad::set_simd_level(level);
        std::vector<T> first;
        for (int threads : {1, 2, 3}) {
          nablagrad::set_num_threads(threads);
          const std::vector<T> c = p.run_gemm();
          double ratio = 0.0;
          const bool ok = p.matches_reference(c, &ratio);
          CHECK(ok);
          if (!ok)
            std::printf("  %s M=%lld N=%lld K=%lld trans_a=%d trans_b=%d accumulate=%d simd=%s "
                        "threads=%d lda=%lld ldb=%lld ldc=%lld: error/bound=%.3g\n",
                        sizeof(T) == 4 ? "float" : "double", static_cast<long long>(s.M),
                        static_cast<long long>(s.N), static_cast<long long>(s.K), trans & 1,
                        (trans >> 1) & 1, acc, level_name(level), threads,
                        static_cast<long long>(p.lda), static_cast<long long>(p.ldb),
                        static_cast<long long>(p.ldc), ratio);
          if (threads == 1) {
            first = c;
          } else {
            const bool same = std::memcmp(first.data(), c.data(), sizeof(T) * c.size()) == 0;
            CHECK(same);
            if (!same)
              std::printf("  %s M=%lld N=%lld K=%lld trans=%d accumulate=%d simd=%s: threads=%d "
                          "differs bitwise from threads=1\n",
                          sizeof(T) == 4 ? "float" : "double", static_cast<long long>(s.M),
                          static_cast<long long>(s.N), static_cast<long long>(s.K), trans, acc,
                          level_name(level), threads);
          }
        }
      }
    }
  }
}

std::vector<Shape> small_shapes() {
  std::vector<Shape> shapes;
  // Degenerate dimensions and tile edges.
  const int64_t edges[] = {1, 2, 5, 6, 7, 8, 9, 15, 16, 17};
  for (int64_t m : {1, 5, 6, 7, 13})
    for (int64_t n : {1, 8, 15, 16, 17, 33})
      for (int64_t k : {1, 3, 17}) shapes.push_back({m, n, k});
  for (int64_t e : edges) shapes.push_back({e, e, e});
  // Random odd sizes up to 70 (some big enough to take the threaded path).
  std::mt19937 rng(1234);
  for (int i = 0; i < 40; ++i) {
    shapes.push_back({1 + static_cast<int64_t>(rng() % 70), 1 + static_cast<int64_t>(rng() % 70),
                      1 + static_cast<int64_t>(rng() % 70)});
  }
  shapes.push_back({70, 70, 70});
  shapes.push_back({64, 64, 64});
  shapes.push_back({67, 1, 69});
  shapes.push_back({1, 69, 67});
  return shapes;
}

void test_small_shapes_float() {
  std::mt19937 rng(1);
  for (const Shape& s : small_shapes()) check_shape<float>(s, rng);
}

void test_small_shapes_double() {
  std::mt19937 rng(2);
  for (const Shape& s : small_shapes()) check_shape<double>(s, rng);
}

// Sizes beyond one MC / KC block and big enough for the threaded path, including K slices
// (K > KC) and thin / wide matrices that force an M-only or N-only thread split.
void test_large_shapes() {
  std::mt19937 rng(3);
  const Shape shapes[] = {{211, 263, 297}, {300, 7, 290}, {5, 301, 280}, {257, 255, 513}};
  for (const Shape& s : shapes) check_shape<float>(s, rng);
  const Shape double_shapes[] = {{211, 263, 297}, {97, 203, 300}};
  for (const Shape& s : double_shapes) check_shape<double>(s, rng);
}

// Edges of the AVX-512 tiles (6x64 / 8x32 float, 6x32 / 8x16 double, 8 x 1 vector up to one
// vector of columns; at AVX2 8 x 1 vector up to 8 floats / 4 doubles) and of the row count
// (48) where gemm_config() switches between them, at every level.
void test_wide_tile_edges() {
  std::mt19937 rng(5);
  for (int64_t m : {7, 8, 9, 47, 48, 49})
    for (int64_t n : {3, 4, 5, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 129})
      for (int64_t k : {1, 9, 300}) {
        check_shape<float>({m, n, k}, rng);
        if (k != 300) check_shape<double>({m, n, k}, rng);
      }
  check_shape<double>({49, 65, 300}, rng);
}

// gemm_config() picks the tile by the row count, which must not change a result: the first 40
// rows of a 100-row product (large-M tile) equal the 40-row product (small-M tile) bitwise.
template <typename T>
void check_row_count_independence() {
  std::mt19937 rng(6);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const int64_t M = 100, Ms = 40, N = 77, K = 600;
  std::vector<T> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * N));
  for (auto& x : a) x = static_cast<T>(dist(rng));
  for (auto& x : b) x = static_cast<T>(dist(rng));
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    for (int threads : {1, 2}) {
      nablagrad::set_num_threads(threads);
      std::vector<T> big(static_cast<size_t>(M * N)), small(static_cast<size_t>(Ms * N));
      gemm<T>(M, N, K, a.data(), K, 1, b.data(), N, 1, big.data(), N, false);
      gemm<T>(Ms, N, K, a.data(), K, 1, b.data(), N, 1, small.data(), N, false);
      const bool same = std::memcmp(big.data(), small.data(), sizeof(T) * small.size()) == 0;
      CHECK(same);
      if (!same)
        std::printf("  %s simd=%s threads=%d: rows of the %lld-row product differ from the %lld-row one\n",
                    sizeof(T) == 4 ? "float" : "double", level_name(level), threads,
                    static_cast<long long>(M), static_cast<long long>(Ms));
    }
  }
}

// gemm_config_for() also picks the tile by the column count (at AVX-512: 8 x 1 vector for up
// to 16 columns, 8 x 3 vectors for 48 or 96, 8 x 2 for 24 or 160, 6 x 4 for 64 or 100; at
// AVX2 8 x 1 vector for up to 8 floats / 4 doubles, 4 x 3 vectors for 24 or 72 floats / 12
// doubles, 6 x 2 for 20 or 48): the first n columns of a
// 192-column product (6 x 4-vector tile) equal the n-column product bitwise, for row counts on
// both sides of the small-M tile's limit, at every level and thread count.
template <typename T>
void check_column_count_independence() {
  std::mt19937 rng(12);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const int64_t Nw = 192, K = 600;
  for (int64_t M : {40, 100}) {
    std::vector<T> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * Nw));
    for (auto& x : a) x = static_cast<T>(dist(rng));
    for (auto& x : b) x = static_cast<T>(dist(rng));
    for (SimdLevel level : simd_levels()) {
      nablagrad::set_simd_level(level);
      for (int threads : {1, 2}) {
        nablagrad::set_num_threads(threads);
        std::vector<T> wide(static_cast<size_t>(M * Nw));
        gemm<T>(M, Nw, K, a.data(), K, 1, b.data(), Nw, 1, wide.data(), Nw, false);
        for (int64_t n : {3, 8, 10, 12, 16, 20, 24, 36, 48, 72, 96, 100, 160}) {
          std::vector<T> part(static_cast<size_t>(M * n));
          gemm<T>(M, n, K, a.data(), K, 1, b.data(), Nw, 1, part.data(), n, false);
          bool same = true;
          for (int64_t i = 0; i < M; ++i)
            same = same && std::memcmp(wide.data() + i * Nw, part.data() + i * n, sizeof(T) * static_cast<size_t>(n)) == 0;
          CHECK(same);
          if (!same)
            std::printf("  %s simd=%s threads=%d M=%lld: the %lld-column product differs from the %lld-column one\n",
                        sizeof(T) == 4 ? "float" : "double", level_name(level), threads, static_cast<long long>(M),
                        static_cast<long long>(n), static_cast<long long>(Nw));
        }
      }
    }
  }
}

void test_column_count_independence() {
  check_column_count_independence<float>();
  check_column_count_independence<double>();
  if (nablagrad::cpu_simd_level() >= SimdLevel::AVX2) {  // the tiles chosen at AVX2
    nablagrad::set_simd_level(SimdLevel::AVX2);
    using nablagrad::kernels::gemm_detail::gemm_config_for;
    CHECK(gemm_config_for<float>(1000, 24).NR == 24 && gemm_config_for<float>(1000, 72).NR == 24);
    CHECK(gemm_config_for<float>(1000, 20).NR == 16 && gemm_config_for<float>(1000, 48).NR == 16);
    CHECK(gemm_config_for<float>(1000, 8).NR == 8 && gemm_config_for<double>(1000, 36).NR == 12);
    CHECK(gemm_config_for<double>(1000, 24).NR == 8);
    nablagrad::set_simd_level(nablagrad::cpu_simd_level());
  }
}

void test_row_count_independence() {
  check_row_count_independence<float>();
  check_row_count_independence<double>();
}

// Row-major A (unit column stride) and column-major A (unit row stride) are read in place by
// the AVX-512 kernels (AMode::Rows, AMode::Cols), any other A is packed: the same product from
// a row-major A (lda > K), its column-major copy (lda > M) and a copy with no unit stride must
// be bitwise equal, with partial row panels, partial column panels, several K slices and
// several MC blocks, at every level and thread count.
template <typename T>
void check_a_layout_independence() {
  std::mt19937 rng(8);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const Shape shapes[] = {{301, 77, 600}, {47, 65, 257}, {13, 129, 5}, {150, 64, 256}, {301, 5, 600}, {47, 12, 257},
                          {301, 24, 600}, {47, 36, 257}};  // the AVX2 4 x 3 tile: floats / doubles
  for (const Shape& s : shapes) {
    const int64_t M = s.M, N = s.N, K = s.K, lda = K + 3, ldc_a = M + 5;
    std::vector<T> a_rows(static_cast<size_t>(M * lda)), a_cols(static_cast<size_t>(K * ldc_a), T(1e30)),
        a_strided(static_cast<size_t>(2 * M * K), T(1e30)), b(static_cast<size_t>(K * N));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < lda; ++k) {
        const T v = static_cast<T>(dist(rng));
        a_rows[static_cast<size_t>(i * lda + k)] = v;
        if (k < K) a_cols[static_cast<size_t>(k * ldc_a + i)] = v;
        if (k < K) a_strided[static_cast<size_t>(i * 2 * K + 2 * k)] = v;
      }
    for (auto& x : b) x = static_cast<T>(dist(rng));
    for (SimdLevel level : simd_levels()) {
      nablagrad::set_simd_level(level);
      for (int threads : {1, 2, 3}) {
        nablagrad::set_num_threads(threads);
        for (bool acc : {false, true}) {
          std::vector<T> c1(static_cast<size_t>(M * N), T(0.5)), c2(c1), c3(c1);
          gemm<T>(M, N, K, a_rows.data(), lda, 1, b.data(), N, 1, c1.data(), N, acc);
          gemm<T>(M, N, K, a_cols.data(), 1, ldc_a, b.data(), N, 1, c2.data(), N, acc);
          gemm<T>(M, N, K, a_strided.data(), 2 * K, 2, b.data(), N, 1, c3.data(), N, acc);
          const bool same = std::memcmp(c1.data(), c2.data(), sizeof(T) * c1.size()) == 0 &&
                            std::memcmp(c1.data(), c3.data(), sizeof(T) * c1.size()) == 0;
          CHECK(same);
          if (!same)
            std::printf("  %s simd=%s threads=%d M=%lld N=%lld K=%lld acc=%d: row-major, column-major and "
                        "strided A differ\n",
                        sizeof(T) == 4 ? "float" : "double", level_name(level), threads, static_cast<long long>(M),
                        static_cast<long long>(N), static_cast<long long>(K), int(acc));
        }
      }
    }
  }
}

void test_a_layout_independence() {
  check_a_layout_independence<float>();
  check_a_layout_independence<double>();
}

// gemm(..., bias) starts C from the bias row: bitwise the same as filling C with the bias and
// accumulating, for partial row and column panels, several K slices (K = 600), row-major A
// read in place and transposed A packed, tiny products (the reference loop) and K = 0, at every
// level and thread count. C's padding columns stay untouched; a bias with accumulate throws.
template <typename T>
void check_bias() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const Shape shapes[] = {{301, 77, 600}, {47, 65, 257}, {13, 129, 5}, {150, 64, 256}, {3, 4, 2}, {9, 70, 0},
                          {301, 6, 600}, {47, 16, 257}, {150, 8, 256}, {33, 4, 300}};  // 1-vector tiles, whole and partial
  for (const Shape& s : shapes) {
    const int64_t M = s.M, N = s.N, K = s.K, ldc = N + 2;
    std::vector<T> a(static_cast<size_t>(M * K + 1)), b(static_cast<size_t>(K * N + 1)), bias(static_cast<size_t>(N));
    for (auto& x : a) x = static_cast<T>(dist(rng));
    for (auto& x : b) x = static_cast<T>(dist(rng));
    for (auto& x : bias) x = static_cast<T>(dist(rng));
    for (SimdLevel level : simd_levels()) {
      nablagrad::set_simd_level(level);
      for (int threads : {1, 2, 3}) {
        nablagrad::set_num_threads(threads);
        for (bool trans_a : {false, true}) {
          const int64_t a_rs = trans_a ? 1 : K, a_cs = trans_a ? M : 1;
          std::vector<T> want(static_cast<size_t>(M * ldc), T(7)), got(want);
          for (int64_t i = 0; i < M; ++i)
            std::memcpy(want.data() + i * ldc, bias.data(), sizeof(T) * static_cast<size_t>(N));
          gemm<T>(M, N, K, a.data(), a_rs, a_cs, b.data(), N, 1, want.data(), ldc, true);
          gemm<T>(M, N, K, a.data(), a_rs, a_cs, b.data(), N, 1, got.data(), ldc, false, bias.data());
          const bool same = std::memcmp(want.data(), got.data(), sizeof(T) * want.size()) == 0;
          CHECK(same);
          if (!same)
            std::printf("  %s simd=%s threads=%d M=%lld N=%lld K=%lld trans_a=%d: bias differs from fill + accumulate\n",
                        sizeof(T) == 4 ? "float" : "double", level_name(level), threads, static_cast<long long>(M),
                        static_cast<long long>(N), static_cast<long long>(K), int(trans_a));
        }
      }
    }
  }
  T c[4] = {0, 0, 0, 0};
  const T one[4] = {1, 1, 1, 1};
  CHECK_THROWS(gemm<T>(2, 2, 2, one, 2, 1, one, 2, 1, c, 2, true, one), std::invalid_argument);
}

void test_bias() {
  check_bias<float>();
  check_bias<double>();
}

// The shipped threshold (the other tests use 0): a shape that is threaded either way.
void test_default_threshold() {
  std::mt19937 rng(4);
  check_shape<float>({213, 199, 230}, rng);
}

template <typename T>
void check_degenerate() {
  const T a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 2, 3, 4, 5, 6};
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    // K == 0: C = 0, or unchanged when accumulating.
    T c[6] = {7, 7, 7, 7, 7, 7};
    gemm<T>(2, 3, 0, a, 1, 1, b, 1, 1, c, 3, true);
    for (T x : c) CHECK(x == T(7));
    gemm<T>(2, 3, 0, a, 1, 1, b, 1, 1, c, 3, false);
    for (T x : c) CHECK(x == T(0));
    // M == 0 or N == 0: nothing is touched (C may even be null).
    gemm<T>(0, 3, 2, a, 2, 1, b, 3, 1, static_cast<T*>(nullptr), 3, false);
    gemm<T>(2, 0, 2, a, 2, 1, b, 3, 1, static_cast<T*>(nullptr), 0, false);
    // 1x1x1.
    T one = 5;
    gemm<T>(1, 1, 1, a + 2, 1, 1, b + 3, 1, 1, &one, 1, true);
    CHECK(one == T(5 + 3 * 4));
    // A 2x3 times 3x2, exact in any precision.
    T c2[4] = {0, 0, 0, 0};
    gemm<T>(2, 2, 3, a, 3, 1, b, 2, 1, c2, 2, false);
    CHECK(c2[0] == T(1 * 1 + 2 * 3 + 3 * 5));
    CHECK(c2[1] == T(1 * 2 + 2 * 4 + 3 * 6));
    CHECK(c2[2] == T(4 * 1 + 5 * 3 + 6 * 5));
    CHECK(c2[3] == T(4 * 2 + 5 * 4 + 6 * 6));
  }
}

void test_degenerate() {
  check_degenerate<float>();
  check_degenerate<double>();
}

// A register tile whose rows are all the zero run skips its multiply-adds: its outputs are the
// bias (+ 0) even where B holds inf and NaN (0 * inf would be NaN), at every level and thread
// count; a tile with one row that is not the zero run multiplies them. Likewise a tile whose
// rows' spans all leave out B's inf and NaN (rows z2 .. z2 + 2 MR - 1: values 10 .. 79 of each
// slice, zero outside) runs only those 70 values (bias + 3 * 70 * 0.125 exactly), while such a
// row in a tile with whole rows (z3) multiplies its zeros by them. With the rows stored in C
// through c_rows (whole tiles in reverse order; rows ascending within them, or reversed) the
// same per row of C.
template <typename T>
void check_indirect_zero_tiles_skip_non_finite() {
  using nablagrad::kernels::KSlice;
  using nablagrad::kernels::KSpan;
  const int64_t M = 100, N = 40, K = 300;
  std::vector<T> b(static_cast<size_t>(K * N), T(0.25)), bias(static_cast<size_t>(N));
  for (int64_t j = 0; j < N; ++j) bias[static_cast<size_t>(j)] = T(j);
  b[static_cast<size_t>(7 * N + 3)] = std::numeric_limits<T>::infinity();
  b[static_cast<size_t>(290 * N + 5)] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<KSlice> slices = {{0, 100}, {100, 100}, {200, 100}};
  std::vector<T> whole(100, T(0.5)), part(100, T(0));  // a row's values of one slice
  std::fill(part.begin() + 10, part.begin() + 80, T(0.5));
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    const int64_t MR = nablagrad::kernels::gemm_detail::gemm_config_for<T>(M, N).MR;
    const int64_t z0 = (40 + MR - 1) / MR * MR, z1 = z0 + 2 * MR;  // two whole tiles of zero rows
    const int64_t z2 = (z1 + 2 + MR - 1) / MR * MR, z3 = z2 + 2 * MR + 1;  // two tiles of spans, one row
    const auto narrowed = [&](int64_t r) { return (r >= z2 && r < z2 + 2 * MR) || r == z3; };
    for (int order = 0; order < 3; ++order) {
      // GEMM row r holds row src(r) of A and goes to C row src(r).
      const int64_t tiles = M / MR;
      const auto src = [&](int64_t r) {
        if (order == 0 || r >= tiles * MR) return r;
        const int64_t t = tiles - 1 - r / MR, i = order == 1 ? r % MR : MR - 1 - r % MR;
        return t * MR + i;
      };
      std::vector<int64_t> c_rows(static_cast<size_t>(M));
      for (int64_t r = 0; r < M; ++r) c_rows[static_cast<size_t>(r)] = src(r);
      const auto rows = [&](size_t, int64_t i0, int64_t m, const T** ptrs, KSpan* spans, T*, const T* zeros) {
        for (int64_t i = 0; i < m; ++i) {
          const int64_t r = src(i0 + i);
          ptrs[i] = (r >= z0 && r < z1) || r == z1 + 1 ? zeros : narrowed(r) ? part.data() : whole.data();
          if (narrowed(r)) spans[i] = {10, 80};
        }
        return true;
      };
      for (int threads : {1, 2, 3}) {
        nablagrad::set_num_threads(threads);
        std::vector<T> c(static_cast<size_t>(M * N), T(7));
        nablagrad::kernels::gemm_indirect<T>(M, N, slices, rows, b.data(), N, 1, c.data(), N, bias.data(),
                                             order == 0 ? nullptr : c_rows.data());
        bool ok = true;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            const T v = c[static_cast<size_t>(i * N + j)];
            if (i >= z0 && i < z1)
              ok = ok && v == T(j);
            else if (i == z1 + 1 || i == z3)  // zeros in a tile with whole rows: 0 * inf, 0 * NaN
              ok = ok && (j == 3 || j == 5 ? std::isnan(v) : v == T(j) + (i == z3 ? T(26.25) : T(0)));
            else if (narrowed(i))
              ok = ok && v == T(j) + T(26.25);
            else if (j == 3)
            ok = ok && std::isinf(v);
            else if (j == 5)
              ok = ok && std::isnan(v);
            else
              ok = ok && v == T(j) + T(37.5);
          }
        CHECK(ok);
        if (!ok)
          std::printf("  %s simd=%s threads=%d order=%d: padding not skipped, or more than it\n",
                      sizeof(T) == 4 ? "float" : "double", level_name(level), threads, order);
      }
    }
  }
}

// gemm_indirect's keep: a tile it rejects runs no chains and is stored as if its rows were
// zero (the bias exactly), even where B holds NaN; the others are bitwise gemm()'s. Every level,
// 1-3 threads, both tile heights.
template <typename T>
void check_indirect_keep() {
  using nablagrad::kernels::KSlice;
  using nablagrad::kernels::KSpan;
  const int64_t M = 90, N = 150, K = 70;
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * N)), bias(static_cast<size_t>(N));
  for (auto& x : a) x = static_cast<T>(dist(rng));
  for (auto& x : b) x = static_cast<T>(dist(rng));
  for (auto& x : bias) x = static_cast<T>(dist(rng));
  const std::vector<KSlice> slices = {{0, K}};
  const auto rows = [&](size_t, int64_t i0, int64_t m, const T** ptrs, KSpan*, T*, const T*) {
    for (int64_t i = 0; i < m; ++i) ptrs[i] = a.data() + (i0 + i) * K;
    return false;
  };
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    for (int64_t tile_rows : {0, 4}) {
      const auto cfg = nablagrad::kernels::gemm_detail::gemm_indirect_config<T>(M, N, tile_rows);
      // Rejected: odd tiles of rows in odd panels of columns.
      const auto rejected = [&](int64_t i, int64_t j) { return (i / cfg.MR) % 2 == 1 && (j / cfg.NR) % 2 == 1; };
      std::vector<T> nan_b(b);
      for (int64_t j = 0; j < N; ++j)  // NaN in B under every rejected column
        if ((j / cfg.NR) % 2 == 1) nan_b[static_cast<size_t>(3 * N + j)] = std::numeric_limits<T>::quiet_NaN();
      std::vector<T> want(static_cast<size_t>(M * N));
      gemm<T>(M, N, K, a.data(), K, 1, b.data(), N, 1, want.data(), N, false, bias.data());
      for (int threads : {1, 2, 3}) {
        nablagrad::set_num_threads(threads);
        for (const std::vector<T>* bp : {&b, &nan_b}) {
          std::vector<T> got(static_cast<size_t>(M * N), T(7));
          nablagrad::kernels::gemm_indirect<T>(M, N, slices, rows, bp->data(), N, 1, got.data(), N, bias.data(), nullptr,
                                               tile_rows, [&](int64_t i0, int64_t, int64_t j0, int64_t) {
                                                 return !rejected(i0, j0);
                                               });
          bool ok = true;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              const T g = got[static_cast<size_t>(i * N + j)];
              if (rejected(i, j))
                ok = ok && g == bias[static_cast<size_t>(j)];
              else if (bp == &b)
                ok = ok && std::memcmp(&g, &want[static_cast<size_t>(i * N + j)], sizeof(T)) == 0;
              else
                ok = ok && ((j / cfg.NR) % 2 == 1 ? std::isnan(g) : g == want[static_cast<size_t>(i * N + j)]);
            }
          CHECK(ok);
          if (!ok)
            std::printf("  %s simd=%s threads=%d tile_rows=%lld: gemm_indirect's keep wrong\n",
                        sizeof(T) == 4 ? "float" : "double", level_name(level), threads, static_cast<long long>(tile_rows));
        }
      }
    }
  }
}

// gemm_indirect: rows of A found through pointers per depth slice. Row i of each slice is read
// in place from a row-major A (i % 3 == 0), copied by the rows function into its edge buffer
// (i % 3 == 1), or, for every fifth row and rows 32 .. 95 (whole register tiles, skipped),
// given as the zero run (that row of A is zero); rows zero in one half of K with their spans
// narrowed to the other (tiles of them run only the union); a bias with a -0; rows in order
// and permuted through c_rows (tiles evenly spaced in C and not), on the default tile and on
// 4-row ones (gemm_indirect_config: 4 x 4 vectors at AVX-512, 4 x 2 at AVX2). With
// gemm()'s own slicing (k_slice_depth) the result must be bitwise gemm()'s on the same A, with
// and without a bias; with uneven slices, within the rounding bound of the reference; at every
// level (the portable one packs the rows) and thread count bitwise the same as 1 thread; with
// partial row and column panels and several MC blocks. No slices: C = the bias (or 0).
template <typename T>
void check_indirect() {
  using nablagrad::kernels::KSlice;
  using nablagrad::kernels::KSpan;
  using nablagrad::kernels::gemm_indirect;
  std::mt19937 rng(21);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const Shape shapes[] = {{301, 77, 600}, {47, 65, 257}, {150, 64, 256}, {13, 129, 70}, {301, 24, 600}, {47, 8, 300}};
  for (const Shape& s : shapes) {
    const int64_t M = s.M, N = s.N, K = s.K, lda = K + 3, ldc = N + 1;
    std::vector<T> a(static_cast<size_t>(M * lda)), b(static_cast<size_t>(K * N)), bias(static_cast<size_t>(N));
    for (auto& x : a) x = static_cast<T>(dist(rng));
    // Every fifth row zero, and rows 32 .. 95: whole register tiles of the zero run (skipped,
    // zero_rows_tile).
    const auto zero_row = [&](int64_t i) { return i % 5 == 0 || (i >= 32 && i < 96); };
    for (int64_t i = 0; i < M; ++i)
      if (zero_row(i)) std::fill(a.begin() + i * lda, a.begin() + (i + 1) * lda, T(0));
    // Rows zero in their first (i % 7 == 3) or last (i % 7 == 4) half of K: spans narrowed.
    for (int64_t i = 0; i < M; ++i)
      if (i % 7 == 3)
        std::fill(a.begin() + i * lda, a.begin() + i * lda + K / 2, T(0));
      else if (i % 7 == 4)
        std::fill(a.begin() + i * lda + K / 2, a.begin() + (i + 1) * lda, T(0));
    for (auto& x : b) x = static_cast<T>(dist(rng));
    for (auto& x : bias) x = static_cast<T>(dist(rng));
    bias[0] = T(-0.0);  // a skipped tile writes bias + 0 = +0, as the chain from zero does
    std::vector<KSlice> even, uneven;
    const int64_t depth = nablagrad::kernels::gemm_detail::k_slice_depth(K, 256);
    for (int64_t k = 0; k < K; k += depth) even.push_back({k, std::min(depth, K - k)});
    for (int64_t k = 0; k < K;) {  // slices of 1 .. 300 values
      const int64_t kc = std::min<int64_t>(K - k, 1 + static_cast<int64_t>(rng() % 300));
      uneven.push_back({k, kc});
      k += kc;
    }
    // A permutation of the rows for c_rows: evens ascending (tiles evenly spaced in C, run there),
    // then odds descending (stored row by row).
    std::vector<int64_t> perm;
    for (int64_t i = 0; i < M; i += 2) perm.push_back(i);
    for (int64_t i = (M - 1) / 2 * 2 + 1; i > 0; i -= 2)
      if (i < M) perm.push_back(i);
    for (const std::vector<KSlice>* slices : {&even, &uneven}) {
      for (int variant = 0; variant < 3; ++variant) {
        const bool permuted = variant > 0;
        const int64_t tile_rows = variant == 2 ? 4 : 0;  // 4-row tiles where the level has them
        // GEMM row r is row src(r) of A (and, permuted, goes to C row src(r)).
        const auto src = [&](int64_t r) { return permuted ? perm[static_cast<size_t>(r)] : r; };
        const auto rows = [&](size_t si, int64_t i0, int64_t m, const T** ptrs, KSpan* spans, T* edge, const T* zeros) {
          const KSlice sl = (*slices)[si];
          for (int64_t i = 0; i < m; ++i) {
            const int64_t r = src(i0 + i);
            const T* row = a.data() + r * lda + sl.k0;
            if (zero_row(r)) {
              ptrs[i] = zeros;
            } else if (r % 3 == 1) {
              std::memcpy(edge + i * sl.kc, row, sizeof(T) * static_cast<size_t>(sl.kc));
              ptrs[i] = edge + i * sl.kc;
            } else {
              ptrs[i] = row;
            }
            const int64_t half = std::min(std::max<int64_t>(K / 2 - sl.k0, 0), sl.kc);
            if (r % 7 == 3) spans[i].lo = half;
            if (r % 7 == 4) spans[i].hi = half;
          }
          return true;
        };
        for (SimdLevel level : simd_levels()) {
          nablagrad::set_simd_level(level);
          std::vector<T> first;
          for (int threads : {1, 2, 3}) {
            nablagrad::set_num_threads(threads);
            for (const T* bp : {static_cast<const T*>(bias.data()), static_cast<const T*>(nullptr)}) {
              std::vector<T> got(static_cast<size_t>(M * ldc), T(7)), want(got);
              gemm_indirect<T>(M, N, *slices, rows, b.data(), N, 1, got.data(), ldc, bp, permuted ? perm.data() : nullptr,
                               tile_rows);
              bool ok = true;
              if (slices == &even) {
                gemm<T>(M, N, K, a.data(), lda, 1, b.data(), N, 1, want.data(), ldc, false, bp);
                ok = std::memcmp(got.data(), want.data(), sizeof(T) * got.size()) == 0;
              } else {
                for (int64_t i = 0; i < M; ++i)
                  for (int64_t j = 0; j < N; ++j) want[static_cast<size_t>(i * ldc + j)] = bp ? bp[j] : T(0);
                gemm_reference<T>(M, N, K, a.data(), lda, 1, b.data(), N, 1, want.data(), ldc, true);
                const double bound = (K + 2) * 4.0 * std::numeric_limits<T>::epsilon();
                for (int64_t i = 0; i < M; ++i)
                  for (int64_t j = 0; j < ldc; ++j) {
                    const T g = got[static_cast<size_t>(i * ldc + j)], w = want[static_cast<size_t>(i * ldc + j)];
                    ok = ok && (j < N ? std::fabs(double(g) - double(w)) <= bound * (1.0 + std::fabs(double(w))) : g == T(7));
                  }
              }
              if (bp) {
                if (threads == 1) first = got;
                ok = ok && std::memcmp(got.data(), first.data(), sizeof(T) * got.size()) == 0;
              }
              CHECK(ok);
              if (!ok)
                std::printf("  %s simd=%s threads=%d M=%lld N=%lld K=%lld %s slices bias=%d variant=%d: gemm_indirect wrong\n",
                            sizeof(T) == 4 ? "float" : "double", level_name(level), threads, static_cast<long long>(M),
                            static_cast<long long>(N), static_cast<long long>(K), slices == &even ? "even" : "uneven",
                            int(bp != nullptr), variant);
            }
          }
        }
      }
    }
  }
  check_indirect_zero_tiles_skip_non_finite<T>();
  std::vector<T> c(6, T(9)), bias = {T(1), T(2), T(3)};
  const auto none = [](size_t, int64_t, int64_t, const T**, nablagrad::kernels::KSpan*, T*, const T*) {
    CHECK(false);
    return false;
  };
  gemm_indirect<T>(2, 3, {}, none, nullptr, 3, 1, c.data(), 3, bias.data());
  CHECK((c == std::vector<T>{1, 2, 3, 1, 2, 3}));
  gemm_indirect<T>(2, 3, {}, none, nullptr, 3, 1, c.data(), 3, nullptr);
  CHECK((c == std::vector<T>(6, T(0))));
}

void test_indirect() {
  check_indirect<float>();
  check_indirect<double>();
  check_indirect_keep<float>();
  check_indirect_keep<double>();
  // The 4-row tile: in place of the 6-row one (6 x 4 vectors at AVX-512, 6 x 2 at AVX2; the
  // 150 x 64 product above) with the same columns and KC, not of other tiles (AVX-512's 8 x 3
  // vectors for 96 columns) nor at the portable level (4 rows already). Charged 10% more per
  // multiply-add at AVX2 (gemm_indirect_tile_cost), where its 8 accumulators keep the FMAs
  // less busy than 6 x 2's 12.
  using nablagrad::kernels::gemm_detail::gemm_config_for;
  using nablagrad::kernels::gemm_detail::gemm_indirect_config;
  using nablagrad::kernels::gemm_detail::gemm_indirect_tile_cost;
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    const bool vector = level != SimdLevel::Portable;
    CHECK(gemm_indirect_config<float>(150, 64, 4).MR == (vector ? 4 : gemm_config_for<float>(150, 64).MR));
    CHECK(gemm_indirect_config<double>(150, 64, 4).MR == (vector ? 4 : gemm_config_for<double>(150, 64).MR));
    CHECK(gemm_indirect_config<float>(150, 64, 4).NR == gemm_config_for<float>(150, 64).NR);
    CHECK(gemm_indirect_config<float>(150, 64, 4).KC == gemm_config_for<float>(150, 64).KC);
    CHECK(gemm_indirect_config<double>(150, 64, 4).KC == gemm_config_for<double>(150, 64).KC);
    CHECK(gemm_indirect_config<float>(150, 64, 0).MR == gemm_config_for<float>(150, 64).MR);
    CHECK(gemm_indirect_config<float>(301, 96, 4).MR == (level == SimdLevel::AVX2 ? 4 : gemm_config_for<float>(301, 96).MR));
    CHECK(gemm_indirect_tile_cost(4) == (level == SimdLevel::AVX2 ? 110 : 100) && gemm_indirect_tile_cost(6) == 100);
  }
  nablagrad::set_simd_level(nablagrad::cpu_simd_level());
}

// Reference agrees with a hand-computed product (the oracle is itself checked).
void test_reference() {
  const double a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  double c[4] = {1, 1, 1, 1};
  gemm_reference<double>(2, 2, 2, a, 2, 1, b, 2, 1, c, 2, true);
  CHECK(c[0] == 1 + 19 && c[1] == 1 + 22 && c[2] == 1 + 43 && c[3] == 1 + 50);
  gemm_reference<double>(2, 2, 2, a, 1, 2, b, 1, 2, c, 2, false);  // A^T B^T
  CHECK(c[0] == 23 && c[1] == 31 && c[2] == 34 && c[3] == 46);
}

}  // namespace

int main() {
  const SimdLevel initial_level = nablagrad::simd_level();
  const int initial_threads = nablagrad::get_num_threads();
  // Send every shape above the direct-loop size through the threaded path.
  const int64_t initial_threshold = nablagrad::kernels::gemm_parallel_threshold().load();
  nablagrad::kernels::gemm_parallel_threshold().store(0);
  RUN_TEST(test_reference);
  RUN_TEST(test_degenerate);
  RUN_TEST(test_small_shapes_float);
  RUN_TEST(test_small_shapes_double);
  RUN_TEST(test_large_shapes);
  RUN_TEST(test_wide_tile_edges);
  RUN_TEST(test_row_count_independence);
  RUN_TEST(test_column_count_independence);
  RUN_TEST(test_a_layout_independence);
  RUN_TEST(test_bias);
  RUN_TEST(test_indirect);
  nablagrad::kernels::gemm_parallel_threshold().store(initial_threshold);
  RUN_TEST(test_default_threshold);
  nablagrad::set_simd_level(initial_level);
  nablagrad::set_num_threads(initial_threads);
  return test_util::finish();
}
