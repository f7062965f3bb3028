// Tests of kernels/pool2d.h: PyTorch's numbers on small examples (values computed with
// torch.nn.functional and pasted here), a naive reference over random shapes, finite
// differences for average pooling, gradients over every n and c (PITFALLS item 9), thread
// counts (bitwise) and the geometry checks.
#include "nablagrad/kernels/pool2d.h"

#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "test_util.h"

using namespace nablagrad::kernels;

namespace {

void test_torch_examples() {
  // x = 1..9 as (1,3,3,1), kernel 2, stride None, padding 1.
  std::vector<double> x(9);
  for (int i = 0; i < 9; ++i) x[i] = i + 1;
  auto g = make_pool2d_geometry(1, 3, 3, 1, 2, 2, 0, 0, 1, 1);
  CHECK(g.stride_h == 2 && g.Ho == 2 && g.Wo == 2);
  std::vector<double> y(4);
  avg_pool2d_forward(g, x.data(), y.data(), true);
  CHECK((y == std::vector<double>{0.25, 1.25, 2.75, 7.0}));
  avg_pool2d_forward(g, x.data(), y.data(), false);
  CHECK((y == std::vector<double>{1.0, 2.5, 5.5, 7.0}));
  // Ties: first maximum wins. x = [[1,3,3],[2,3,0],[3,1,3]], kernel 2, stride 1.
  std::vector<double> xm = {1, 3, 3, 2, 3, 0, 3, 1, 3}, ym(4), dx(9);
  std::vector<int64_t> idx(4);
  auto gm = make_pool2d_geometry(1, 3, 3, 1, 2, 2, 1, 1, 0, 0);
  max_pool2d_forward(gm, xm.data(), ym.data(), idx.data());
  CHECK((ym == std::vector<double>{3, 3, 3, 3}));
  CHECK((idx == std::vector<int64_t>{1, 1, 4, 4}));
  std::vector<double> ones(4, 1.0);
  max_pool2d_backward(gm, ones.data(), idx.data(), dx.data());
  CHECK((dx == std::vector<double>{0, 2, 0, 0, 2, 0, 0, 0, 0}));
}

// Naive reference on an explicitly padded plane.
void reference_pool(const Pool2dGeometry& g, const std::vector<double>& x, bool is_max,
                    bool include_pad, std::vector<double>& y, std::vector<int64_t>& idx) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo)
        for (int64_t c = 0; c < g.C; ++c) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t where = -1, count = 0;
          for (int64_t a = 0; a < g.KH; ++a)
            for (int64_t b = 0; b < g.KW; ++b) {
              const int64_t ih = ho * g.stride_h - g.pad_h + a, iw = wo * g.stride_w - g.pad_w + b;
              if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
              const double v = x[((n * g.H + ih) * g.W + iw) * g.C + c];
              ++count;
              sum += v;
              if (where < 0 || v > best) {
                best = v;
                where = ih * g.W + iw;
              }
            }
          const int64_t o = ((n * g.Ho + ho) * g.Wo + wo) * g.C + c;
          if (is_max) {
            y[o] = best;
            idx[o] = where;
          } else {
            y[o] = sum / double(include_pad ? g.KH * g.KW : count);  // floor mode: no clipping
          }
        }
}

void test_random_against_reference() {
  std::mt19937 rng(3);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::uniform_real_distribution<double> dist(-1, 1);
  for (int t = 0; t < 60; ++t) {
    const int64_t KH = pick(1, 4), KW = pick(1, 4);
    const int64_t ph = pick(0, KH / 2), pw = pick(0, KW / 2);
    const int64_t N = pick(1, 3), C = pick(1, 9);
    const int64_t H = std::max<int64_t>(pick(1, 9), KH), W = std::max<int64_t>(pick(1, 9), KW);
    auto g = make_pool2d_geometry(N, H, W, C, KH, KW, pick(0, 3), pick(0, 3), ph, pw);
    std::vector<double> x(N * H * W * C);
    for (auto& v : x) v = std::round(dist(rng) * 4) / 4;  // many ties
    const int64_t ny = N * g.Ho * g.Wo * C;
    std::vector<double> dy(ny);
    for (auto& v : dy) v = dist(rng);
    for (int kind = 0; kind < 3; ++kind) {  // max, avg include_pad, avg exclude_pad
      std::vector<double> yr(ny), y1(ny), y2(ny), dx1(x.size(), 7.0), dx2(x.size(), 7.0);
      std::vector<int64_t> ir(ny), i1(ny), i2(ny);
      reference_pool(g, x, kind == 0, kind == 1, yr, ir);
      for (int threads : {1, 3}) {
        nablagrad::set_num_threads(threads);
        auto& y = threads == 1 ? y1 : y2;
        auto& ix = threads == 1 ? i1 : i2;
        auto& dx = threads == 1 ? dx1 : dx2;
        if (kind == 0) {
          max_pool2d_forward(g, x.data(), y.data(), ix.data());
          max_pool2d_backward(g, dy.data(), ix.data(), dx.data());
        } else {
          avg_pool2d_forward(g, x.data(), y.data(), kind == 1);
          avg_pool2d_backward(g, dy.data(), dx.data(), kind == 1);
        }
      }
      bool close = true;
      for (int64_t i = 0; i < ny; ++i) close = close && std::fabs(y1[i] - yr[i]) < 1e-12;
      CHECK(close);
      if (kind == 0) CHECK(i1 == ir);
      CHECK(std::memcmp(y1.data(), y2.data(), ny * sizeof(double)) == 0);
      CHECK(std::memcmp(dx1.data(), dx2.data(), dx1.size() * sizeof(double)) == 0);
      // Gradient: <dy, y(x)> is linear in x for avg (and locally for max): compare the
      // backward with the directional derivative along a random direction (finite
      // differences; for max, step small enough that no argmax changes... ties make max
      // non-differentiable, so for max check the scatter identity instead).
      double lhs = 0, rhs = 0;
      if (kind == 0) {
        // sum(dx) over every n, c equals sum(dy); each dx entry is a sum of dy's whose
        // argmax points at it.
        std::vector<double> expect(x.size(), 0.0);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t o = 0; o < g.Ho * g.Wo; ++o)
            for (int64_t c = 0; c < C; ++c)
              expect[(n * H * W + ir[(n * g.Ho * g.Wo + o) * C + c]) * C + c] +=
                  dy[(n * g.Ho * g.Wo + o) * C + c];
        bool same = true;
        for (size_t i = 0; i < x.size(); ++i) same = same && std::fabs(expect[i] - dx1[i]) < 1e-12;
        CHECK(same);
      } else {
        std::vector<double> dir(x.size()), xp(x), ypp(ny);
        for (auto& v : dir) v = dist(rng);
        for (size_t i = 0; i < x.size(); ++i) xp[i] = x[i] + dir[i];
        avg_pool2d_forward(g, xp.data(), ypp.data(), kind == 1);
        for (int64_t i = 0; i < ny; ++i) lhs += dy[i] * (ypp[i] - y1[i]);
        for (size_t i = 0; i < x.size(); ++i) rhs += dx1[i] * dir[i];
        CHECK_NEAR(lhs, rhs, 1e-10);
      }
    }
  }
  nablagrad::set_num_threads(2);
}

// PITFALLS item 9: the backward must reach every sample and channel.
void test_backward_covers_all_n_and_c() {
  auto g = make_pool2d_geometry(3, 4, 4, 5, 2, 2, 0, 0, 0, 0);
  std::vector<double> x(3 * 16 * 5), y(3 * 4 * 5), dy(3 * 4 * 5, 1.0), dx(x.size(), -1.0);
  for (size_t i = 0; i < x.size(); ++i) x[i] = double((i * 37) % 101);
  std::vector<int64_t> idx(y.size());
  max_pool2d_forward(g, x.data(), y.data(), idx.data());
  max_pool2d_backward(g, dy.data(), idx.data(), dx.data());
  double total = 0;
  for (double v : dx) total += v;
  CHECK(total == double(dy.size()));
  avg_pool2d_backward(g, dy.data(), dx.data(), true);
  bool all_quarter = true;
  for (double v : dx) all_quarter = all_quarter && v == 0.25;
  CHECK(all_quarter);
}

void test_geometry_errors() {
  CHECK_THROWS(make_pool2d_geometry(1, 4, 4, 1, 2, 2, 0, 0, 2, 0), std::invalid_argument);
  try {
    make_pool2d_geometry(1, 4, 4, 1, 3, 3, 1, 1, 2, 2);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("padding must be at most half the kernel size") !=
          std::string::npos);
    CHECK(std::string(e.what()).find("kernel_size (3,3)") != std::string::npos);
  }
  CHECK_THROWS(make_pool2d_geometry(1, 4, 4, 1, 0, 2, 0, 0, 0, 0), std::invalid_argument);
  CHECK_THROWS(make_pool2d_geometry(1, 4, 4, 1, 2, 2, -1, 0, 0, 0), std::invalid_argument);
  CHECK_THROWS(make_pool2d_geometry(1, 4, 4, 1, 2, 2, 1, 1, -1, 0), std::invalid_argument);
  CHECK_THROWS(make_pool2d_geometry(1, 2, 2, 1, 3, 3, 1, 1, 0, 0), std::invalid_argument);
  CHECK_THROWS(make_pool2d_geometry(1, 2, 2, 0, 2, 2, 1, 1, 0, 0), std::invalid_argument);
  auto g = make_pool2d_geometry(2, 7, 9, 3, 3, 2, 0, 0, 1, 1);
  CHECK(g.stride_h == 3 && g.stride_w == 2 && g.Ho == 3 && g.Wo == 5);
}

}  // namespace

int main() {
  RUN_TEST(test_torch_examples);
  RUN_TEST(test_random_against_reference);
  RUN_TEST(test_backward_covers_all_n_and_c);
  RUN_TEST(test_geometry_errors);
  return test_util::finish();
}
