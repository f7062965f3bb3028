// nablagrad/tensor.h - dtypes, aligned storage and strided tensor views.
//
// A Tensor is a cheap handle (a shared pointer) to a TensorImpl:
//     storage (64-byte aligned bytes, shared by views) + shape + strides + offset + dtype,
// plus the autograd fields (requires_grad, grad, grad_fn) used by autograd.h.
// Views (reshape of contiguous data, transpose, permute, slicing, expand) share storage;
// `contiguous()` copies only when the layout is not already row-major and dense.
// Strides and offsets are counted in elements, not bytes.
//
//     using namespace nablagrad;
//     Tensor a = Tensor::zeros({2, 3});            // float32
//     a.data<float>()[0] = 1.0f;                   // contiguous: plain pointer access
//     Tensor b = a.as_strided({3, 2}, {1, 3}, 0);  // a transposed view, same storage
//
// Everything in this header is raw data handling: no graph is recorded here. The
// differentiable operations live in tensor_operations.h.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <limits>
#include <utility>
#include <unordered_map>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#endif

#include "checked.h"

namespace nablagrad {

// ---------------------------------------------------------------------------------------
// dtypes
// ---------------------------------------------------------------------------------------
enum class DType : uint8_t { Float32 = 0, Float64 = 1, Int64 = 2, Bool = 3 };

inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
  }
  return 1;
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
  }
  return "?";
}

inline bool is_floating(DType d) { return d == DType::Float32 || d == DType::Float64; }

/// Result dtype of a binary op between two tensors (PyTorch's rules for these four).
inline DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::Float64 || b == DType::Float64) return DType::Float64;
  if (a == DType::Float32 || b == DType::Float32) return DType::Float32;
  if (a == DType::Int64 || b == DType::Int64) return DType::Int64;
  return DType::Bool;
}

/// 0 for bool, 1 for int64, 2 for the float dtypes (PyTorch's promotion categories).
inline int dtype_category(DType d) { return d == DType::Bool ? 0 : d == DType::Int64 ? 1 : 2; }

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::Float64; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };

template <typename T> struct type_tag { using type = T; };

/// Calls fn(type_tag<T>{}) with T the C++ type of a float dtype; other dtypes throw
/// std::invalid_argument naming the op (an op that needs a float dtype).
template <typename F>
inline decltype(auto) dispatch_float(DType d, const char* op, F&& fn) {
  switch (d) {
    case DType::Float32: return fn(type_tag<float>{});
    case DType::Float64: return fn(type_tag<double>{});
    default: break;
  }
  throw std::domain_error(std::string(op) + ": expected a float32 or float64 tensor, got " +
                          dtype_name(d));
}

/// Calls fn(type_tag<T>{}) for any dtype.
template <typename F>
inline decltype(auto) dispatch_all(DType d, F&& fn) {
  switch (d) {
    case DType::Float32: return fn(type_tag<float>{});
    case DType::Float64: return fn(type_tag<double>{});
    case DType::Int64: return fn(type_tag<int64_t>{});
    case DType::Bool: break;
  }
  return fn(type_tag<bool>{});
}

// ---------------------------------------------------------------------------------------
// shapes
// ---------------------------------------------------------------------------------------
using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  if (s.size() == 1) out += ",";
  return out + ")";
}

/// Element count of a shape. Throws std::invalid_argument when the product of the nonzero
/// sizes overflows int64 (NumPy's rule), so a huge shape can never wrap to a small count.
inline int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : s) {
    if (d == 0) {
      zero = true;
      continue;
    }
    if (d < 0 || __builtin_mul_overflow(n, d, &n))
      throw std::invalid_argument("shape " + shape_str(s) +
                                  (d < 0 ? " has a negative dimension" : " has too many elements (overflows int64)"));
  }
  return zero ? 0 : n;
}

/// shape_numel of a result shape an op computed, with `context` (a string, or a callable
/// returning one: the op and its input shapes) in front of the message when it overflows.
template <typename What>
inline int64_t shape_numel(const Shape& s, const What& context) {
  try {
    return shape_numel(s);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(checked_detail::describe(context) + ": the result " + e.what());
  }
}

inline Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t st = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = st;
    st *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

/// Normalises a possibly negative axis; throws std::out_of_range when it is outside [-ndim, ndim).
inline int64_t normalize_axis(int64_t axis, int64_t ndim, const char* op) {
  const int64_t a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    throw std::out_of_range(std::string(op) + ": axis " + std::to_string(axis) +
                            " is out of range for a tensor with " + std::to_string(ndim) +
                            " dimension(s)");
  return a;
}

/// NumPy broadcasting of two shapes; throws std::invalid_argument naming both.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw std::invalid_argument(std::string(op) + ": shapes " + shape_str(a) + " and " +
                                  shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// storage
// ---------------------------------------------------------------------------------------
constexpr std::size_t kAlignment = 64;

/// Caching allocator for large blocks. Training repeats the same shapes every step, and
/// a fresh multi-megabyte allocation costs page faults on first touch (~2 ms for 8 MiB),
/// so freed blocks of at least kMinBytes are kept and handed out again. Sizes are rounded
/// up to size classes (four per power of two, so at most 25% slack) so that varying shapes
/// (sequence lengths, a short last batch) still reuse blocks; when more than kCapacity
/// bytes are cached the oldest blocks are freed. Small blocks go straight to malloc (its
/// thread caches are faster than a lock). Thread-safe; `release_cached()` empties it.
class BlockCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{1} << 17;   // 128 KiB
  static constexpr std::size_t kCapacity = std::size_t{1} << 28;   // 256 MiB cached at most

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // leaked: outlives every static tensor
    return *cache;
  }

  /// The size class of a request of `bytes` (>= kMinBytes): rounded up to a quarter of
  /// its power of two.
  static std::size_t size_class(std::size_t bytes) {
    std::size_t p = kMinBytes;
    while (p <= bytes / 2) p *= 2;  // p <= bytes < 2p
    const std::size_t step = p / 4;
    return (bytes + step - 1) / step * step;
  }

  /// A cached block of exactly `bytes` (a size class), most recently freed first, or nullptr.
  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::size_t i = blocks_.size(); i-- > 0;) {
      if (blocks_[i].first != bytes) continue;
      void* p = blocks_[i].second;
      blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(i));
      cached_ -= bytes;
      return p;
    }
    return nullptr;
  }

  /// Keeps the block for reuse, freeing the oldest cached blocks beyond the capacity.
  void give(void* p, std::size_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.emplace_back(bytes, p);
      cached_ += bytes;
      std::size_t drop = 0;
      while (cached_ > kCapacity && drop < blocks_.size()) {
        cached_ -= blocks_[drop].first;
        evicted.push_back(blocks_[drop].second);
        ++drop;
      }
      blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(drop));
    }
    for (void* q : evicted) std::free(q);
  }

  /// Frees every cached block.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& b : blocks_) std::free(b.second);
    blocks_.clear();
    cached_ = 0;
  }

  std::size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  // fork(): the child must not inherit the lock held by another parent thread mid-take
  // (it would never be released there), nor a half-edited block list. The lock is taken
  // around fork() (critical sections are short and call nothing) and released on both sides.
  BlockCache() {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }
  std::mutex mutex_;
  std::vector<std::pair<std::size_t, void*>> blocks_;  // oldest first
  std::size_t cached_ = 0;
};

/// A block of bytes, either owned (64-byte aligned, returned to the allocator on
/// destruction) or borrowed from another owner (e.g. a NumPy array) that is kept alive
/// through `owner`.
/// std::bad_alloc with a message (Python MemoryError) for allocations refused up front.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(std::string msg) : msg_(std::move(msg)) {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

/// Total physical memory in bytes (0 when unknown). Larger requests are refused at once
/// instead of being overcommitted and faulted in page by page.
inline std::size_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
  static const std::size_t bytes = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) : std::size_t{0};
  }();
  return bytes;
#else
  return 0;
#endif
}

class Storage {
 public:
  static std::shared_ptr<Storage> allocate(std::size_t nbytes) {
    const std::size_t phys = physical_memory_bytes();
    if (nbytes > (std::size_t{1} << 62) || (phys != 0 && nbytes > phys))
      throw OutOfMemory("nablagrad: cannot allocate " + std::to_string(nbytes) + " bytes (" +
                        std::to_string(nbytes >> 30) + " GiB); the machine has " + std::to_string(phys >> 30) +
                        " GiB of memory");
    std::size_t rounded = (std::max<std::size_t>(nbytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    void* p = nullptr;
    if (rounded >= BlockCache::kMinBytes) {
      rounded = BlockCache::size_class(rounded);
      p = BlockCache::instance().take(rounded);
    }
    if (p == nullptr) p = std::aligned_alloc(kAlignment, rounded);
    if (p == nullptr) throw std::bad_alloc();
    auto s = std::make_shared<Storage>();
    s->data_ = p;
    s->nbytes_ = nbytes;
    s->capacity_ = rounded;
    s->owned_ = true;
    return s;
  }
  static std::shared_ptr<Storage> borrow(void* data, std::size_t nbytes, std::shared_ptr<void> owner) {
    auto s = std::make_shared<Storage>();
    s->data_ = data;
    s->nbytes_ = nbytes;
    s->owner_ = std::move(owner);
    return s;
  }
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (!owned_) return;
    if (capacity_ >= BlockCache::kMinBytes)
      BlockCache::instance().give(data_, capacity_);
    else
      std::free(data_);
  }
  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }

  /// Bumped by every in-place write through any view; autograd compares it with the value
  /// seen when an op saved the data, to refuse gradients computed from overwritten values.
  /// Atomic: one thread may run backward (reading it) while another writes the tensor.
  std::atomic<uint64_t> version{0};

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  std::size_t capacity_ = 0;
  bool owned_ = false;
  std::shared_ptr<void> owner_;
};

// ---------------------------------------------------------------------------------------
// tensor
// ---------------------------------------------------------------------------------------
/// static_cast<D>(v), except that a float that is NaN or outside int64's range becomes
/// INT64_MIN (what x86, NumPy and PyTorch produce) instead of undefined behaviour.
template <typename D, typename S>
inline D convert_value(S v) {
  if constexpr (std::is_same<D, int64_t>::value && std::is_floating_point<S>::value) {
    if (!(v >= S(-9223372036854775808.0) && v < S(9223372036854775808.0))) return std::numeric_limits<int64_t>::min();
  }
  return static_cast<D>(v);
}

struct Node;  // autograd.h
class Tensor;
inline DType result_type(const Tensor& a, const Tensor& b);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::Float32;
  // autograd state (see autograd.h)
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;          // set on results of recorded ops
  uint32_t output_nr = 0;                 // which output of grad_fn this tensor is
  std::shared_ptr<TensorImpl> grad;       // accumulated gradient of a leaf
};

namespace detail {
// Leaves' .grad pointers are read and replaced under one mutex: several threads may run
// backward through graphs sharing a leaf (Hogwild-style training) while another reads or
// resets .grad (the Python getter and setter, which hold the GIL).
// Lock order: the GIL, then this mutex; never the reverse. So nothing is ever destroyed
// while the mutex is held: a replaced gradient can be the last owner of memory borrowed
// from NumPy, whose deleter takes the GIL. Every function below moves the pointer it
// replaces out under the lock and lets it die after the lock is released.
inline std::mutex& leaf_grad_mutex() {
  static std::mutex m;
  return m;
}

/// The leaf's accumulated gradient (null when it has none), read under leaf_grad_mutex().
inline std::shared_ptr<TensorImpl> get_leaf_grad(const TensorImpl& leaf) {
  std::lock_guard<std::mutex> lock(leaf_grad_mutex());
  return leaf.grad;
}

/// Replaces the leaf's gradient (null clears it); shape and dtype are the caller's to check.
/// The old gradient is released after the lock.
inline void set_leaf_grad(TensorImpl& leaf, std::shared_ptr<TensorImpl> grad) {
  {
    std::lock_guard<std::mutex> lock(leaf_grad_mutex());
    leaf.grad.swap(grad);
  }
  grad.reset();  // the old gradient, outside the lock
}
}  // namespace detail

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  /// 1-D tensors from C++ values; the element type decides the dtype (float -> float32,
  /// double -> float64, int / int64_t -> int64), as with libtorch's at::tensor:
  ///     Tensor a{1.f, 2.f, 3.f};                         // float32, shape (3,)
  ///     Tensor b(std::vector<double>{0.5, 1.5});          // float64, shape (2,)
  ///     Tensor c = Tensor::from_vector(v, {2, 3});        // any shape; see also tensor()
  explicit Tensor(const std::vector<float>& values) : Tensor(from_vector(values, {static_cast<int64_t>(values.size())})) {}
  explicit Tensor(const std::vector<double>& values) : Tensor(from_vector(values, {static_cast<int64_t>(values.size())})) {}
  explicit Tensor(const std::vector<int64_t>& values) : Tensor(from_vector(values, {static_cast<int64_t>(values.size())})) {}
  explicit Tensor(std::initializer_list<float> values) : Tensor(std::vector<float>(values)) {}
  explicit Tensor(std::initializer_list<double> values) : Tensor(std::vector<double>(values)) {}
  explicit Tensor(std::initializer_list<int> values) : Tensor(std::vector<int64_t>(values.begin(), values.end())) {}

  /// A contiguous tensor of `shape` holding `values` in row-major order, converted to
  /// `dtype` (default: float -> float32, double -> float64, integers -> int64, bool -> bool).
  /// std::invalid_argument when the number of values is not the shape's element count.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype) {
    static_assert(std::is_arithmetic<T>::value, "from_vector: values must be numbers or bools");
    const int64_t n = shape_numel(shape);
    if (n != static_cast<int64_t>(values.size()))
      throw std::invalid_argument("from_vector: " + std::to_string(values.size()) +
                                  " values cannot fill a tensor of shape " + shape_str(shape) + " (" +
                                  std::to_string(n) + " elements)");
    Tensor t = empty(shape, dtype);
    dispatch_all(dtype, [&](auto tag) {
      using D = typename decltype(tag)::type;
      D* out = static_cast<D*>(t.raw_data());
      for (int64_t i = 0; i < n; ++i) out[i] = convert_value<D>(values[static_cast<std::size_t>(i)]);
    });
    return t;
  }
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    constexpr DType d = std::is_same<T, bool>::value ? DType::Bool
                        : std::is_same<T, double>::value ? DType::Float64
                        : std::is_floating_point<T>::value ? DType::Float32
                                                           : DType::Int64;
    return from_vector(values, shape, d);
  }

  /// Uninitialised contiguous tensor.
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32) {
    for (int64_t d : shape)
      if (d < 0) throw std::invalid_argument("negative dimension in shape " + shape_str(shape));
    auto impl = std::make_shared<TensorImpl>();
    const int64_t n = shape_numel(shape);
    std::size_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<std::size_t>(n), dtype_size(dtype), &nbytes))
      throw OutOfMemory("nablagrad: a tensor of shape " + shape_str(shape) + " is too large to allocate");
    impl->storage = Storage::allocate(nbytes);
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    impl->dtype = dtype;
    return Tensor(std::move(impl));
  }
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32) {
    Tensor t = empty(shape, dtype);
    std::memset(t.raw_data(), 0, static_cast<std::size_t>(t.numel()) * dtype_size(dtype));
    return t;
  }
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32) {
    Tensor t = empty(shape, dtype);
    t.fill(value);
    return t;
  }
  /// A 0-d tensor.
  static Tensor scalar(double value, DType dtype = DType::Float32) { return full({}, value, dtype); }

  /// Wraps existing memory (not copied); `owner` keeps it alive.
  static Tensor from_blob(void* data, const Shape& shape, const Shape& strides, DType dtype,
                          std::shared_ptr<void> owner) {
    auto impl = std::make_shared<TensorImpl>();
    // Elements spanned (non-negative strides); 0 for an empty shape, where (size - 1) * stride
    // would be negative and wrap.
    std::size_t span = shape_numel(shape) == 0 ? 0 : 1;
    for (std::size_t i = 0; span && i < shape.size(); ++i) span += static_cast<std::size_t>((shape[i] - 1) * strides[i]);
    impl->storage = Storage::borrow(data, span * dtype_size(dtype), std::move(owner));
    impl->shape = shape;
    impl->strides = strides;
    impl->dtype = dtype;
    return Tensor(std::move(impl));
  }

  bool defined() const { return impl_ != nullptr; }
  TensorImpl& impl() const { return *impl_; }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t dim() const { return static_cast<int64_t>(impl_->shape.size()); }
  int64_t size(int64_t axis) const { return impl_->shape[normalize_axis(axis, dim(), "size")]; }
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  bool requires_grad() const { return impl_->requires_grad; }

  // --- autograd and math in libtorch's spelling. The members declared without a body are
  // defined in tensor_api.h (they need autograd.h and the ops); nablagrad.h and
  // tensor_operations.h include it.
  /// Makes a leaf record gradients (on = true) or stop recording them. Throws
  /// std::runtime_error for a non-float dtype, or for on = false on a non-leaf (a result of a
  /// recorded op; use detach()). On a non-leaf, on = true is a no-op, as in PyTorch.
  Tensor& requires_grad_(bool on = true) {
    if (on && !is_floating(impl_->dtype))
      throw std::runtime_error(std::string("requires_grad_: only floating point tensors can require gradients, "
                                           "got dtype ") + dtype_name(impl_->dtype));
    if (!on && !is_leaf())
      throw std::runtime_error("requires_grad_: requires_grad can only be changed on leaf tensors; use detach() "
                               "on a result of an op");
    impl_->requires_grad = on;
    return *this;
  }
  /// True unless the tensor is the result of a recorded op.
  bool is_leaf() const { return !impl_->grad_fn; }
  /// The gradient accumulated by backward() (leaves only); an undefined Tensor (check
  /// defined()) when there is none.
  Tensor grad() const {
    std::shared_ptr<TensorImpl> g = detail::get_leaf_grad(*impl_);  // under the leaf mutex
    return g ? Tensor(std::move(g)) : Tensor();
  }
  /// Replaces the gradient (undefined: clears it). Same shape (std::invalid_argument) and
  /// dtype (std::domain_error) as the tensor.
  void set_grad(const Tensor& g) {
    if (!g.defined()) {
      detail::set_leaf_grad(*impl_, nullptr);
      return;
    }
    if (g.shape() != shape())
      throw std::invalid_argument("set_grad: gradient of shape " + shape_str(g.shape()) +
                                  " for a tensor of shape " + shape_str(shape()));
    if (g.dtype() != dtype())
      throw std::domain_error(std::string("set_grad: gradient of dtype ") + dtype_name(g.dtype()) +
                              " for a tensor of dtype " + dtype_name(dtype()));
    detail::set_leaf_grad(*impl_, g.impl_ptr());
  }
  /// Drops the gradient (the next backward() starts from none).
  void reset_grad() { detail::set_leaf_grad(*impl_, nullptr); }
  /// Back-propagates from this tensor (see nablagrad::backward in autograd.h): `grad` is the
  /// gradient of this tensor (undefined: it must have one element, and the gradient is 1).
  inline void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  /// The single element as T (converted from the dtype); std::invalid_argument when the
  /// tensor does not have exactly one element.
  template <typename T>
  T item() const {
    static_assert(std::is_arithmetic<T>::value, "item<T>: T must be a number or bool");
    if (numel() != 1)
      throw std::invalid_argument("item: only a tensor with one element can be converted to a scalar, got shape " +
                                  shape_str(shape()));
    return dispatch_all(dtype(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      return convert_value<T>(*static_cast<const S*>(raw_data()));
    });
  }
  /// The same data without autograd history (shares storage).
  Tensor detach() const { return alias(); }
  inline Tensor to(DType dtype) const;  // astype
  inline Tensor sum(const std::vector<int64_t>& axes = {}, bool keepdims = false) const;
  inline Tensor mean(const std::vector<int64_t>& axes = {}, bool keepdims = false) const;
  inline Tensor max(const std::vector<int64_t>& axes = {}, bool keepdims = false) const;
  inline Tensor min(const std::vector<int64_t>& axes = {}, bool keepdims = false) const;
  inline Tensor reshape(const Shape& shape) const;
  inline Tensor view(const Shape& shape) const;
  inline Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  inline Tensor transpose(int64_t axis_a, int64_t axis_b) const;
  inline Tensor permute(const std::vector<int64_t>& dims) const;
  inline Tensor contiguous() const;
  inline Tensor matmul(const Tensor& other) const;
  template <typename S>
  inline Tensor pow(S exponent) const;  // scalar exponent (dtype as the operators)
  inline Tensor pow(const Tensor& exponent) const;
  inline Tensor relu() const;
  inline Tensor sigmoid() const;
  inline Tensor tanh() const;
  inline Tensor exp() const;
  inline Tensor log() const;
  inline Tensor sqrt() const;
  inline Tensor abs() const;
  inline Tensor softmax(int64_t axis = -1) const;
  inline Tensor log_softmax(int64_t axis = -1) const;
  /// In-place write counter of the underlying storage (shared by all views).
  uint64_t version() const { return impl_->storage->version; }
  void bump_version() const { ++impl_->storage->version; }

  void* raw_data() const {
    return static_cast<char*>(impl_->storage->data()) + impl_->offset * static_cast<int64_t>(dtype_size(impl_->dtype));
  }
  /// Pointer to the first element; T must match the dtype.
  template <typename T>
  T* data() const {
    if (dtype_of<T>::value != impl_->dtype)
      throw std::domain_error(std::string("tensor has dtype ") + dtype_name(impl_->dtype) +
                              ", accessed as " + dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }

  bool is_contiguous() const {
    // An empty tensor is contiguous whatever its strides (as PyTorch; NumPy gives (2, 0) arrays
    // strides (0, 0), and a copy of one must not count as a strided view).
    for (const int64_t s : impl_->shape)
      if (s == 0) return true;
    int64_t expected = 1;
    for (std::size_t i = impl_->shape.size(); i-- > 0;) {
      if (impl_->shape[i] == 1) continue;
      if (impl_->strides[i] != expected) return false;
      expected *= impl_->shape[i];
    }
    return true;
  }

  /// A view of the same storage with another shape/strides/offset (no checks; no graph).
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = impl_->storage;
    impl->shape = shape;
    impl->strides = strides;
    impl->offset = offset;
    impl->dtype = impl_->dtype;
    return Tensor(std::move(impl));
  }

  /// Same data and layout, no autograd history (shares storage).
  Tensor alias() const { return as_strided(impl_->shape, impl_->strides, impl_->offset); }

  /// Contiguous copy when needed, else an alias (raw; no graph).
  Tensor contiguous_data() const {
    if (is_contiguous()) return *this;
    Tensor out = empty(shape(), dtype());
    copy_into(out, *this);
    return out;
  }

  /// Element (flat index in row-major order) as double; for tests and item().
  double item_at(int64_t flat) const {
    int64_t off = 0;
    for (std::size_t i = impl_->shape.size(); i-- > 0;) {
      const int64_t d = impl_->shape[i];
      off += (flat % d) * impl_->strides[i];
      flat /= d;
    }
    return dispatch_all(dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      return static_cast<double>(static_cast<const T*>(raw_data())[off]);
    });
  }

  /// Fills every element (respecting strides).
  void fill(double value) {
    dispatch_all(dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T v = static_cast<T>(value);
      for_each_offset(shape(), strides(), [&](int64_t off) { static_cast<T*>(raw_data())[off] = v; });
    });
  }

  /// Copies src into dst elementwise (same shape; converting dtypes). Raw: no graph.
  static void copy_into(const Tensor& dst, const Tensor& src) {
    if (dst.shape() != src.shape())
      throw std::invalid_argument("copy: shape mismatch " + shape_str(dst.shape()) + " vs " + shape_str(src.shape()));
    const int64_t n = dst.numel();
    if (n == 0) return;
    if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
      std::memmove(dst.raw_data(), src.raw_data(), static_cast<std::size_t>(n) * dtype_size(dst.dtype()));
      return;
    }
    dispatch_all(dst.dtype(), [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      dispatch_all(src.dtype(), [&](auto stag) {
        using S = typename decltype(stag)::type;
        D* d = static_cast<D*>(dst.raw_data());
        const S* s = static_cast<const S*>(src.raw_data());
        for_each_offset2(dst.shape(), dst.strides(), src.strides(),
                         [&](int64_t od, int64_t os) { d[od] = convert_value<D>(s[os]); });
      });
    });
  }

  /// Visits the element offsets of a strided layout in row-major order.
  template <typename F>
  static void for_each_offset(const Shape& shape, const Shape& strides, F&& fn) {
    const int64_t nd = static_cast<int64_t>(shape.size());
    if (shape_numel(shape) == 0) return;
    if (nd == 0) {
      fn(int64_t{0});
      return;
    }
    std::vector<int64_t> idx(nd, 0);
    const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
    int64_t base = 0;
    for (;;) {
      for (int64_t i = 0; i < inner; ++i) fn(base + i * inner_stride);
      int64_t d = nd - 2;
      for (; d >= 0; --d) {
        base += strides[d];
        if (++idx[d] < shape[d]) break;
        base -= strides[d] * shape[d];
        idx[d] = 0;
      }
      if (d < 0) return;
    }
  }

  /// Visits pairs of offsets of two layouts of the same shape, in row-major order.
  template <typename F>
  static void for_each_offset2(const Shape& shape, const Shape& sa, const Shape& sb, F&& fn) {
    const int64_t nd = static_cast<int64_t>(shape.size());
    if (shape_numel(shape) == 0) return;
    if (nd == 0) {
      fn(int64_t{0}, int64_t{0});
      return;
    }
    std::vector<int64_t> idx(nd, 0);
    const int64_t inner = shape[nd - 1], ia = sa[nd - 1], ib = sb[nd - 1];
    int64_t a = 0, b = 0;
    for (;;) {
      for (int64_t i = 0; i < inner; ++i) fn(a + i * ia, b + i * ib);
      int64_t d = nd - 2;
      for (; d >= 0; --d) {
        a += sa[d];
        b += sb[d];
        if (++idx[d] < shape[d]) break;
        a -= sa[d] * shape[d];
        b -= sb[d] * shape[d];
        idx[d] = 0;
      }
      if (d < 0) return;
    }
  }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

/// Result dtype of a binary op, as PyTorch: a 0-d operand does not widen a dimensioned one
/// of the same category (float32 tensor + 0-d float64 -> float32); a 0-d operand of a
/// higher category still decides (int64 tensor + 0-d float64 -> float64).
inline DType result_type(const Tensor& a, const Tensor& b) {
  const bool a0 = a.dim() == 0, b0 = b.dim() == 0;
  if (a0 == b0) return promote_types(a.dtype(), b.dtype());
  const Tensor& dimmed = a0 ? b : a;
  const Tensor& zero = a0 ? a : b;
  if (dtype_category(zero.dtype()) > dtype_category(dimmed.dtype())) return zero.dtype();
  return dimmed.dtype();
}

}  // namespace nablagrad
