// Minimal test helpers shared by the C++ tests (no framework dependency).
// A test file defines `int main()` that calls its test functions through RUN_TEST and
// returns test_util::finish(). Each CHECK prints the failing expression and location.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace test_util {
inline int& failures() {
  static int count = 0;
  return count;
}
inline int& checks() {
  static int count = 0;
  return count;
}
inline int finish() {
  std::printf("%d checks, %d failed\n", checks(), failures());
  return failures() == 0 ? 0 : 1;
}
}  // namespace test_util

#define CHECK(cond)                                                               \
  do {                                                                            \
    ++test_util::checks();                                                        \
    if (!(cond)) {                                                                \
      ++test_util::failures();                                                    \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);        \
    }                                                                             \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                          \
  do {                                                                                 \
    ++test_util::checks();                                                             \
    const double va_ = static_cast<double>(a), vb_ = static_cast<double>(b);           \
    if (!(std::fabs(va_ - vb_) <= (tol) * (1.0 + std::fabs(vb_)))) {                   \
      ++test_util::failures();                                                         \
      std::printf("%s:%d: CHECK_NEAR failed: %s=%.17g %s=%.17g\n", __FILE__, __LINE__, \
                  #a, va_, #b, vb_);                                                   \
    }                                                                                  \
  } while (0)

#define CHECK_THROWS(expr, ExceptionType)                                          \
  do {                                                                             \
    ++test_util::checks();                                                         \
    bool thrown_ = false;                                                          \
    try {                                                                          \
      static_cast<void>(expr); /* void: Clang warns on an unused comparison */    \
    } catch (const ExceptionType&) {                                               \
      thrown_ = true;                                                              \
    }                                                                              \
    if (!thrown_) {                                                                \
      ++test_util::failures();                                                     \
      std::printf("%s:%d: expected %s from %s\n", __FILE__, __LINE__, #ExceptionType, \
                  #expr);                                                          \
    }                                                                              \
  } while (0)

#define RUN_TEST(fn)                     \
  do {                                   \
    std::printf("[ run ] %s\n", #fn);    \
    fn();                                \
  } while (0)
