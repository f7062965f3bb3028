// DLPack exchange (https://dmlc.github.io/dlpack/latest/, Python array API's __dlpack__):
// Tensor.__dlpack__ / __dlpack_device__ export a tensor's memory without copying, and
// _core._from_dlpack_capsule wraps a producer's capsule as a Tensor (ng.from_dlpack in
// python/nablagrad/dlpack.py negotiates with the producer, then calls it).
//
// Lifetimes: an exported capsule owns a reference to the tensor's Storage, released by the
// DLManagedTensor's deleter when the consumer is done (or by the capsule's destructor when no
// consumer took it). An imported tensor's Storage owns the producer's DLManagedTensor and calls
// its deleter when the last view of the data dies.
//
// nablagrad has no read-only tensors, so: a tensor that requires grad (whose NumPy view is
// read-only, see to_numpy in module.cpp) is exported with the versioned READ_ONLY flag, and
// refused through the legacy capsule that cannot carry it (as NumPy refuses read-only arrays);
// a read-only import is copied.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace nablagrad {
namespace bindings {
namespace {

// --- the DLPack ABI (dlpack.h v1.1; the layouts are fixed by the standard) ----------------
enum DLDeviceTypeCode : int32_t { kDLCPU = 1, kDLCUDAHost = 3, kDLROCMHost = 11, kDLCUDAManaged = 13 };
enum DLDataTypeCode : uint8_t {
  kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLOpaqueHandle = 3, kDLBfloat = 4, kDLComplex = 5, kDLBool = 6
};

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL: row-major and compact
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = uint64_t{1} << 0;
constexpr uint64_t kFlagIsCopied = uint64_t{1} << 1;
constexpr uint32_t kDLPackMajor = 1, kDLPackMinor = 1;

template <typename M> struct CapsuleNames;
template <> struct CapsuleNames<DLManagedTensor> {
  static constexpr const char* fresh = "dltensor";
  static constexpr const char* used = "used_dltensor";
};
template <> struct CapsuleNames<DLManagedTensorVersioned> {
  static constexpr const char* fresh = "dltensor_versioned";
  static constexpr const char* used = "used_dltensor_versioned";
};

// --- export -----------------------------------------------------------------------------------
/// The managed tensor handed to a consumer together with what keeps its memory valid.
template <typename M>
struct Exported {
  M managed{};
  std::shared_ptr<Storage> storage;  // the reference the deleter releases
  std::vector<int64_t> shape, strides;
  static void deleter(M* self) { delete static_cast<Exported*>(self->manager_ctx); }
};

DLDataType dl_dtype(DType d) {
  switch (d) {
    case DType::Float32: return {kDLFloat, 32, 1};
    case DType::Float64: return {kDLFloat, 64, 1};
    case DType::Int64: return {kDLInt, 64, 1};
    case DType::Bool: return {kDLBool, 8, 1};
  }
  return {kDLFloat, 32, 1};
}

/// Destructor of a capsule: a capsule no consumer renamed to "used_..." still owns its managed
/// tensor. Runs with the GIL held and must leave any pending exception as it found it.
template <typename M>
void capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, CapsuleNames<M>::used)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<M*>(PyCapsule_GetPointer(capsule, CapsuleNames<M>::fresh));
  if (managed == nullptr)
    PyErr_WriteUnraisable(capsule);
  else if (managed->deleter)
    managed->deleter(managed);
  PyErr_Restore(type, value, traceback);
}

template <typename M>
py::object make_capsule(const Tensor& t, uint64_t flags) {
  auto* ex = new Exported<M>();
  ex->storage = t.impl().storage;
  ex->shape = t.shape();
  ex->strides = t.strides();
  DLTensor& dl = ex->managed.dl_tensor;
  dl.data = t.raw_data();
  dl.device = {kDLCPU, 0};
  dl.ndim = static_cast<int32_t>(t.dim());
  dl.dtype = dl_dtype(t.dtype());
  dl.shape = ex->shape.data();
  dl.strides = ex->strides.data();
  dl.byte_offset = 0;
  ex->managed.manager_ctx = ex;
  ex->managed.deleter = &Exported<M>::deleter;
  if constexpr (std::is_same<M, DLManagedTensorVersioned>::value) {
    ex->managed.version = {kDLPackMajor, kDLPackMinor};
    ex->managed.flags = flags;
  }
  PyObject* capsule = PyCapsule_New(&ex->managed, CapsuleNames<M>::fresh, &capsule_destructor<M>);
  if (capsule == nullptr) {
    delete ex;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}

[[noreturn]] void buffer_error(const std::string& msg) {
  PyErr_SetString(PyExc_BufferError, msg.c_str());
  throw py::error_already_set();
}

std::string repr_of(py::handle o) { return std::string(py::repr(o)); }

py::object dlpack(const Tensor& t, py::object stream, py::object max_version, py::object dl_device,
                  py::object copy) {
  if (!stream.is_none())
    throw py::value_error("__dlpack__: nablagrad tensors live in CPU memory, where stream must be None, got " +
                          repr_of(stream));
  if (!dl_device.is_none()) {
    const auto dev = dl_device.cast<std::pair<int64_t, int64_t>>();
    if (dev.first != kDLCPU || dev.second != 0)
      buffer_error("__dlpack__: cannot export to DLPack device " + repr_of(dl_device) +
                   "; nablagrad tensors are on the CPU, device (1, 0)");
  }
  bool versioned = false;
  if (!max_version.is_none()) versioned = max_version.cast<std::pair<int64_t, int64_t>>().first >= 1;
  const bool force_copy = !copy.is_none() && copy.cast<bool>();
  // copy=False never fails: the data is on the CPU already and is exported as it is.
  Tensor src = t;
  uint64_t flags = 0;
  if (force_copy) {
    src = Tensor::empty(t.shape(), t.dtype());
    Tensor::copy_into(src, t);
    flags |= kFlagIsCopied;
  } else if (t.requires_grad()) {
    // Writes from the consumer would bypass autograd's version checks (as t.numpy()).
    if (!versioned)
      buffer_error("__dlpack__: a tensor that requires grad is exported read-only, which the legacy (unversioned) "
                   "DLPack capsule cannot signal; pass max_version=(1, 0) or later, export t.detach(), or pass "
                   "copy=True");
    flags |= kFlagReadOnly;
  }
  if (versioned) return make_capsule<DLManagedTensorVersioned>(src, flags);
  return make_capsule<DLManagedTensor>(src, flags);
}

// --- import -----------------------------------------------------------------------------------
std::string dl_dtype_name(const DLDataType& d) {
  std::string base;
  switch (d.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLComplex: base = "complex"; break;
    case kDLBool: return d.lanes == 1 ? "bool" : "bool x" + std::to_string(d.lanes);
    case kDLOpaqueHandle: return "opaque handle";
    default: base = "type code " + std::to_string(d.code) + " with bits="; break;
  }
  std::string name = base + std::to_string(d.bits);
  if (d.lanes != 1) name += " x" + std::to_string(d.lanes) + " lanes";
  return name;
}

DType from_dl_dtype(const DLDataType& d) {
  if (d.lanes == 1) {
    if (d.code == kDLFloat && d.bits == 32) return DType::Float32;
    if (d.code == kDLFloat && d.bits == 64) return DType::Float64;
    if (d.code == kDLInt && d.bits == 64) return DType::Int64;
    if (d.code == kDLBool && d.bits == 8) return DType::Bool;
  }
  throw py::type_error("from_dlpack: unsupported dtype " + dl_dtype_name(d) +
                       " (nablagrad supports float32, float64, int64 and bool); convert it first, e.g. "
                       "ng.tensor(np.from_dlpack(x).astype(np.float32))");
}

std::string device_name(const DLDevice& d) {
  return "(" + std::to_string(d.device_type) + ", " + std::to_string(d.device_id) + ")";
}

/// Calls the producer's deleter, with the GIL (NumPy's needs it; it may run on a thread that
/// released it). After interpreter shutdown it leaks instead, as NumPy does.
template <typename M>
void release_managed(M* managed) {
  if (!managed->deleter) return;
  if (!Py_IsInitialized()) return;
  py::gil_scoped_acquire gil;
  managed->deleter(managed);
}

/// Copies a strided layout into a new contiguous tensor element by element with memcpy (the
/// source may be misaligned for its type).
Tensor copy_bytes(const char* base, const Shape& shape, const Shape& strides, DType dt) {
  Tensor out = Tensor::empty(shape, dt);
  const std::size_t item = dtype_size(dt);
  char* dst = static_cast<char*>(out.raw_data());
  Tensor::for_each_offset(shape, strides, [&](int64_t off) {
    std::memcpy(dst, base + off * static_cast<int64_t>(item), item);
    dst += item;
  });
  return out;
}

template <typename M>
Tensor import_managed(PyObject* capsule, bool force_copy, bool allow_copy) {
  auto* managed = static_cast<M*>(PyCapsule_GetPointer(capsule, CapsuleNames<M>::fresh));
  if (managed == nullptr) throw py::error_already_set();
  uint64_t flags = 0;
  if constexpr (std::is_same<M, DLManagedTensorVersioned>::value) {
    // The capsule stays unconsumed on these errors: its own destructor calls the deleter.
    if (managed->version.major > kDLPackMajor)
      buffer_error("from_dlpack: the producer made a DLPack " + std::to_string(managed->version.major) + "." +
                   std::to_string(managed->version.minor) + " capsule; nablagrad reads DLPack 1.x");
    flags = managed->flags;
  }
  const DLTensor& dl = managed->dl_tensor;
  const int32_t type = dl.device.device_type;
  if (type != kDLCPU && type != kDLCUDAHost && type != kDLROCMHost && type != kDLCUDAManaged)
    buffer_error("from_dlpack: the data is on DLPack device " + device_name(dl.device) +
                 ", which the CPU cannot read; nablagrad tensors live in CPU memory (device (1, 0))");
  const DType dt = from_dl_dtype(dl.dtype);
  if (dl.ndim < 0) throw py::value_error("from_dlpack: negative ndim " + std::to_string(dl.ndim));
  Shape shape(dl.shape, dl.shape + dl.ndim);
  const int64_t numel = shape_numel(shape);  // negative or overflowing sizes: ValueError
  Shape strides = dl.strides ? Shape(dl.strides, dl.strides + dl.ndim) : contiguous_strides(shape);
  const bool read_only = (flags & kFlagReadOnly) != 0;
  const std::size_t item = dtype_size(dt);
  char* data = static_cast<char*>(dl.data) + dl.byte_offset;
  const bool misaligned = reinterpret_cast<std::uintptr_t>(data) % item != 0;
  const bool need_copy = force_copy || (numel != 0 && (read_only || misaligned));
  if (need_copy && !force_copy && !allow_copy)
    buffer_error(std::string("from_dlpack: copy=False, but the data is ") +
                 (read_only ? "read-only (nablagrad tensors are always writable, so a read-only import is copied)"
                            : "not aligned to its item size, which nablagrad's kernels need"));

  // From here on the capsule's data is ours: mark it consumed and own the managed tensor.
  if (PyCapsule_SetName(capsule, CapsuleNames<M>::used) != 0) throw py::error_already_set();
  std::shared_ptr<void> owner(managed, [](void* p) { release_managed(static_cast<M*>(p)); });

  if (numel == 0) return Tensor::empty(shape, dt);  // nothing to share; the owner is released now
  // Elements from the lowest to the highest address the view touches (strides may be negative).
  int64_t lo = 0, hi = 0;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    const int64_t reach = (shape[i] - 1) * strides[i];
    (reach < 0 ? lo : hi) += reach;
  }
  if (need_copy) return copy_bytes(data, shape, strides, dt);  // the owner is released on return
  for (std::size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 1) strides[i] = contiguous_strides(shape)[i];  // as from_numpy: any stride is valid there
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::borrow(data + lo * static_cast<int64_t>(item),
                                  static_cast<std::size_t>(hi - lo + 1) * item, std::move(owner));
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = -lo;
  impl->dtype = dt;
  return Tensor(std::move(impl));
}

Tensor from_dlpack_capsule(py::object capsule, bool force_copy, bool allow_copy) {
  PyObject* c = capsule.ptr();
  if (PyCapsule_IsValid(c, CapsuleNames<DLManagedTensorVersioned>::fresh))
    return import_managed<DLManagedTensorVersioned>(c, force_copy, allow_copy);
  if (PyCapsule_IsValid(c, CapsuleNames<DLManagedTensor>::fresh))
    return import_managed<DLManagedTensor>(c, force_copy, allow_copy);
  if (PyCapsule_IsValid(c, CapsuleNames<DLManagedTensor>::used) ||
      PyCapsule_IsValid(c, CapsuleNames<DLManagedTensorVersioned>::used))
    throw py::value_error("from_dlpack: this DLPack capsule was already consumed (a capsule can be imported once)");
  throw py::type_error("from_dlpack: expected a DLPack capsule named 'dltensor' or 'dltensor_versioned', got " +
                       repr_of(capsule));
}

}  // namespace

void bind_dlpack(py::module_& m) {
  auto cls = tensor_class(m);
  cls.def("__dlpack__", &dlpack, py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none(),
          "Exports the tensor as a DLPack capsule sharing its memory (the array API's __dlpack__).\n\n"
          "max_version >= (1, 0) gives a 'dltensor_versioned' capsule (a tensor that requires grad is\n"
          "flagged read-only there and refused by the legacy 'dltensor' capsule); copy=True exports a\n"
          "copy; stream must be None and dl_device (1, 0) or None (the CPU).");
  cls.def("__dlpack_device__", [](const Tensor&) { return py::make_tuple(int(kDLCPU), 0); },
          "The DLPack device of the data: (1, 0), the CPU.");
  m.def("_from_dlpack_capsule", &from_dlpack_capsule, py::arg("capsule"), py::arg("force_copy") = false,
        py::arg("allow_copy") = true,
        "Wraps a DLPack capsule's memory as a Tensor (consumes the capsule); see nablagrad.from_dlpack.");
}

}  // namespace bindings
}  // namespace nablagrad
