"""DLPack: Tensor.__dlpack__ / __dlpack_device__ and ng.from_dlpack, zero-copy with NumPy and
PyTorch, lifetimes, strides, read-only data, zero-size tensors, dtypes and leaks."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import _core


def _torch():
    return pytest.importorskip("torch")


# ----------------------------------------------------------------------------- NumPy -> nablagrad
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_from_numpy_round_trip_every_dtype(dtype):
    a = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    t = ng.from_dlpack(a)
    assert t.shape == (3, 4)
    assert t.dtype == ng._tensor._resolve_dtype(dtype)
    assert t._data_ptr() == a.ctypes.data  # zero-copy
    np.testing.assert_array_equal(np.asarray(t), a)


def test_numpy_writes_are_seen_by_the_tensor_and_back():
    a = np.zeros((2, 3), np.float32)
    t = ng.from_dlpack(a)
    a[1, 2] = 5.0
    assert t[1, 2].item() == 5.0
    t[0, 0] = -1.0  # a write through nablagrad lands in the NumPy array
    assert a[0, 0] == -1.0


def test_tensor_to_numpy_shares_memory_both_ways():
    t = ng.zeros(4, dtype=ng.float64)
    b = np.from_dlpack(t)
    assert b.dtype == np.float64 and b.flags.writeable
    b[2] = 7.0
    assert t[2].item() == 7.0
    t[0] = 3.0
    assert b[0] == 3.0
    assert np.shares_memory(b, np.asarray(t))


def test_full_round_trip_is_one_buffer():
    a = np.arange(6.0)
    back = np.from_dlpack(ng.from_dlpack(a))
    assert np.shares_memory(a, back)
    back[0] = 42.0
    assert a[0] == 42.0


def test_dlpack_device_is_cpu():
    assert ng.zeros(2).__dlpack_device__() == (1, 0)


# ----------------------------------------------------------------------------- capsules and keywords
def test_legacy_and_versioned_capsules():
    t = ng.ones(3)
    legacy = t.__dlpack__()
    versioned = t.__dlpack__(max_version=(1, 0))
    assert "dltensor" in repr(legacy) and "versioned" not in repr(legacy)
    assert "dltensor_versioned" in repr(versioned)
    # both import, and each capsule can be consumed once
    for cap in (legacy, versioned):
        u = ng.from_dlpack(cap)
        assert u._data_ptr() == t._data_ptr()
        with pytest.raises(ValueError, match="already consumed"):
            ng.from_dlpack(cap)
    # an unconsumed capsule releases its reference when it dies (no leak, no crash)
    t.__dlpack__(max_version=(1, 0))
    t.__dlpack__()
    gc.collect()


def test_dlpack_keywords():
    t = ng.arange(4.0)
    with pytest.raises(ValueError, match="stream must be None"):
        t.__dlpack__(stream=1)
    with pytest.raises(BufferError, match="device"):
        t.__dlpack__(dl_device=(2, 0))
    u = ng.from_dlpack(t.__dlpack__(dl_device=(1, 0), copy=False))
    assert u._data_ptr() == t._data_ptr()
    c = ng.from_dlpack(t.__dlpack__(max_version=(1, 0), copy=True))
    assert c._data_ptr() != t._data_ptr()
    np.testing.assert_array_equal(np.asarray(c), np.asarray(t))
    with pytest.raises(TypeError):
        t.__dlpack__(None)  # keywords only, as the array API


def test_from_dlpack_copy_argument():
    a = np.arange(5.0)
    assert ng.from_dlpack(a, copy=False)._data_ptr() == a.ctypes.data
    c = ng.from_dlpack(a, copy=True)
    assert c._data_ptr() != a.ctypes.data
    a[0] = 9.0
    assert c[0].item() == 0.0
    assert ng.from_dlpack(a, device="cpu")._data_ptr() == a.ctypes.data
    with pytest.raises(ValueError, match="device"):
        ng.from_dlpack(a, device="cuda")


def test_from_dlpack_rejects_non_producers():
    with pytest.raises(TypeError, match="__dlpack__"):
        ng.from_dlpack([1.0, 2.0])


class _LegacyProducer:
    """A producer from before the max_version/copy keywords (as old libraries are)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class _GpuProducer(_LegacyProducer):
    def __dlpack_device__(self):
        return (2, 0)


def test_legacy_producer_and_copy_fallback():
    a = np.arange(3.0)
    assert ng.from_dlpack(_LegacyProducer(a))._data_ptr() == a.ctypes.data
    c = ng.from_dlpack(_LegacyProducer(a), copy=True)  # the producer cannot copy: we do
    assert c._data_ptr() != a.ctypes.data
    np.testing.assert_array_equal(np.asarray(c), a)


def test_device_the_cpu_cannot_read_is_a_buffer_error():
    with pytest.raises(BufferError, match="CUDA"):
        ng.from_dlpack(_GpuProducer(np.zeros(2)))


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("make", [
    lambda a: a[:, ::2],            # non-contiguous columns
    lambda a: a.T,                  # transposed
    lambda a: a[::-1, 1:],          # negative stride
    lambda a: a[1:2, ::-3],         # a single row, negative stride
    lambda a: a[:, 1],              # 1-d strided
    lambda a: a[2, 3, ...],         # 0-d
])
def test_strided_numpy_views_are_shared_not_copied(make):
    base = np.arange(30.0).reshape(5, 6)
    view = make(base)
    t = ng.from_dlpack(view)
    np.testing.assert_array_equal(np.asarray(t), view)
    if view.size > 1:
        assert not t.is_contiguous() or view.flags.c_contiguous
    base += 100.0  # a write through the base array is seen through the tensor: shared memory
    np.testing.assert_array_equal(np.asarray(t), view)
    assert (t.sum().item() == pytest.approx(float(view.sum())))


def test_strided_tensor_views_export_their_strides():
    t = ng.arange(24.0).reshape(4, 6)
    for view in (t.T, t[:, ::2], t[::-1], t[1:3, ::-2]):
        b = np.from_dlpack(view)
        np.testing.assert_array_equal(b, np.asarray(view.contiguous()))
        assert np.shares_memory(b, np.asarray(t))


def test_zero_size():
    for shape in [(0,), (3, 0), (0, 4, 2)]:
        a = np.zeros(shape, np.float32)
        t = ng.from_dlpack(a)
        assert t.shape == shape and t.dtype == ng.float32
        b = np.from_dlpack(ng.zeros(shape))
        assert b.shape == shape and b.dtype == np.float32


def test_unaligned_data_is_copied():
    raw = np.zeros(8 * 4 + 1, np.uint8)
    a = raw[1:].view(np.float64)  # misaligned float64 array (NumPy allows it)
    assert not a.flags.aligned
    a[:] = np.arange(4.0)
    t = ng.from_dlpack(a)
    np.testing.assert_array_equal(np.asarray(t), np.arange(4.0))
    assert t._data_ptr() != a.ctypes.data  # copied: the kernels need aligned data
    with pytest.raises(BufferError, match="aligned"):
        ng.from_dlpack(a, copy=False)


# ----------------------------------------------------------------------------- read-only
def test_read_only_numpy_array_is_copied_not_made_writable():
    a = np.arange(4.0)
    a.flags.writeable = False
    t = ng.from_dlpack(a)
    assert t._data_ptr() != a.ctypes.data
    t[0] = 99.0  # writing the tensor must not change the read-only array
    assert a[0] == 0.0
    with pytest.raises(BufferError, match="read-only"):
        ng.from_dlpack(a, copy=False)


def test_tensor_that_requires_grad_exports_read_only_as_numpy_does():
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    b = np.from_dlpack(w)  # NumPy asks for a versioned capsule: the READ_ONLY flag
    assert not b.flags.writeable
    assert np.shares_memory(b, np.asarray(w.detach()))
    with pytest.raises(BufferError, match="requires grad"):
        w.__dlpack__()  # a legacy capsule cannot say read-only
    assert np.from_dlpack(w.detach()).flags.writeable
    c = ng.from_dlpack(w)  # our own import of a read-only capsule copies
    assert c._data_ptr() != w._data_ptr() and not c.requires_grad
    np.testing.assert_array_equal(np.asarray(c), [1.0, 2.0])
    legacy_copy = ng.from_dlpack(w.__dlpack__(copy=True))
    assert legacy_copy._data_ptr() != w._data_ptr()


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,name", [(np.float16, "float16"), (np.complex64, "complex64"),
                                        (np.int32, "int32"), (np.uint8, "uint8")])
def test_unsupported_dtype_is_a_type_error_naming_it(dtype, name):
    a = np.zeros(3, dtype)
    with pytest.raises(TypeError, match=name):
        ng.from_dlpack(a)
    # the refused capsule is released (the array can be collected)
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None


def test_foreign_capsule_is_a_type_error():
    import ctypes

    make = ctypes.pythonapi.PyCapsule_New
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    cap = make(ctypes.c_void_p(1), b"something_else", None)
    with pytest.raises(TypeError, match="DLPack capsule"):
        _core._from_dlpack_capsule(cap)


# ----------------------------------------------------------------------------- lifetimes and leaks
def test_producer_outlives_its_deletion_while_the_tensor_holds_it():
    a = np.arange(1000.0)
    ref = weakref.ref(a)
    t = ng.from_dlpack(a)
    view = t[10:20]
    del a, t
    gc.collect()
    assert ref() is not None  # kept alive by the tensor's storage
    np.testing.assert_array_equal(np.asarray(view), np.arange(10.0, 20.0))
    del view
    gc.collect()
    assert ref() is None  # released with the last view


def test_exported_memory_outlives_the_tensor():
    a = np.arange(8.0)
    ref = weakref.ref(a)
    t = ng.from_numpy(a)  # storage owned by `a`, so `ref` tells when the storage dies
    b = np.from_dlpack(t)
    del a, t
    gc.collect()
    assert ref() is not None
    np.testing.assert_array_equal(b, np.arange(8.0))
    del b
    gc.collect()
    assert ref() is None


def test_unconsumed_capsule_releases_the_storage():
    a = np.arange(8.0)
    ref = weakref.ref(a)
    t = ng.from_numpy(a)
    cap = t.__dlpack__(max_version=(1, 0))
    del a, t
    gc.collect()
    assert ref() is not None
    del cap
    gc.collect()
    assert ref() is None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_no_leak_over_many_round_trips():
    pytest.importorskip("resource")
    if "asan" in os.environ.get("LD_PRELOAD", ""):  # tests/test_python_asan.py
        pytest.skip("RSS bound: ASan's quarantine keeps freed blocks resident; the plain suite runs this")
    n = 1 << 18  # 2 MiB of float64 per round trip; a leak would add ~600 MiB
    for _ in range(5):  # warm up the allocator and NumPy's caches
        np.from_dlpack(ng.from_dlpack(np.ones(n)))
    gc.collect()
    before = _rss_bytes()
    for i in range(300):
        a = np.full(n, float(i))
        t = ng.from_dlpack(a)
        b = np.from_dlpack(t)
        c = ng.from_dlpack(ng.ones(n // 4) + 1.0)  # nablagrad-owned storage through a capsule
        assert b[0] == float(i) and c[0].item() == 2.0
        del a, t, b, c
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB over 300 round trips"
    before_table = _core._identity_table_size()
    for _ in range(50):
        np.from_dlpack(ng.from_dlpack(np.ones(3)))
    gc.collect()
    assert _core._identity_table_size() <= before_table


# ----------------------------------------------------------------------------- PyTorch
def test_torch_round_trip_shares_memory_both_ways():
    torch = _torch()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = ng.from_dlpack(x)
    assert t._data_ptr() == x.data_ptr()
    x[0, 0] = 10.0
    assert t[0, 0].item() == 10.0
    y = torch.from_dlpack(ng.zeros(3, dtype=ng.float64))
    assert y.dtype == torch.float64
    u = ng.arange(4.0)
    v = torch.from_dlpack(u)
    assert v.data_ptr() == u._data_ptr()
    v[1] = -5.0
    assert u[1].item() == -5.0
    u[2] = 8.0
    assert v[2].item() == 8.0


@pytest.mark.parametrize("tdtype,ndtype", [("float32", ng.float32), ("float64", ng.float64),
                                           ("int64", ng.int64), ("bool", ng.bool)])
def test_torch_dtypes(tdtype, ndtype):
    torch = _torch()
    x = (torch.arange(6) % 2).to(getattr(torch, tdtype))
    t = ng.from_dlpack(x)
    assert t.dtype == ndtype
    np.testing.assert_array_equal(np.asarray(t), x.numpy())
    back = torch.from_dlpack(t)
    assert back.dtype == x.dtype and torch.equal(back, x)


def test_torch_strided_and_unsupported():
    torch = _torch()
    x = torch.arange(24.0).reshape(4, 6)
    t = ng.from_dlpack(x.t()[::2])
    np.testing.assert_array_equal(np.asarray(t), x.t()[::2].numpy())
    assert t._data_ptr() == x.data_ptr()
    with pytest.raises(TypeError, match="float16"):
        ng.from_dlpack(torch.zeros(2, dtype=torch.float16))
    with pytest.raises(TypeError, match="bfloat16"):
        ng.from_dlpack(torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="complex64"):
        ng.from_dlpack(torch.zeros(2, dtype=torch.complex64))
    v = torch.from_dlpack(ng.arange(12.0).reshape(3, 4).T)
    assert v.shape == (4, 3) and v.stride() == (1, 4)


def test_torch_lifetime():
    torch = _torch()
    x = torch.arange(100.0)
    t = ng.from_dlpack(x)
    del x
    gc.collect()
    assert t[99].item() == 99.0  # torch's storage lives while the tensor does
    u = ng.arange(50.0)
    v = torch.from_dlpack(u)
    del u
    gc.collect()
    assert v[49].item() == 49.0


def test_torch_requires_grad_tensor_exports_read_only_copy_on_our_side():
    torch = _torch()
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    # torch asks for a versioned capsule (max_version (1, 0)) and ignores the READ_ONLY flag, so
    # a write through torch would bypass autograd as it would through w.detach().numpy().
    v = torch.from_dlpack(w)
    assert v.tolist() == [1.0, 2.0]
