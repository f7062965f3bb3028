// Tests of issue 6, "no crash from crafted sizes": every product or sum of sizes that the ops
// and kernels form is checked (checked.h), so crafted sizes raise std::invalid_argument (or
// OutOfMemory for a valid size beyond the machine's memory) instead of wrapping to a short
// buffer that is then overrun. Before the fix several of these crashed (segfault, SIGFPE) or
// never returned (a loop over 2^80 convolution phases, a 2^64-step matmul).
//
// The convolutions with a huge stride or padding but a tiny output are valid, and are
// checked against a naive oracle that reads the padding as zeros (no padded buffer): the fast
// paths that copy the input into a zero-padded buffer must step aside for them.
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "nablagrad/checked.h"
#include "nablagrad/kernels/conv2d.h"
#include "nablagrad/kernels/gemm.h"
#include "nablagrad/kernels/pool2d.h"
#include "nablagrad/tensor_operations.h"
#include "test_util.h"

using namespace nablagrad;

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

/// Runs fn, expecting std::invalid_argument whose message contains `needle`.
template <typename F>
void check_invalid(const F& fn, const std::string& needle, int line) {
  ++test_util::checks();
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return;
    ++test_util::failures();
    std::printf("line %d: message \"%s\" lacks \"%s\"\n", line, e.what(), needle.c_str());
    return;
  } catch (const std::exception& e) {
    ++test_util::failures();
    std::printf("line %d: expected std::invalid_argument, got \"%s\"\n", line, e.what());
    return;
  }
  ++test_util::failures();
  std::printf("line %d: expected std::invalid_argument (\"%s\"), nothing thrown\n", line, needle.c_str());
}
#define CHECK_INVALID(expr, needle) check_invalid([&] { (void)(expr); }, needle, __LINE__)

void test_checked_helpers() {
  CHECK(checked_mul(int64_t{3} << 30, int64_t{1} << 31, "x") == int64_t{3} << 61);
  CHECK(checked_add(kMax - 1, 1, "x") == kMax);
  CHECK(checked_product({2, 0, kMax / 2}, "x") == 0);
  CHECK_INVALID(checked_mul(int64_t{1} << 32, int64_t{1} << 31, "my buffer"), "my buffer");
  CHECK_INVALID(checked_add(kMax, 1, std::string("the sum")), "the sum");
  // A zero factor does not hide an overflow of the others (NumPy's rule for shapes).
  CHECK_INVALID(checked_product({0, int64_t{1} << 62, 4}, [] { return std::string("lazy"); }), "lazy");
  int64_t out = -1;
  CHECK(product_fits({4, 5, 6}, out) && out == 120);
  CHECK(!product_fits({int64_t{1} << 40, int64_t{1} << 40}, out));
  CHECK(saturating_mul(int64_t{1} << 40, int64_t{1} << 40) == kMax);
  CHECK(saturating_add(kMax, 5) == kMax);
  // shape_numel and shape_numel with an op's context.
  CHECK_INVALID(shape_numel({int64_t{1} << 32, int64_t{1} << 32}), "too many elements");
  CHECK_INVALID(shape_numel({0, int64_t{1} << 62, 4}), "too many elements");
  CHECK_INVALID(shape_numel({int64_t{1} << 62, 4}, "myop: inputs (2,)"), "myop: inputs (2,)");
  CHECK_INVALID(Tensor::empty({int64_t{1} << 62, 4}), "too many elements");
  CHECK_THROWS(Tensor::empty({int64_t{1} << 61}), OutOfMemory);  // 2^63 bytes: refused up front
}

// ---------------------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------------------

/// Naive convolution that reads padding as zero without building a padded copy (valid for
/// any padding), with its two gradients.
template <typename T>
struct NaiveConv {
  const kernels::Conv2dGeometry& g;
  template <typename F>
  void taps(F&& f) const {  // f(y index, x index, w index)
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t ho = 0; ho < g.Ho; ++ho)
        for (int64_t wo = 0; wo < g.Wo; ++wo)
          for (int64_t q = 0; q < g.Q; ++q)
            for (int64_t fh = 0; fh < g.FH; ++fh)
              for (int64_t fw = 0; fw < g.FW; ++fw) {
                // ho*S may be ~2^62 while pad <= 2^40: compare before subtracting.
                const int64_t ih = ho * g.stride_h - g.pad_top + fh, iw = wo * g.stride_w - g.pad_left + fw;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                for (int64_t c = 0; c < g.C; ++c)
                  f(((n * g.Ho + ho) * g.Wo + wo) * g.Q + q, ((n * g.H + ih) * g.W + iw) * g.C + c,
                    ((q * g.FH + fh) * g.FW + fw) * g.C + c);
              }
  }
};

template <typename T>
void check_huge_geometry(int64_t N, int64_t H, int64_t W, int64_t C, int64_t Q, int64_t F,
                         int64_t S, int64_t P) {
  const kernels::Conv2dGeometry g = kernels::make_conv2d_geometry(N, H, W, C, Q, F, F, C, S, S, P, P, P, P);
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  auto fill = [&](int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    for (T& e : v) e = static_cast<T>(u(rng));
    return v;
  };
  const int64_t ny = g.N * g.Ho * g.Wo * g.Q, nx = N * H * W * C, nw = Q * F * F * C;
  const std::vector<T> x = fill(nx), w = fill(nw), b = fill(Q), dy = fill(ny);
  std::vector<T> y(static_cast<size_t>(ny)), dx(static_cast<size_t>(nx)), dw(static_cast<size_t>(nw)), db(static_cast<size_t>(Q));
  std::vector<double> y0(static_cast<size_t>(ny)), dx0(static_cast<size_t>(nx), 0.0), dw0(static_cast<size_t>(nw), 0.0);
  for (int64_t i = 0; i < ny; ++i) y0[i] = b[i % Q];
  NaiveConv<T>{g}.taps([&](int64_t yi, int64_t xi, int64_t wi) {
    y0[yi] += static_cast<double>(x[xi]) * w[wi];
    dx0[xi] += static_cast<double>(dy[yi]) * w[wi];
    dw0[wi] += static_cast<double>(dy[yi]) * x[xi];
  });
  kernels::conv2d_forward<T>(g, x.data(), w.data(), b.data(), y.data());
  kernels::conv2d_backward_input<T>(g, dy.data(), w.data(), dx.data());
  kernels::conv2d_backward_weight<T>(g, x.data(), dy.data(), dw.data(), db.data());
  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-12;
  double err = 0;
  for (int64_t i = 0; i < ny; ++i) err = std::max(err, std::fabs(y[i] - y0[i]));
  for (int64_t i = 0; i < nx; ++i) err = std::max(err, std::fabs(dx[i] - dx0[i]));
  for (int64_t i = 0; i < nw; ++i) err = std::max(err, std::fabs(dw[i] - dw0[i]));
  for (int64_t q = 0; q < Q; ++q) {
    double s = 0;
    for (int64_t i = q; i < ny; i += Q) s += dy[i];
    err = std::max(err, std::fabs(db[q] - s));
  }
  if (err > tol)
    std::printf("  huge geometry N=%lld H=%lld W=%lld C=%lld Q=%lld F=%lld S=%lld P=%lld: max error %g\n",
                (long long)N, (long long)H, (long long)W, (long long)C, (long long)Q, (long long)F,
                (long long)S, (long long)P, err);
  CHECK(err <= tol);
}

void test_conv_geometry_overflow() {
  // The case: N*Hp*Wp*C = 1 * (6710886 + 2^41) * (1 + 2^41) * 1 overflows int64.
  const int64_t P40 = int64_t{1} << 40;
  CHECK_INVALID(kernels::make_conv2d_geometry(1, 6710886, 1, 1, 8, 1, 1, 1, P40, P40, P40, P40, P40, P40),
                "padded input");
  CHECK_INVALID(kernels::make_conv2d_geometry(1, 6710886, 1, 1, 8, 1, 1, 1, P40, P40, P40, P40, P40, P40),
                "(input (1,6710886,1,1), kernel (8,1,1,1))");
  // Padding beyond 2^40 keeps its own message; a huge kernel needs a huge padded input.
  CHECK_INVALID(kernels::make_conv2d_geometry(1, 4, 4, 1, 1, 1, 1, 1, 1, 1, kMax, 0, 0, 0), "padding");
  CHECK_INVALID(kernels::make_conv2d_geometry(1, 1, 1, 1, 1, int64_t{1} << 32, int64_t{1} << 32, 1, 1, 1,
                                              int64_t{1} << 31, int64_t{1} << 31, int64_t{1} << 31,
                                              int64_t{1} << 31),
                "too many elements");
  // A huge stride with a modest padding is valid: (4 + 2^21 - 1) / 2^40 + 1 = 1 output row.
  const auto g = kernels::make_conv2d_geometry(1, 4, 4, 1, 8, 1, 1, 1, P40, P40, 1 << 20, 1 << 20, 1 << 20, 1 << 20);
  CHECK(g.Ho == 1 && g.Wo == 1);
  const auto g62 = kernels::make_conv2d_geometry(2, 4, 4, 1, 8, 1, 1, 1, int64_t{1} << 62, int64_t{1} << 62, 0, 0, 0, 0);
  CHECK(g62.Ho == 1 && g62.Wo == 1);
}

void test_conv_huge_stride_and_padding_values() {
  // Valid geometries whose zero-padded input would be 2^42+ elements (or whose padded row
  // extension overflows): before the fix, the padded-copy paths (forward_direct, the small-C
  // weight gradient) wrapped or tried to allocate terabytes, and the input gradient looped
  // over all S_h * S_w phases (2^80 for S = 2^40). Now: correct values, at once.
  const int64_t P = int64_t{1} << 20;
  for (int64_t C : {1, 3, 8})
    for (int64_t Q : {2, 8}) {
      check_huge_geometry<float>(2, 4, 5, C, Q, 1, P + 1, P);           // output 3x3, centre reads x
      check_huge_geometry<double>(1, 5, 4, C, Q, 3, P - 1, P);          // 3x3 kernel taps at the edges
      check_huge_geometry<float>(1, 4, 4, C, Q, 1, int64_t{1} << 40, 0);  // Ho = Wo = 1
      check_huge_geometry<double>(2, 3, 3, C, Q, 2, int64_t{1} << 62, 0);  // S*(Wo+5) overflows
    }
}

void test_conv_ops_huge() {
  const int64_t P40 = int64_t{1} << 40;
  Tensor x = Tensor::zeros({1, 6710886, 1, 1}), w = Tensor::zeros({8, 1, 1, 1});
  CHECK_INVALID(conv2d(x, w, Tensor(), P40, P40, P40, P40, P40, P40), "padded input");
  CHECK_INVALID(conv2d_reference(x, w, Tensor(), P40, P40, P40, P40, P40, P40), "padded input");
  // The reference path materialises the padded input: 2^42 floats (16 TiB) is a MemoryError
  // before anything is allocated; the fast path computes the same conv without it.
  Tensor xs = Tensor::full({1, 4, 4, 1}, 1.0), ws = Tensor::full({8, 1, 1, 1}, 2.0);
  const int64_t P20 = int64_t{1} << 20;
  CHECK_THROWS(conv2d_reference(xs, ws, Tensor(), P40, P40, P20, P20, P20, P20), OutOfMemory);
  Tensor y = conv2d(xs, ws, Tensor(), P20 + 1, P20 + 1, P20, P20, P20, P20);
  CHECK((y.shape() == Shape{1, 3, 3, 8}));
  CHECK(y.item_at(4 * 8) == 2.0 && y.item_at(0) == 0.0);  // centre pixel reads x[1,1]
  // Pools: the window area and the padded extent are checked.
  CHECK_INVALID(max_pool2d(xs, int64_t{1} << 33, int64_t{1} << 33, 1, 1, int64_t{1} << 32, int64_t{1} << 32),
                "max_pool2d: the window");
  CHECK_INVALID(avg_pool2d(xs, int64_t{1} << 33, int64_t{1} << 33, 1, 1, int64_t{1} << 32, int64_t{1} << 32, true),
                "avg_pool2d: the window");
  CHECK_INVALID(kernels::make_pool2d_geometry(1, 8, 8, 1, kMax, 1, 1, 1, kMax / 2, 0), "padded height");
}

// ---------------------------------------------------------------------------------------
// matmul, shapes, indexing
// ---------------------------------------------------------------------------------------

void test_matmul() {
  // Stride-0 views of 2^62 logical elements: M*N*K = 2^64 multiply-adds, which used to wrap
  // to 0 and run the naive triple loop forever.
  const int64_t K = int64_t{1} << 60;
  Tensor a = expand(Tensor::zeros({1, 1}), {4, K}), b = expand(Tensor::zeros({1, 1}), {K, 4});
  CHECK_INVALID(matmul(a, b), "multiply-adds");
  // The batch broadcast of two views overflows the output shape: named as matmul's.
  Tensor c = expand(Tensor::zeros({1, 1, 2, 2}), {int64_t{1} << 40, 1, 2, 2});
  Tensor d = expand(Tensor::zeros({1, 1, 2, 2}), {1, int64_t{1} << 40, 2, 2});
  CHECK_INVALID(matmul(c, d), "matmul: shapes");
  // K = 0 with a folded batch: rows were numel / K (SIGFPE).
  Tensor e = matmul(Tensor::zeros({2, 3, 0}), Tensor::zeros({0, 4}));
  CHECK((e.shape() == Shape{2, 3, 4}) && e.item_at(23) == 0.0);
  // gemm's work estimate saturates instead of wrapping (the schedule only).
  std::vector<float> A(6, 1.0f), B(6, 1.0f), C(4, 0.0f);
  kernels::gemm<float>(2, 2, 3, A.data(), 3, 1, B.data(), 2, 1, C.data(), 2, false);
  CHECK(C[0] == 3.0f && C[3] == 3.0f);
}

void test_shape_ops() {
  const int64_t big = int64_t{1} << 62;
  Tensor v = expand(Tensor::zeros({1}), {big});
  // 4 * 2^62 = 2^64 wrapped to 0: an empty output, then 2^64 writes into it (segfault).
  CHECK_INVALID(concatenate({v, v, v, v}, 0), "concatenate");
  CHECK_INVALID(concatenate({v, v, v, v, v}, 0), "concatenate");
  CHECK_INVALID(stack({v, v, v, v}, 0), "concatenate: joining 4 inputs");
  // Zero-size tensors cannot take shapes whose other sizes overflow (NumPy's rule).
  CHECK_INVALID(reshape(Tensor::zeros({0}), {0, big, 4}), "too many elements");
  CHECK_INVALID(reshape(Tensor::zeros({0}), {-1, big, 4}), "too many elements");
  CHECK_INVALID(expand(Tensor::zeros({1, 1}), {int64_t{1} << 32, int64_t{1} << 32}), "too many elements");
  // A huge slice step keeps a sane stride (step * stride is not formed for one element).
  Tensor x = Tensor::zeros({4, 4});
  Tensor s = index(x, {TensorIndex::slice(std::nullopt, std::nullopt, big)});
  CHECK((s.shape() == Shape{1, 4}) && s.strides()[0] == 4);
  Tensor s2 = index(x, {TensorIndex::slice(std::nullopt, std::nullopt, -big)});
  CHECK((s2.shape() == Shape{1, 4}) && s2.offset() == 12);
  CHECK_THROWS(index(x, {TensorIndex::integer(big)}), std::out_of_range);
  // Integer-array indexing of a huge view: the result shape is checked, named as index's.
  Tensor h = expand(Tensor::zeros({1, 1}), {2, int64_t{1} << 61});
  Tensor idx = Tensor::zeros({8}, DType::Int64);
  CHECK_INVALID(index(h, {TensorIndex::array(idx)}), "index: indexing a tensor of shape");
  // flatten of a valid shape stays valid.
  CHECK((flatten(Tensor::zeros({0, 3, 5})).shape() == Shape{0}));
}

}  // namespace

int main() {
  RUN_TEST(test_checked_helpers);
  RUN_TEST(test_conv_geometry_overflow);
  RUN_TEST(test_conv_huge_stride_and_padding_values);
  RUN_TEST(test_conv_ops_huge);
  RUN_TEST(test_matmul);
  RUN_TEST(test_shape_ops);
  return test_util::finish();
}
