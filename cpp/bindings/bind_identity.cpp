// Tensor identity for Python (see common.h): the table TensorImpl* -> live Python wrapper,
// and the small helpers nablagrad.nn needs on top of it (_set_data for Module.to(dtype)).
// Everything here runs with the GIL held (pybind11 calls, type casters, and tp_dealloc of a
// wrapper), which is what makes the unsynchronised table safe.
#include <cstdint>
#include <vector>

#include "common.h"

namespace nablagrad {
namespace bindings {
namespace identity {
namespace {

/// Open-addressing hash table TensorImpl* -> (wrapper, value), linear probing with
/// backward-shift deletion: no allocation per entry, so the insert on every op result and the
/// erase on every wrapper's death cost a few nanoseconds.
class Table {
 public:
  struct Slot {
    const void* key;     // nullptr: empty
    PyObject* wrapper;   // borrowed: the wrapper removes its entry before it dies
    const void* value;   // the Tensor object inside that wrapper
  };

  Table() : slots_(1024, Slot{nullptr, nullptr, nullptr}), mask_(1023) {}

  Slot* find(const void* key) noexcept {
    for (std::size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == key) return &s;
      if (!s.key) return nullptr;
    }
  }

  void put(const void* key, PyObject* wrapper, const void* value) {
    if (Slot* s = find(key)) {
      s->wrapper = wrapper;
      s->value = value;
      return;
    }
    if ((size_ + 1) * 2 > slots_.size()) grow();
    place(Slot{key, wrapper, value});
    ++size_;
  }

  void erase(Slot* slot) noexcept {
    std::size_t i = static_cast<std::size_t>(slot - slots_.data());
    for (std::size_t j = (i + 1) & mask_; slots_[j].key; j = (j + 1) & mask_) {
      const std::size_t home = hash(slots_[j].key) & mask_;
      // move slot j back into the hole at i unless its home lies cyclically in (i, j]
      const bool home_in_range = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (!home_in_range) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{nullptr, nullptr, nullptr};
    --size_;
  }

  std::size_t size() const noexcept { return size_; }

 private:
  static std::size_t hash(const void* p) noexcept {
    auto x = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return static_cast<std::size_t>(x);
  }
  void place(const Slot& s) noexcept {
    std::size_t i = hash(s.key) & mask_;
    while (slots_[i].key) i = (i + 1) & mask_;
    slots_[i] = s;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2, Slot{nullptr, nullptr, nullptr});
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    for (const Slot& s : old)
      if (s.key) place(s);
  }

  std::vector<Slot> slots_;
  std::size_t mask_;
  std::size_t size_ = 0;
};

Table& table() {
  static Table* t = new Table();  // never destroyed: wrappers may outlive static destruction at exit
  return *t;
}

const py::detail::type_info* tensor_type_info() {
  static const py::detail::type_info* ti = py::detail::get_type_info(typeid(Tensor));
  return ti;
}

}  // namespace

PyObject* find(const TensorImpl* impl) noexcept {
  Table::Slot* s = table().find(impl);
  return s ? s->wrapper : nullptr;
}

void remember(py::handle wrapper) {
  const py::detail::type_info* ti = tensor_type_info();
  if (!ti || !PyObject_TypeCheck(wrapper.ptr(), ti->type)) return;
  auto* inst = reinterpret_cast<py::detail::instance*>(wrapper.ptr());
  auto v_h = inst->get_value_and_holder(ti, false);
  if (!v_h || !v_h.holder_constructed()) return;
  const auto* value = v_h.value_ptr<Tensor>();
  if (!value || !value->defined()) return;
  auto& holder = v_h.holder<TensorHolder<Tensor>>();
  const void* key = value->impl_ptr().get();
  if (holder.key() && holder.key() != key) forget(holder.key(), value);
  holder.set_key(key);
  table().put(key, wrapper.ptr(), value);
}

void forget(const void* key, const void* value) noexcept {
  Table& t = table();
  Table::Slot* s = t.find(key);
  if (s && s->value == value) t.erase(s);
}

std::size_t size() noexcept { return table().size(); }

}  // namespace identity

void bind_identity(py::module_& m) {
  m.def("_identity_table_size", &identity::size,
        "Live entries of the TensorImpl -> Python wrapper table (tests).");
  m.def(
      "_set_data",
      [](Tensor& t, const Tensor& src) {
        // Module.to(dtype) for tensors held in Python: `t` keeps its TensorImpl (and so its
        // Python object, autograd leaf status and .grad slot) but takes src's data, shape and dtype.
        if (t.impl().grad_fn)
          throw std::runtime_error("_set_data: only a leaf tensor's data can be replaced (this one has grad_fn " +
                                   std::string(t.impl().grad_fn->name) + ")");
        if (t.requires_grad() && !is_floating(src.dtype()))
          throw std::domain_error(std::string("_set_data: a tensor that requires grad needs floating point data, got ") +
                                  dtype_name(src.dtype()));
        TensorImpl& d = t.impl();
        const TensorImpl& s = src.impl();
        if (&d == &s) return;
        d.storage = s.storage;
        d.shape = s.shape;
        d.strides = s.strides;
        d.offset = s.offset;
        d.dtype = s.dtype;
      },
      py::arg("tensor"), py::arg("src"),
      "Replaces tensor's data (storage, shape, strides, dtype) by src's, keeping the tensor's identity.");
}

}  // namespace bindings
}  // namespace nablagrad
