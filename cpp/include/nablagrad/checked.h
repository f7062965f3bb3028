// nablagrad/checked.h - overflow-checked int64 arithmetic on sizes.
//
// Every size that an op or kernel forms from other sizes (an element count, a padded extent,
// a buffer length, a number of multiply-adds) goes through these helpers, so that crafted
// sizes (a stride or padding of 2^40, thousands of huge broadcast views) can never wrap to a
// small count and lead to a short allocation that is then overrun. An overflow throws
// std::invalid_argument (Python ValueError) with a message naming what overflowed; the
// caller passes the shapes in `what`: a string, or (on hot paths, so that nothing is
// formatted unless it fails) a callable returning one.
//
//     const int64_t hp = checked_add(H, pad_top + pad_bottom, "conv2d: padded height");
//     const int64_t n = checked_product({N, hp, wp, C}, "conv2d: padded input " + shapes);
//     int64_t elems;
//     if (!product_fits({N, hp, wp, C}, elems)) { /* take another path */ }
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace nablagrad {

namespace checked_detail {
inline const std::string& describe(const std::string& what) { return what; }
inline std::string describe(const char* what) { return what; }
template <typename F, typename = decltype(std::declval<F&>()())>
inline std::string describe(F& what) {
  return what();
}

template <typename What>
[[noreturn]] inline void overflow(What& what, const std::string& expr) {
  throw std::invalid_argument(describe(what) + ": " + expr + " overflows int64 (the sizes are too large)");
}
}  // namespace checked_detail

/// a * b; std::invalid_argument naming `what` (a string, or a callable returning one) when
/// the product does not fit in int64.
template <typename What>
inline int64_t checked_mul(int64_t a, int64_t b, const What& what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    checked_detail::overflow(what, std::to_string(a) + " * " + std::to_string(b));
  return r;
}

/// a + b; std::invalid_argument naming `what` when the sum does not fit in int64.
template <typename What>
inline int64_t checked_add(int64_t a, int64_t b, const What& what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    checked_detail::overflow(what, std::to_string(a) + " + " + std::to_string(b));
  return r;
}

/// Product of all values; std::invalid_argument naming `what` when it does not fit in int64.
/// (A zero factor anywhere does not excuse an overflow of the others, as NumPy's rule for
/// shapes: the check runs over the nonzero values.)
template <typename What>
inline int64_t checked_product(std::initializer_list<int64_t> values, const What& what) {
  int64_t r = 1;
  bool zero = false;
  for (int64_t v : values) {
    if (v == 0) {
      zero = true;
      continue;
    }
    if (__builtin_mul_overflow(r, v, &r)) {
      std::string expr;
      for (int64_t u : values) expr += (expr.empty() ? "" : " * ") + std::to_string(u);
      checked_detail::overflow(what, expr);
    }
  }
  return zero ? 0 : r;
}

/// Non-throwing form, for choosing between code paths: out = product of the values and true,
/// or false when the product of the nonzero values overflows int64.
inline bool product_fits(std::initializer_list<int64_t> values, int64_t& out) {
  int64_t r = 1;
  bool zero = false;
  for (int64_t v : values) {
    if (v == 0) {
      zero = true;
      continue;
    }
    if (__builtin_mul_overflow(r, v, &r)) return false;
  }
  out = zero ? 0 : r;
  return true;
}

/// Element arithmetic on tensor values wraps around in two's complement as NumPy and PyTorch do
/// for integer tensors (int64 max + 1 == int64 min); on signed integers the plain operators
/// would be undefined behaviour. Floating-point types use the plain operators.
template <typename T>
inline T wrapping_add(T a, T b) {
  if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) {
    using U = typename std::make_unsigned<T>::type;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return static_cast<T>(a + b);
  }
}
template <typename T>
inline T wrapping_sub(T a, T b) {
  if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) {
    using U = typename std::make_unsigned<T>::type;
    return static_cast<T>(static_cast<U>(a) - static_cast<U>(b));
  } else {
    return static_cast<T>(a - b);
  }
}
template <typename T>
inline T wrapping_mul(T a, T b) {
  if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) {
    using U = typename std::make_unsigned<T>::type;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return static_cast<T>(a * b);
  }
}
template <typename T>
inline T wrapping_neg(T a) {
  return wrapping_sub(T(0), a);
}

/// a * b, or INT64_MAX when the product of these non-negative values overflows (for work
/// estimates that only choose a schedule).
inline int64_t saturating_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

/// a + b, or INT64_MAX when the sum of these non-negative values overflows.
inline int64_t saturating_add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

}  // namespace nablagrad
