// Tests of kernels/vmath.h: accuracy sweeps against double-precision std:: functions on dense
// grids, special values (inf, NaN, overflow, underflow, saturation), array tails and splits
// (every element computed by the same code), for each SIMD level this CPU has; and the float32
// tensor ops that use them (gelu, exp, tanh, sigmoid), forward and backward.
#include "nablagrad/kernels/vmath.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "nablagrad/nablagrad.h"
#include "test_util.h"

using nablagrad::SimdLevel;
using nablagrad::kernels::VOp;

namespace {

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<SimdLevel> simd_levels() {
  std::vector<SimdLevel> levels{SimdLevel::Portable};
  if (nablagrad::cpu_has_avx2_fma()) levels.push_back(SimdLevel::AVX2);
  if (nablagrad::cpu_has_avx512f()) levels.push_back(SimdLevel::AVX512);
  return levels;
}

double ref(VOp op, double x) {
  const double k = std::sqrt(2.0 / M_PI), c = 0.044715;
  switch (op) {
    case VOp::Exp: return std::exp(x);
    case VOp::Erf: return std::erf(x);
    case VOp::Tanh: return std::tanh(x);
    case VOp::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case VOp::Gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case VOp::GeluDer: return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    case VOp::GeluTanh: return 0.5 * x * (1.0 + std::tanh(k * (x + c * x * x * x)));
    case VOp::GeluTanhDer: {
      const double t = std::tanh(k * (x + c * x * x * x));
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * c * x * x);
    }
    case VOp::None: break;
  }
  return x;
}

std::vector<float> grid(double lo, double hi, int64_t n) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(lo + (hi - lo) * i / (n - 1));
  return x;
}

// Largest error over the grid, measured as |y - r| / (rel_floor_abs + rel * |r|) style: returns
// max |y - r| / (abs_tol + rel_tol |r|), so <= 1 passes.
double worst(VOp op, const std::vector<float>& x, double abs_tol, double rel_tol, const char* label) {
  std::vector<float> y(x.size());
  nablagrad::kernels::vmap(op, x.data(), y.data(), static_cast<int64_t>(x.size()));
  double w = 0, at = 0, err_at = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double r = ref(op, x[i]), e = std::fabs(y[i] - r) / (abs_tol + rel_tol * std::fabs(r));
    if (!(e <= w)) {
      w = e;
      at = x[i];
      err_at = std::fabs(y[i] - r);
    }
  }
  std::printf("  %-28s level %d: worst %.3f of tolerance at x = %.7g (|err| %.3g)\n", label,
              static_cast<int>(nablagrad::simd_level()), w, at, err_at);
  return w;
}

void test_accuracy() {
  const int64_t n = 2000001;
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    // exp: relative 2.5e-7 over the normal range; subnormal results within one subnormal step too
    CHECK(worst(VOp::Exp, grid(-87.3, 88.72, n), 0.0, 2.5e-7, "exp rel") <= 1.0);
    CHECK(worst(VOp::Exp, grid(-1.0, 1.0, n), 0.0, 2.5e-7, "exp rel [-1,1]") <= 1.0);
    CHECK(worst(VOp::Exp, grid(-103.9, -87.4, n), 1.5e-45, 2.5e-7, "exp subnormal") <= 1.0);
    // erf: absolute 2.2e-7 on [-10, 10], relative 3e-7 near 0
    CHECK(worst(VOp::Erf, grid(-10.0, 10.0, n), 2.2e-7, 0.0, "erf abs") <= 1.0);
    CHECK(worst(VOp::Erf, grid(-1.5, 1.5, n), 2.2e-7, 0.0, "erf abs [-1.5,1.5]") <= 1.0);
    CHECK(worst(VOp::Erf, grid(-1e-3, 1e-3, n), 1e-44, 3e-7, "erf rel near 0") <= 1.0);
    // tanh: absolute 1.5e-7 and relative 2.5e-7
    CHECK(worst(VOp::Tanh, grid(-10.0, 10.0, n), 1.5e-7, 0.0, "tanh abs") <= 1.0);
    CHECK(worst(VOp::Tanh, grid(-10.0, 10.0, n), 1e-44, 2.5e-7, "tanh rel") <= 1.0);
    CHECK(worst(VOp::Tanh, grid(-1e-3, 1e-3, n), 1e-44, 2.5e-7, "tanh rel near 0") <= 1.0);
    // sigmoid: relative 3e-7 while the result is normal
    CHECK(worst(VOp::Sigmoid, grid(-87.0, 30.0, n), 0.0, 3e-7, "sigmoid rel") <= 1.0);
    // GELU and the derivatives: absolute 5e-7 (1 + |x|)-ish, via abs 6e-7 + rel 3e-7
    for (VOp op : {VOp::Gelu, VOp::GeluDer, VOp::GeluTanh, VOp::GeluTanhDer})
      CHECK(worst(op, grid(-10.0, 10.0, n), 6e-7, 3e-7, "gelu family") <= 1.0);
  }
}

float one(VOp op, float x) {
  float y = 0;
  nablagrad::kernels::vmap(op, &x, &y, 1);
  return y;
}

void test_special_values() {
  const float big_nan = std::numeric_limits<float>::signaling_NaN();
  for (SimdLevel level : simd_levels()) {
    nablagrad::set_simd_level(level);
    CHECK(one(VOp::Exp, kInf) == kInf);
    CHECK(one(VOp::Exp, -kInf) == 0.0f);
    CHECK(one(VOp::Exp, 88.8f) == kInf);  // overflow
    CHECK(one(VOp::Exp, 1e30f) == kInf);
    CHECK(std::isfinite(one(VOp::Exp, 88.72f)));  // just below overflow: finite and accurate
    CHECK(std::fabs(one(VOp::Exp, 88.72f) / std::exp(static_cast<double>(88.72f)) - 1.0) <= 2.5e-7);
    CHECK(one(VOp::Exp, -104.0f) == 0.0f);  // underflow
    CHECK(one(VOp::Exp, -1e30f) == 0.0f);
    CHECK(one(VOp::Exp, -100.0f) > 0.0f && one(VOp::Exp, -100.0f) < std::numeric_limits<float>::min());  // subnormal
    CHECK(one(VOp::Exp, 0.0f) == 1.0f);
    CHECK(one(VOp::Erf, kInf) == 1.0f && one(VOp::Erf, -kInf) == -1.0f);
    CHECK(one(VOp::Erf, 5.0f) == 1.0f && one(VOp::Erf, -5.0f) == -1.0f);
    CHECK(one(VOp::Erf, 0.0f) == 0.0f);
    CHECK(one(VOp::Erf, 1e-30f) > 0.0f);
    CHECK(one(VOp::Tanh, kInf) == 1.0f && one(VOp::Tanh, -kInf) == -1.0f);
    CHECK(one(VOp::Tanh, 20.0f) == 1.0f && one(VOp::Tanh, -20.0f) == -1.0f);
    CHECK(one(VOp::Tanh, 0.0f) == 0.0f);
    CHECK(one(VOp::Sigmoid, kInf) == 1.0f && one(VOp::Sigmoid, -kInf) == 0.0f);
    CHECK(one(VOp::Sigmoid, 0.0f) == 0.5f);
    CHECK(one(VOp::Gelu, kInf) == kInf && one(VOp::Gelu, 0.0f) == 0.0f);
    CHECK(one(VOp::GeluTanh, kInf) == kInf && one(VOp::GeluTanh, -20.0f) == -0.0f);
    CHECK(one(VOp::GeluDer, 30.0f) == 1.0f && one(VOp::GeluDer, -30.0f) == 0.0f);
    for (VOp op : {VOp::Exp, VOp::Erf, VOp::Tanh, VOp::Sigmoid, VOp::Gelu, VOp::GeluDer, VOp::GeluTanh, VOp::GeluTanhDer}) {
      CHECK(std::isnan(one(op, kNaN)));
      CHECK(std::isnan(one(op, -kNaN)));
      CHECK(std::isnan(one(op, big_nan)));
    }
    // results must agree with the scalar functions at the portable level and the vector code
    // at AVX2 level for every element whatever its position: tails and splits
    std::vector<float> x = grid(-6.0, 6.0, 203);
    std::vector<float> full(x.size()), part(x.size()), g(x.size(), 1.5f), gfull(x.size()), gpart(x.size());
    for (VOp op : {VOp::Exp, VOp::Erf, VOp::Tanh, VOp::Sigmoid, VOp::Gelu, VOp::GeluDer, VOp::GeluTanh, VOp::GeluTanhDer}) {
      nablagrad::kernels::vmap(op, x.data(), full.data(), static_cast<int64_t>(x.size()));
      nablagrad::kernels::vmap_mul(op, g.data(), x.data(), gfull.data(), static_cast<int64_t>(x.size()));
      for (int64_t step : {1, 3, 7, 9, 17}) {
        for (int64_t lo = 0; lo < static_cast<int64_t>(x.size()); lo += step) {
          const int64_t len = std::min<int64_t>(step, static_cast<int64_t>(x.size()) - lo);
          nablagrad::kernels::vmap(op, x.data() + lo, part.data() + lo, len);
          nablagrad::kernels::vmap_mul(op, g.data() + lo, x.data() + lo, gpart.data() + lo, len);
        }
        CHECK(std::memcmp(full.data(), part.data(), full.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(gfull.data(), gpart.data(), gfull.size() * sizeof(float)) == 0);
        for (std::size_t i = 0; i < x.size(); ++i)
          if (std::memcmp(&full[i], &part[i], sizeof(float)) != 0 || std::memcmp(&gfull[i], &gpart[i], sizeof(float)) != 0) {
            std::printf("  level %s op %d step %lld: element %zu (x = %.9g) whole array %.9g / %.9g, in pieces %.9g / %.9g\n",
                        nablagrad::simd_level_name(level), static_cast<int>(op), static_cast<long long>(step), i,
                        x[i], full[i], gfull[i], part[i], gpart[i]);
            break;
          }
      }
      bool mul_ok = true;
      for (std::size_t i = 0; i < x.size(); ++i) mul_ok = mul_ok && gfull[i] == 1.5f * full[i];
      CHECK(mul_ok);
      if (level == SimdLevel::Portable) {
        bool same = true;
        for (std::size_t i = 0; i < x.size(); ++i) same = same && full[i] == nablagrad::kernels::vop_scalar(op, x[i]);
        CHECK(same);
      }
    }
  }
}

// The AVX-512 code is the AVX2 code lane for lane: both levels give the same bits, for full
// vectors and for tails of every length (and through the *Der chain-rule product).
void test_avx512_matches_avx2() {
  if (!nablagrad::cpu_has_avx512f()) {
    std::printf("  (no AVX-512 on this CPU: skipped)\n");
    return;
  }
  const SimdLevel initial = nablagrad::simd_level();
  std::vector<float> x = grid(-12.0, 12.0, 4099);
  x.insert(x.end(), {kInf, -kInf, kNaN, 0.0f, -0.0f, 1e-30f, -100.0f, 88.7f});
  const std::vector<float> g(x.size(), -0.75f);
  for (VOp op : {VOp::Exp, VOp::Erf, VOp::Tanh, VOp::Sigmoid, VOp::Gelu, VOp::GeluDer, VOp::GeluTanh, VOp::GeluTanhDer}) {
    for (int64_t len : {int64_t{1}, int64_t{7}, int64_t{15}, int64_t{16}, int64_t{17}, static_cast<int64_t>(x.size())}) {
      std::vector<float> y2(static_cast<std::size_t>(len)), y5(y2.size()), m2(y2.size()), m5(y2.size());
      const float* xs = x.data() + (x.size() - static_cast<std::size_t>(len));  // ends with the specials
      nablagrad::set_simd_level(SimdLevel::AVX2);
      nablagrad::kernels::vmap(op, xs, y2.data(), len);
      nablagrad::kernels::vmap_mul(op, g.data(), xs, m2.data(), len);
      nablagrad::set_simd_level(SimdLevel::AVX512);
      nablagrad::kernels::vmap(op, xs, y5.data(), len);
      nablagrad::kernels::vmap_mul(op, g.data(), xs, m5.data(), len);
      const bool same = std::memcmp(y2.data(), y5.data(), y2.size() * sizeof(float)) == 0 &&
                        std::memcmp(m2.data(), m5.data(), m2.size() * sizeof(float)) == 0;
      CHECK(same);
      if (!same) std::printf("  op %d len %lld: AVX-512 differs from AVX2\n", static_cast<int>(op), static_cast<long long>(len));
    }
  }
  nablagrad::set_simd_level(initial);
}

// The tensor ops: float32 forward and gradient against double, non-contiguous inputs,
// and thread counts (bitwise).
void test_tensor_ops() {
  using namespace nablagrad;
  const SimdLevel initial = simd_level();
  const int initial_threads = get_num_threads();
  std::vector<float> xs = grid(-7.0, 7.0, 3 * 50001);
  for (SimdLevel level : simd_levels()) {
    set_simd_level(level);
    Tensor x32 = Tensor::from_vector(xs, {3, 50001});
    Tensor x64 = astype(x32, DType::Float64);
    struct Case {
      const char* name;
      Tensor (*fn)(const Tensor&);
    };
    const Case cases[] = {{"exp", [](const Tensor& t) { return nablagrad::exp(t); }},
                          {"tanh", [](const Tensor& t) { return nablagrad::tanh(t); }},
                          {"sigmoid", [](const Tensor& t) { return nablagrad::sigmoid(t); }},
                          {"gelu", [](const Tensor& t) { return nablagrad::gelu(t, false); }},
                          {"gelu_tanh", [](const Tensor& t) { return nablagrad::gelu(t, true); }}};
    for (const Case& c : cases) {
      std::vector<Tensor> ys, gs;
      for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        Tensor a = x32.detach().requires_grad_();
        Tensor y = c.fn(a);
        y.sum().backward();
        ys.push_back(y);
        gs.push_back(a.grad());
      }
      for (std::size_t i = 1; i < ys.size(); ++i) {
        CHECK(std::memcmp(ys[0].data<float>(), ys[i].data<float>(), sizeof(float) * ys[0].numel()) == 0);
        CHECK(std::memcmp(gs[0].data<float>(), gs[i].data<float>(), sizeof(float) * gs[0].numel()) == 0);
      }
      Tensor b = x64.detach().requires_grad_();
      Tensor y64 = c.fn(b);
      y64.sum().backward();
      const Tensor g64 = b.grad();
      double worst_y = 0, worst_g = 0;
      for (int64_t i = 0; i < y64.numel(); ++i) {
        // float32 results against float64 ones: error relative to 1 + |value| (cancellations such as
        // 1 - tanh^2 near saturation are inherent to float32, whatever the kernel)
        worst_y = std::max(worst_y, std::fabs(ys[0].item_at(i) - y64.item_at(i)) / (1.0 + std::fabs(y64.item_at(i))));
        worst_g = std::max(worst_g, std::fabs(gs[0].item_at(i) - g64.item_at(i)) / (1.0 + std::fabs(g64.item_at(i))));
      }
      std::printf("  tensor %-10s level %d: worst err / (1 + |ref|): forward %.3g, gradient %.3g\n", c.name,
                  static_cast<int>(level), worst_y, worst_g);
      CHECK(worst_y <= 5e-7);
      CHECK(worst_g <= 1e-6);  // gelu-tanh: x (1 - t^2) cancels in float32 (5.5e-7)
      // a transposed (non-contiguous) view gives the same values as its contiguous copy
      Tensor xt = x32.as_strided({50001, 3}, {1, 50001}, 0);
      Tensor yt = c.fn(xt), yc = c.fn(xt.contiguous_data());
      bool same = true;
      for (int64_t i = 0; i < yt.numel(); ++i) same = same && yt.item_at(i) == yc.item_at(i);
      CHECK(same);
    }
  }
  set_num_threads(initial_threads);
  set_simd_level(initial);
}

}  // namespace

int main() {
  RUN_TEST(test_accuracy);
  RUN_TEST(test_special_values);
  RUN_TEST(test_avx512_matches_avx2);
  RUN_TEST(test_tensor_ops);
  return test_util::finish();
}
