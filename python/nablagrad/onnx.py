"""ONNX export: ``ng.onnx.export(model, example_input, path)``.

The model's ``forward`` runs once on ``example_input`` while a tracer records what happens:

* a call of a built-in layer (``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``, ...) becomes that
  layer's ONNX nodes (the layer is not looked into);
* every other ``Module`` (``Sequential``, user Modules) runs its Python ``forward``, whose
  functional ops (``F.relu``, ``F.conv2d``, ...), Tensor methods (``reshape``, ``sum``,
  indexing, ...) and operators (``+ * @ < ...``) are recorded one by one.

A value is *traced* when it depends on an input; an op whose operands are all untraced
(parameters, constants made in ``forward``) runs as usual and its result enters the graph as
a constant (an initializer). The graph has the example's shapes (reshapes keep the numbers
they saw), or with ``dynamic_batch=True`` a symbolic batch axis. The model is exported in
inference mode, as ``torch.onnx.export`` does: every module is switched to ``eval()`` while
tracing and its mode is restored afterwards.

Layouts: nablagrad's NHWC images stay NHWC at the graph's boundary; ONNX's Conv, MaxPool,
AveragePool and BatchNormalization want NCHW, so the graph transposes into NCHW before them and
back to NHWC only where an op needs NHWC (a Flatten, a Linear, a graph output), not between
consecutive convolutions, pools, normalisations and activations. Initializers have PyTorch's
layouts and names (``conv.weight`` is ``(Q, C, FH, FW)``, ``fc.weight`` ``(out, in)``), except
the recurrent layers, whose weights ONNX wants gate-reordered (``LSTM`` i, o, f, c; ``GRU`` z, r,
h with ``linear_before_reset=1``).

Anything the tracer cannot express raises ``NotImplementedError`` naming the op or layer
(for example a loss function, an in-place change of a traced tensor, or ``.item()`` /
``.numpy()`` of a traced tensor, whose value the graph could not follow).

``onnx`` (and ``onnxruntime`` to run the result) are an optional extra:
``pip install nablagrad[onnx]``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._tensor import Tensor, bool_, float32, float64, int64, no_grad

__all__ = ["export", "DEFAULT_OPSET", "supported_layers", "supported_ops"]

DEFAULT_OPSET = 18
_MIN_OPSET = 17  # LayerNormalization
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _import_onnx() -> Any:
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as e:  # (tests: test_missing_onnx_gives_a_clear_import_error)
        raise ImportError(
            "ng.onnx.export needs the 'onnx' package: pip install nablagrad[onnx] "
            f"(or pip install onnx onnxruntime); import failed with: {e}") from e
    return onnx


_NP_OF = {float32: np.float32, float64: np.float64, int64: np.int64, bool_: np.bool_}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _Val:
    """A traced value: its ONNX name in nablagrad's layout (``nat``) and/or, for a 4-D value,
    in NCHW (``nchw``: the NHWC tensor transposed by (0, 3, 1, 2))."""

    __slots__ = ("nat", "nchw")

    def __init__(self, nat: Optional[str] = None, nchw: Optional[str] = None) -> None:
        self.nat, self.nchw = nat, nchw


class _Tracer:
    def __init__(self, onnx: Any, opset: int, param_names: Dict[int, str]) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.opset = opset
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.values: Dict[int, _Val] = {}
        self.consts: Dict[Tuple[int, str], str] = {}
        self.keep: List[Any] = []  # keeps every traced/captured object alive, so ids stay unique
        self.param_names = param_names
        self.used_names: set = set()
        self.suspended = 0

    # ------------------------------------------------------------------ names and nodes
    def fresh(self, hint: str) -> str:
        hint = hint or "v"
        name, i = hint, 0
        while name in self.used_names:
            i += 1
            name = f"{hint}_{i}"
        self.used_names.add(name)
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, hint: Optional[str] = None,
             **attrs: Any) -> Any:
        outs = [self.fresh(f"/{hint or op.lower()}") for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outs, name=self.fresh("n_" + op), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, arr: Any, hint: str = "const", plain: bool = False) -> str:
        """An initializer; internal names start with "/" (as node outputs do), so only parameter
        names (``plain``) can meet the graph's input/output names."""
        arr = np.asarray(arr)
        if arr.dtype == np.int32 or arr.dtype == np.uint64 or arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        name = self.fresh(hint if plain else "/" + hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def scalar(self, v: Any, dt: Any) -> str:
        return self.const(np.asarray(v, dtype=_NP_OF[dt]), "scalar")

    # ------------------------------------------------------------------ values
    def is_dyn(self, t: Any) -> bool:
        return isinstance(t, Tensor) and id(t) in self.values

    def any_dyn(self, obj: Any) -> bool:
        if isinstance(obj, Tensor):
            return id(obj) in self.values
        if isinstance(obj, (list, tuple)):
            return any(self.any_dyn(o) for o in obj)
        if isinstance(obj, dict):
            return any(self.any_dyn(o) for o in obj.values())
        return False

    def set(self, t: Tensor, nat: Optional[str] = None, nchw: Optional[str] = None) -> None:
        self.keep.append(t)
        self.values[id(t)] = _Val(nat, nchw)

    def alias(self, out: Tensor, src: Tensor) -> None:
        if out is src:
            return
        v = self.values[id(src)]
        self.set(out, v.nat, v.nchw)

    def tensor_const(self, t: Tensor, transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                     tag: str = "", hint: Optional[str] = None) -> str:
        """An untraced tensor as an initializer (cached per tensor and transform tag)."""
        key = (id(t), tag)
        if key not in self.consts:
            self.keep.append(t)
            arr = np.array(_ORIG["__array__"](t), copy=True)
            if transform is not None:
                arr = transform(arr)
            name = hint or self.param_names.get(id(t))
            self.consts[key] = self.const(arr, name or "const", plain=name is not None)
        return self.consts[key]

    def nat(self, t: Any, dt: Any = None) -> str:
        """``t`` in nablagrad's layout: a traced tensor, an untraced tensor, a NumPy array or a
        Python number (numbers and arrays take dtype ``dt``)."""
        if isinstance(t, Tensor):
            v = self.values.get(id(t))
            if v is None:
                name = self.tensor_const(t)
                return self.cast(name, t.dtype, dt) if dt is not None else name
            if v.nat is None:
                assert v.nchw is not None
                v.nat = self.node("Transpose", [v.nchw], perm=[0, 2, 3, 1], hint="nhwc")
            return self.cast(v.nat, t.dtype, dt) if dt is not None else v.nat
        if dt is None:
            raise TypeError(f"ng.onnx: cannot place a {type(t).__name__} in the graph without a dtype")
        return self.const(np.asarray(t, dtype=_NP_OF[dt]), "const")

    def nchw(self, t: Tensor) -> str:
        v = self.values.get(id(t))
        if v is None:
            return self.tensor_const(t, lambda a: np.transpose(a, (0, 3, 1, 2)), "nchw")
        if v.nchw is None:
            v.nchw = self.node("Transpose", [self.nat(t)], perm=[0, 3, 1, 2], hint="nchw")
        return v.nchw

    def cast(self, name: str, src: Any, dst: Any) -> str:
        if dst is None or src == dst:
            return name
        return self.node("Cast", [name], to=_ONNX_DTYPE[dst])

    def param(self, t: Tensor, transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
              tag: str = "", hint: Optional[str] = None) -> str:
        """A layer's parameter: untraced -> initializer; traced (unusual) -> its value."""
        if self.is_dyn(t):
            if transform is not None:
                raise NotImplementedError("ng.onnx.export: a layer parameter computed from the input")
            return self.nat(t)
        return self.tensor_const(t, transform, tag, hint)

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [x, self.ints(axes, "axes")], keepdims=int(keepdims))
        return self.node(op, [x], axes=list(axes), keepdims=int(keepdims))


_ONNX_DTYPE: Dict[Any, int] = {}
_TRACER: Optional[_Tracer] = None
_ORIG: Dict[str, Any] = {}


# ======================================================================================
# Converters of functional ops / Tensor methods: conv(tr, out, *args, **kwargs)
# ======================================================================================
def _unary_layout(tr: _Tracer, out: Tensor, x: Tensor, build: Callable[[str], str]) -> None:
    """An elementwise op that keeps whichever layout its input already has."""
    v = tr.values[id(x)]
    if v.nat is None and v.nchw is not None:
        tr.set(out, nchw=build(v.nchw))
    else:
        tr.set(out, nat=build(tr.nat(x)))


def _simple(op: str, **attrs: Any) -> Callable[..., None]:
    def conv(tr: _Tracer, out: Tensor, x: Tensor, *_: Any, **__: Any) -> None:
        _unary_layout(tr, out, x, lambda n: tr.node(op, [tr.cast(n, x.dtype, out.dtype)], **attrs))
    return conv


def _gelu_nodes(tr: _Tracer, n: str, dt: Any, tanh_approx: bool) -> str:
    if tr.opset >= 20:
        return tr.node("Gelu", [n], approximate="tanh" if tanh_approx else "none")
    if tanh_approx:
        x3 = tr.node("Mul", [tr.node("Mul", [n, n]), n])
        inner = tr.node("Add", [n, tr.node("Mul", [x3, tr.scalar(0.044715, dt)])])
        t = tr.node("Tanh", [tr.node("Mul", [inner, tr.scalar(math.sqrt(2.0 / math.pi), dt)])])
    else:
        t = tr.node("Erf", [tr.node("Div", [n, tr.scalar(math.sqrt(2.0), dt)])])
    one_plus = tr.node("Add", [t, tr.scalar(1.0, dt)])
    return tr.node("Mul", [tr.node("Mul", [n, one_plus]), tr.scalar(0.5, dt)], hint="gelu")


def _conv_gelu(tr: _Tracer, out: Tensor, x: Tensor, tanh_approximation: bool = False) -> None:
    _unary_layout(tr, out, x, lambda n: _gelu_nodes(tr, n, x.dtype, bool(tanh_approximation)))


def _conv_leaky(tr: _Tracer, out: Tensor, x: Tensor, slope: float = 0.01) -> None:
    _unary_layout(tr, out, x, lambda n: tr.node("LeakyRelu", [n], alpha=float(slope)))


def _conv_clip(tr: _Tracer, out: Tensor, x: Tensor, lo: Any = None, hi: Any = None) -> None:
    def build(n: str) -> str:
        ins = [n, "" if lo is None else tr.scalar(lo, out.dtype), "" if hi is None else tr.scalar(hi, out.dtype)]
        while ins[-1] == "":
            ins.pop()
        return tr.node("Clip", ins)
    _unary_layout(tr, out, x, build)


def _conv_identity(tr: _Tracer, out: Tensor, x: Tensor, *_: Any, **__: Any) -> None:
    tr.alias(out, x)


def _conv_astype(tr: _Tracer, out: Tensor, x: Tensor, *_: Any, **__: Any) -> None:
    _unary_layout(tr, out, x, lambda n: tr.cast(n, x.dtype, out.dtype) if x.dtype != out.dtype
                  else tr.node("Identity", [n]))


def _scalar_like(o: Any) -> bool:
    if isinstance(o, (numbers.Number, np.generic)):
        return True
    if isinstance(o, np.ndarray):
        return o.size == 1 and o.ndim == 0
    return False


def _binary(op: str, reverse: bool = False) -> Callable[..., None]:
    def conv(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
        if reverse:
            a, b = b, a
        dt = out.dtype
        # x <op> scalar on an NCHW-held value stays NCHW
        for dyn, other, first in ((a, b, True), (b, a, False)):
            if isinstance(dyn, Tensor) and tr.is_dyn(dyn) and _scalar_like(other):
                v = tr.values[id(dyn)]
                if v.nat is None and v.nchw is not None:
                    s = tr.scalar(other, dt)
                    xn = tr.cast(v.nchw, dyn.dtype, dt)
                    tr.set(out, nchw=tr.node(op, [xn, s] if first else [s, xn]))
                    return
        tr.set(out, nat=tr.node(op, [tr.nat(a, dt), tr.nat(b, dt)]))
    return conv


def _promoted(*operands: Any) -> Any:
    tensors = [o for o in operands if isinstance(o, Tensor)]
    if any(t.dtype == float64 for t in tensors):
        return float64
    if any(t.dtype == float32 for t in tensors):
        return float32
    others = [o for o in operands if not isinstance(o, Tensor)]
    if any(isinstance(o, float) or (isinstance(o, np.ndarray) and o.dtype.kind == "f") for o in others):
        return float32
    if all(t.dtype == bool_ for t in tensors) and all(isinstance(o, (bool, np.bool_)) for o in others):
        return bool_
    return int64


def _compare(op: str, negate: bool = False) -> Callable[..., None]:
    def conv(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
        dt = _promoted(a, b)
        if dt == bool_ and op in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
            dt = int64
        r = tr.node(op, [tr.nat(a, dt), tr.nat(b, dt)])
        tr.set(out, nat=tr.node("Not", [r]) if negate else r)
    return conv


def _conv_pow(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
    tr.set(out, nat=tr.node("Pow", [tr.nat(a, out.dtype), tr.nat(b, out.dtype)]))


def _conv_rpow(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
    _conv_pow(tr, out, b, a)


def _conv_matmul(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
    tr.set(out, nat=tr.node("MatMul", [tr.nat(a, out.dtype), tr.nat(b, out.dtype)]))


def _conv_rmatmul(tr: _Tracer, out: Tensor, a: Any, b: Any) -> None:
    _conv_matmul(tr, out, b, a)


def _conv_where(tr: _Tracer, out: Tensor, cond: Any, a: Any, b: Any) -> None:
    c = tr.nat(cond, bool_)
    tr.set(out, nat=tr.node("Where", [c, tr.nat(a, out.dtype), tr.nat(b, out.dtype)]))


def _axes_of(axis: Any, ndim: int) -> List[int]:
    if axis is None:
        return list(range(ndim))
    if _is_int(axis):
        return [int(axis) % ndim] if ndim else []
    return sorted(int(a) % ndim for a in axis)


def _reduction(op: str) -> Callable[..., None]:
    def conv(tr: _Tracer, out: Tensor, x: Tensor, axis: Any = None, keepdims: bool = False) -> None:
        if x.ndim == 0:
            tr.set(out, nat=tr.node("Identity", [tr.nat(x, out.dtype)]))
            return
        n = tr.nat(x, out.dtype)
        r = tr.reduce(op, n, _axes_of(axis, x.ndim), bool(keepdims))
        if tuple(out.shape) != _onnx_reduced_shape(x.shape, _axes_of(axis, x.ndim), bool(keepdims)):
            r = tr.node("Reshape", [r, tr.ints(out.shape)])
        tr.set(out, nat=r)
    return conv


def _onnx_reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> Tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _conv_reshape(tr: _Tracer, out: Tensor, x: Tensor, *_: Any, **__: Any) -> None:
    """reshape, view, flatten, squeeze, unsqueeze: static shapes make them all one Reshape."""
    if tuple(out.shape) == tuple(x.shape):
        tr.alias(out, x)
        return
    tr.set(out, nat=tr.node("Reshape", [tr.nat(x), tr.ints(out.shape)]))


def _conv_expand(tr: _Tracer, out: Tensor, x: Tensor, *_: Any, **__: Any) -> None:
    tr.set(out, nat=tr.node("Expand", [tr.nat(x), tr.ints(out.shape)]))


def _perm_args(dims: Tuple[Any, ...]) -> List[int]:
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    return [int(d) for d in dims]


def _transpose_nodes(tr: _Tracer, out: Tensor, x: Tensor, perm: List[int]) -> None:
    nd = x.ndim
    perm = [p % nd for p in perm] if nd else []
    v = tr.values[id(x)]
    if v.nat is None and v.nchw is not None and nd == 4:
        # compose with the NCHW holding: nat = nchw.transpose(0,2,3,1)
        base = [0, 2, 3, 1]
        tr.set(out, nat=tr.node("Transpose", [v.nchw], perm=[base[p] for p in perm]))
        return
    tr.set(out, nat=tr.node("Transpose", [tr.nat(x)], perm=perm))


def _conv_transpose(tr: _Tracer, out: Tensor, x: Tensor, a: int, b: int) -> None:
    perm = list(range(x.ndim))
    a, b = int(a) % x.ndim, int(b) % x.ndim
    perm[a], perm[b] = perm[b], perm[a]
    _transpose_nodes(tr, out, x, perm)


def _conv_permute(tr: _Tracer, out: Tensor, x: Tensor, *dims: Any) -> None:
    _transpose_nodes(tr, out, x, _perm_args(dims))


def _conv_concat(tr: _Tracer, out: Tensor, tensors: Sequence[Any], axis: int = 0) -> None:
    ax = int(axis) % out.ndim
    tr.set(out, nat=tr.node("Concat", [tr.nat(t, out.dtype) for t in tensors], axis=ax))


def _conv_stack(tr: _Tracer, out: Tensor, tensors: Sequence[Any], axis: int = 0) -> None:
    ax = int(axis) % out.ndim
    parts = [tr.node("Unsqueeze", [tr.nat(t, out.dtype), tr.ints([ax], "axes")]) for t in tensors]
    tr.set(out, nat=tr.node("Concat", parts, axis=ax))


def _conv_softmax(op: str) -> Callable[..., None]:
    def conv(tr: _Tracer, out: Tensor, x: Tensor, axis: int = -1) -> None:
        tr.set(out, nat=tr.node(op, [tr.nat(x)], axis=int(axis) % max(x.ndim, 1)))
    return conv


def _linear_nodes(tr: _Tracer, x: Any, weight: Any, bias: Any, ndim: int, dt: Any) -> str:
    """x @ W.T + b with W (out, in) kept in PyTorch's layout (Gemm transB=1 for 2-D x)."""
    xn = tr.nat(x) if isinstance(x, Tensor) else x
    w = tr.param(weight) if isinstance(weight, Tensor) else tr.nat(weight, dt)
    b = None if bias is None else (tr.param(bias) if isinstance(bias, Tensor) else tr.nat(bias, dt))
    if ndim == 2:
        return tr.node("Gemm", [xn, w] + ([b] if b is not None else []), transB=1, hint="gemm")
    wt = tr.node("Transpose", [w], perm=[1, 0], hint="weight_t")
    y = tr.node("MatMul", [xn, wt])
    return tr.node("Add", [y, b]) if b is not None else y


def _conv_linear(tr: _Tracer, out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> None:
    tr.set(out, nat=_linear_nodes(tr, x, weight, bias, x.ndim, out.dtype))


def _layer_norm_nodes(tr: _Tracer, x: Tensor, shape: Sequence[int], weight: Optional[Tensor],
                      bias: Optional[Tensor], eps: float) -> str:
    shape = [int(s) for s in shape]
    np_dt = _NP_OF[x.dtype]
    w = tr.param(weight) if weight is not None else tr.const(np.ones(shape, np_dt), "ln_ones")
    ins = [tr.nat(x), w]
    if bias is not None:
        ins.append(tr.param(bias))
    return tr.node("LayerNormalization", ins, axis=-len(shape), epsilon=float(eps), hint="layer_norm")


def _conv_layer_norm(tr: _Tracer, out: Tensor, x: Tensor, normalized_shape: Sequence[int],
                     weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5) -> None:
    tr.set(out, nat=_layer_norm_nodes(tr, x, normalized_shape, weight, bias, eps))


def _conv_nodes(tr: _Tracer, x: Tensor, weight: Any, bias: Any, stride: Tuple[int, int],
                pads: Tuple[int, int, int, int]) -> str:
    """NCHW Conv; ``pads`` = (top, bottom, left, right). Returns the NCHW result."""
    if tr.is_dyn(weight):
        w = tr.node("Transpose", [tr.nat(weight)], perm=[0, 3, 1, 2])
    else:
        w = tr.tensor_const(weight, lambda a: np.transpose(a, (0, 3, 1, 2)), "nchw")
    ins = [tr.nchw(x), w]
    if bias is not None:
        ins.append(tr.param(bias) if isinstance(bias, Tensor) else tr.nat(bias, x.dtype))
    fh, fw = int(weight.shape[1]), int(weight.shape[2])
    pt, pb, pl, pr = pads
    return tr.node("Conv", ins, kernel_shape=[fh, fw], strides=list(stride), pads=[pt, pl, pb, pr],
                   dilations=[1, 1], group=1, hint="conv")


def _conv_conv2d(tr: _Tracer, out: Tensor, x: Tensor, weight: Tensor, bias: Any, sh: int, sw: int,
                 pt: int, pb: int, pl: int, pr: int) -> None:
    tr.set(out, nchw=_conv_nodes(tr, x, weight, bias, (int(sh), int(sw)), (int(pt), int(pb), int(pl), int(pr))))


def _pool_nodes(tr: _Tracer, x: Tensor, op: str, k: Tuple[int, int], s: Tuple[int, int], p: Tuple[int, int],
                **attrs: Any) -> str:
    return tr.node(op, [tr.nchw(x)], kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]],
                   **attrs)


def _conv_max_pool(tr: _Tracer, out: Tensor, x: Tensor, kh: int, kw: int, sh: int, sw: int, ph: int,
                   pw: int) -> None:
    tr.set(out, nchw=_pool_nodes(tr, x, "MaxPool", (kh, kw), (sh, sw), (ph, pw)))


def _conv_avg_pool(tr: _Tracer, out: Tensor, x: Tensor, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
                   count_include_pad: bool = True) -> None:
    tr.set(out, nchw=_pool_nodes(tr, x, "AveragePool", (kh, kw), (sh, sw), (ph, pw),
                                 count_include_pad=int(bool(count_include_pad))))


def _additive_mask(tr: _Tracer, mask: Any, dt: Any, true_means_masked: bool, shape: Optional[Sequence[int]] = None
                   ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """A mask as an additive float mask: (numpy constant, None) or (None, graph name)."""
    if mask is None:
        return None, None
    np_dt = _NP_OF[dt]
    if not tr.is_dyn(mask):
        arr = np.asarray(_ORIG["__array__"](mask)) if isinstance(mask, Tensor) else np.asarray(mask)
        if arr.dtype == np.bool_:
            blocked = arr if true_means_masked else ~arr
            arr = np.where(blocked, -np.inf, 0.0)
        arr = arr.astype(np_dt)
        return (arr.reshape(shape) if shape is not None else arr), None
    n = tr.nat(mask)
    if mask.dtype == bool_:
        ninf, zero = tr.scalar(-np.inf, dt), tr.scalar(0.0, dt)
        n = tr.node("Where", [n, ninf, zero] if true_means_masked else [n, zero, ninf], hint="mask")
    else:
        n = tr.cast(n, mask.dtype, dt)
    if shape is not None:
        n = tr.node("Reshape", [n, tr.ints(shape)])
    return None, n


def _attention_core(tr: _Tracer, q: str, kt: str, v: str, masks: List[Tuple[Optional[np.ndarray], Optional[str]]],
                    scale: float, dt: Any, zero_fully_masked: bool) -> Tuple[str, str]:
    """softmax(q @ kt * scale + masks) @ v; returns (output, probabilities)."""
    scores = tr.node("Mul", [tr.node("MatMul", [q, kt]), tr.scalar(scale, dt)], hint="scores")
    consts = [m for m, _ in masks if m is not None]
    if consts:
        total = consts[0]
        for m in consts[1:]:
            total = total + m
        scores = tr.node("Add", [scores, tr.const(total.astype(_NP_OF[dt]), "attn_mask")])
    for _, n in masks:
        if n is not None:
            scores = tr.node("Add", [scores, n])
    p = tr.node("Softmax", [scores], axis=-1, hint="attn")
    has_mask = bool(masks)
    if has_mask and zero_fully_masked:  # a query with no allowed key: zero attention, as nablagrad
        p = tr.node("Where", [tr.node("IsNaN", [p]), tr.scalar(0.0, dt), p], hint="attn")
    return tr.node("MatMul", [p, v], hint="attn_out"), p


def _causal(L: int, S: int, dt: Any) -> np.ndarray:
    allowed = np.tril(np.ones((L, S), dtype=bool))
    return np.where(allowed, 0.0, -np.inf).astype(_NP_OF[dt])


def _conv_sdpa(tr: _Tracer, out: Any, q: Tensor, k: Tensor, v: Tensor, attn_mask: Any = None,
               is_causal: bool = False, dropout_p: float = 0.0, scale: Optional[float] = None,
               need_weights: bool = False) -> None:
    if dropout_p and float(dropout_p) > 0.0:
        raise NotImplementedError("ng.onnx.export: scaled_dot_product_attention with dropout_p > 0 (random)")
    dt = q.dtype
    d = int(q.shape[-1])
    L, S = int(q.shape[-2]), int(k.shape[-2])
    perm = list(range(k.ndim))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt = tr.node("Transpose", [tr.nat(k)], perm=perm)
    masks = []
    if attn_mask is not None:
        masks.append(_additive_mask(tr, attn_mask, dt, true_means_masked=False))
    elif is_causal:
        masks.append((_causal(L, S, dt), None))
    sc = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    o, p = _attention_core(tr, tr.nat(q), kt, tr.nat(v), masks, sc, dt, zero_fully_masked=True)
    if need_weights:
        tr.set(out[0], nat=o)
        tr.set(out[1], nat=p)
    else:
        tr.set(out, nat=o)


def _conv_getitem(tr: _Tracer, out: Tensor, x: Tensor, index: Any) -> None:
    idx = index if isinstance(index, tuple) else (index,)
    basic = all(_is_int(i) or isinstance(i, slice) or i is None or i is Ellipsis for i in idx)
    if tr.is_dyn(x) and basic:
        consumed = sum(1 for i in idx if _is_int(i) or isinstance(i, slice))
        full: List[Any] = []
        for i in idx:
            if i is Ellipsis:
                full.extend([slice(None)] * (x.ndim - consumed))
            elif i is not None:
                full.append(i)
        full.extend([slice(None)] * (x.ndim - len(full)))
        starts, ends, axes, steps = [], [], [], []
        for ax, (i, dim) in enumerate(zip(full, x.shape)):
            # Python's own start/stop values (ONNX's Slice clamps them the same way), not this
            # shape's resolved ones, so the graph holds for another batch size too
            if _is_int(i):
                st = int(i)
                starts.append(st)
                ends.append(st + 1 if st != -1 else _INT64_MAX)
                axes.append(ax)
                steps.append(1)
            elif not (isinstance(i, slice) and i == slice(None)):
                stp = 1 if i.step is None else int(i.step)
                if stp == 0:
                    raise ValueError("slice step cannot be zero")
                lo, hi = (0, _INT64_MAX) if stp > 0 else (_INT64_MAX, _INT64_MIN)
                starts.append(lo if i.start is None else int(i.start))
                ends.append(hi if i.stop is None else int(i.stop))
                axes.append(ax)
                steps.append(stp)
        n = tr.nat(x)
        if axes:
            n = tr.node("Slice", [n, tr.ints(starts, "starts"), tr.ints(ends, "ends"), tr.ints(axes, "axes"),
                                  tr.ints(steps, "steps")])
        n = tr.node("Reshape", [n, tr.ints(out.shape)]) if axes or tuple(out.shape) != tuple(x.shape) else n
        if n == tr.values[id(x)].nat:
            n = tr.node("Identity", [n])
        tr.set(out, nat=n)
        return
    # one integer index array (traced or constant) with full slices elsewhere: Gather on that axis
    arrays = [k for k, i in enumerate(idx) if _is_index_array(i)]
    others = [i for k, i in enumerate(idx) if k not in arrays]
    if len(arrays) == 1 and sum(i is Ellipsis for i in others) <= 1 and \
            all(i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in others):
        k = arrays[0]
        ell = [j for j, i in enumerate(idx) if i is Ellipsis]
        axis = k if not ell or ell[0] > k else x.ndim - (len(idx) - k)
        i = idx[k]
        ind = tr.nat(i, int64) if isinstance(i, Tensor) else tr.const(np.asarray(i, dtype=np.int64), "indices")
        tr.set(out, nat=tr.node("Gather", [tr.nat(x), ind], axis=int(axis)))
        return
    if any(isinstance(i, Tensor) and tr.is_dyn(i) for i in idx):
        raise NotImplementedError(
            f"ng.onnx.export: Tensor.__getitem__ with a traced index tensor supports one index tensor with "
            f"full slices elsewhere, got index {index!r}")
    # constant advanced indexing on a traced tensor: gather flat positions computed now
    npidx = tuple(np.asarray(_ORIG["__array__"](i)) if isinstance(i, Tensor) else i for i in idx)
    positions = np.arange(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64).reshape(x.shape)[npidx]
    flat = tr.node("Reshape", [tr.nat(x), tr.ints([-1])])
    tr.set(out, nat=tr.node("Gather", [flat, tr.const(np.asarray(positions, dtype=np.int64), "indices")], axis=0))


def _is_index_array(i: Any) -> bool:
    """An integer index array: an int64 Tensor, an integer ndarray or a list of ints."""
    if isinstance(i, Tensor):
        return i.dtype == int64
    if isinstance(i, np.ndarray):
        return i.dtype.kind in "iu"
    return isinstance(i, list) and bool(i) and all(_is_int(v) for v in i)


def _unsupported(name: str, why: str = "") -> Callable[..., None]:
    def conv(*_: Any, **__: Any) -> None:
        raise NotImplementedError(f"ng.onnx.export: op '{name}' is not supported" + (f" ({why})" if why else ""))
    return conv


_SIMPLE_UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "tanh": "Tanh", "sigmoid": "Sigmoid",
                 "relu": "Relu", "neg": "Neg"}

# _core functions
_CORE_CONV: Dict[str, Callable[..., None]] = {
    **{k: _simple(v) for k, v in _SIMPLE_UNARY.items()},
    "leaky_relu": _conv_leaky, "gelu": _conv_gelu, "clip": _conv_clip, "pow": _conv_pow, "where": _conv_where,
    "sum": _reduction("ReduceSum"), "mean": _reduction("ReduceMean"), "max": _reduction("ReduceMax"),
    "min": _reduction("ReduceMin"), "matmul": _conv_matmul,
    "reshape": _conv_reshape, "flatten": _conv_reshape, "squeeze": _conv_reshape, "unsqueeze": _conv_reshape,
    "transpose": _conv_transpose, "permute": _conv_permute, "expand": _conv_expand, "broadcast_to": _conv_expand,
    "contiguous": _conv_identity, "concatenate": _conv_concat, "stack": _conv_stack,
    "softmax": _conv_softmax("Softmax"), "log_softmax": _conv_softmax("LogSoftmax"), "linear": _conv_linear,
    "layer_norm": _conv_layer_norm, "conv2d": _conv_conv2d, "max_pool2d": _conv_max_pool,
    "avg_pool2d": _conv_avg_pool, "scaled_dot_product_attention": _conv_sdpa,
    "dropout": _unsupported("dropout", "dropout in training mode is random: pass training=False or call eval()"),
}

# Tensor methods and operators
_METHOD_CONV: Dict[str, Callable[..., None]] = {
    **{k: _simple(v) for k, v in _SIMPLE_UNARY.items()},
    "clip": _conv_clip, "sum": _reduction("ReduceSum"), "mean": _reduction("ReduceMean"),
    "max": _reduction("ReduceMax"), "min": _reduction("ReduceMin"),
    "reshape": _conv_reshape, "view": _conv_reshape, "flatten": _conv_reshape, "squeeze": _conv_reshape,
    "unsqueeze": _conv_reshape, "transpose": _conv_transpose, "permute": _conv_permute, "expand": _conv_expand,
    "contiguous": _conv_identity, "detach": _conv_identity, "astype": _conv_astype,
    "__add__": _binary("Add"), "__radd__": _binary("Add", True), "__sub__": _binary("Sub"),
    "__rsub__": _binary("Sub", True), "__mul__": _binary("Mul"), "__rmul__": _binary("Mul", True),
    "__truediv__": _binary("Div"), "__rtruediv__": _binary("Div", True), "__pow__": _conv_pow,
    "__rpow__": _conv_rpow, "__matmul__": _conv_matmul, "__rmatmul__": _conv_rmatmul,
    "__neg__": _simple("Neg"), "__pos__": _conv_identity, "__abs__": _simple("Abs"),
    "__lt__": _compare("Less"), "__le__": _compare("LessOrEqual"), "__gt__": _compare("Greater"),
    "__ge__": _compare("GreaterOrEqual"), "__eq__": _compare("Equal"), "__ne__": _compare("Equal", negate=True),
    "__getitem__": _conv_getitem,
}

# Tensor members that never touch values (pass through untouched)
_METHOD_PASS = {"numel", "is_contiguous", "__len__", "__repr__", "__str__", "__iter__", "__init__", "__new__",
                "__hash__", "__getattribute__", "__setattr__", "__delattr__", "__dir__", "__init_subclass__",
                "__reduce__", "__reduce_ex__", "__sizeof__", "__subclasshook__", "__format__", "__class__",
                "_version", "_data_ptr", "_same_storage", "__dlpack_device__", "__array_priority__", "__module__",
                "__doc__", "__dict__", "__weakref__", "__getstate__", "__setstate__", "__copy__", "__deepcopy__"}

_WHY_VALUE = "it reads a traced tensor's values into Python/NumPy, which the graph cannot follow"
_WHY_INPLACE = "in-place change of a traced tensor; use the out-of-place op"


# ======================================================================================
# Layer converters: conv(tr, module, out, bound_arguments)
# ======================================================================================
def _apply_activation(tr: _Tracer, out: Tensor, act: Optional[str], build_pre: Callable[[], Tuple[str, str]],
                      dt: Any) -> None:
    kind, name = build_pre()  # kind: "nat" or "nchw"
    if act is None:
        pass
    elif act in ("relu", "sigmoid", "tanh"):
        name = tr.node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[act], [name])
    elif act == "gelu":
        name = _gelu_nodes(tr, name, dt, False)
    elif act == "softmax":
        if kind == "nchw":
            name = tr.node("Softmax", [name], axis=1)
        else:
            name = tr.node("Softmax", [name], axis=-1)
    else:
        raise NotImplementedError(f"ng.onnx.export: activation {act!r} is not supported")
    if kind == "nchw":
        tr.set(out, nchw=name)
    else:
        tr.set(out, nat=name)


def _layer_linear(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    x = a["x"]
    _apply_activation(tr, out, m.activation,
                      lambda: ("nat", _linear_nodes(tr, x, m.weight, m.bias, x.ndim, out.dtype)), out.dtype)


def _conv_pads(layer: Any, fh: int, fw: int) -> Tuple[int, int, int, int]:
    p = layer.padding
    if isinstance(p, str):
        if p == "valid":
            return 0, 0, 0, 0
        return (fh - 1) // 2, fh - 1 - (fh - 1) // 2, (fw - 1) // 2, fw - 1 - (fw - 1) // 2
    ph, pw = _pair(p)
    return ph, ph, pw, pw


def _layer_conv(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    x = a["x"]
    lay = m._layer
    fh, fw = _pair(lay.kernel_size)
    pads = _conv_pads(lay, fh, fw)
    _apply_activation(tr, out, m.activation,
                      lambda: ("nchw", _conv_nodes(tr, x, m.weight, m.bias, _pair(lay.stride), pads)), out.dtype)


def _layer_max_pool(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    lay = m._layer
    tr.set(out, nchw=_pool_nodes(tr, a["x"], "MaxPool", _pair(lay.kernel_size), _pair(lay.stride),
                                 _pair(lay.padding)))


def _layer_avg_pool(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    lay = m._layer
    tr.set(out, nchw=_pool_nodes(tr, a["x"], "AveragePool", _pair(lay.kernel_size), _pair(lay.stride),
                                 _pair(lay.padding), count_include_pad=int(bool(lay.count_include_pad))))


def _layer_flatten(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    _conv_reshape(tr, out, a["x"])


def _layer_dropout(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    if m.training and m.p > 0.0:  # not reached: export runs in eval mode
        raise NotImplementedError("ng.onnx.export: Dropout in training mode")
    tr.alias(out, a["x"])


def _layer_layer_norm(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    tr.set(out, nat=_layer_norm_nodes(tr, a["x"], m.normalized_shape, m.weight, m.bias, m.eps))


def _layer_batch_norm(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    x = a["x"]
    dt = x.dtype
    np_dt = _NP_OF[dt]
    C = int(x.shape[-1])
    w = tr.param(m.weight) if m.weight is not None else tr.const(np.ones(C, np_dt), "bn_ones")
    b = tr.param(m.bias) if m.bias is not None else tr.const(np.zeros(C, np_dt), "bn_zeros")
    if m.running_mean is not None and not m.training:
        y = tr.node("BatchNormalization", [tr.nchw(x), w, b, tr.param(m.running_mean), tr.param(m.running_var)],
                    epsilon=float(m.eps), hint="batch_norm")
        tr.set(out, nchw=y)
        return
    # batch statistics (track_running_stats=False): normalise each channel over (N, H, W)
    xn = tr.nat(x)
    mean = tr.reduce("ReduceMean", xn, [0, 1, 2], True)
    centred = tr.node("Sub", [xn, mean])
    var = tr.reduce("ReduceMean", tr.node("Mul", [centred, centred]), [0, 1, 2], True)
    denom = tr.node("Sqrt", [tr.node("Add", [var, tr.scalar(m.eps, dt)])])
    y = tr.node("Add", [tr.node("Mul", [tr.node("Div", [centred, denom]), w]), b], hint="batch_norm")
    tr.set(out, nat=y)


def _layer_embedding(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    tr.set(out, nat=tr.node("Gather", [tr.param(m.weight), tr.nat(a["x"], int64)], axis=0, hint="embedding"))


def _layer_act(op: str) -> Callable[..., None]:
    def conv(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
        _unary_layout(tr, out, a["x"], lambda n: tr.node(op, [n]))
    return conv


def _layer_gelu(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    _conv_gelu(tr, out, a["x"], m.approximate == "tanh")


def _layer_leaky(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    _conv_leaky(tr, out, a["x"], m.negative_slope)


def _layer_softmax(tr: _Tracer, m: Any, out: Tensor, a: Dict[str, Any]) -> None:
    _conv_softmax("Softmax")(tr, out, a["x"], m.dim)


# PyTorch gate blocks -> ONNX gate blocks
_GATE_ORDER = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}


def _layer_recurrent(kind: str) -> Callable[..., None]:
    def conv(tr: _Tracer, m: Any, out: Any, a: Dict[str, Any]) -> None:
        x = a["x"]
        N, T, _ = (int(s) for s in x.shape)
        H, L = int(m.hidden_size), int(m.num_layers)
        order = _GATE_ORDER[kind]
        G = len(order)
        dt = x.dtype

        def regate(arr: np.ndarray) -> np.ndarray:
            blocks = np.split(arr, G, axis=0)
            return np.concatenate([blocks[i] for i in order], axis=0)[None]

        state = a.get("hx") if kind == "LSTM" else a.get("h0")
        h0, c0 = (state if state is not None else (None, None)) if kind == "LSTM" else (state, None)

        def initial(t: Optional[Tensor], k: int) -> str:
            if t is None:
                return ""
            if not tr.is_dyn(t):
                return tr.const(np.asarray(_ORIG["__array__"](t))[k:k + 1].astype(_NP_OF[dt]), "initial_state")
            return tr.node("Slice", [tr.nat(t, dt), tr.ints([k], "starts"), tr.ints([k + 1], "ends"),
                                     tr.ints([0], "axes")], hint="initial_state")

        seq = tr.node("Transpose", [tr.nat(x)], perm=[1, 0, 2], hint="time_major")
        hs, cs = [], []
        prefix = tr.param_names.get(id(m.weight_ih_l0), "rnn.weight_ih_l0").rsplit(".", 1)[0]
        prefix = prefix + "." if prefix != "weight_ih_l0" else ""
        for k in range(L):
            W = tr.param(getattr(m, f"weight_ih_l{k}"), regate, "onnx_gates", f"{prefix}W_l{k}")
            R = tr.param(getattr(m, f"weight_hh_l{k}"), regate, "onnx_gates", f"{prefix}R_l{k}")
            ins = [seq, W, R]
            if m.bias:
                bi = np.asarray(_ORIG["__array__"](getattr(m, f"bias_ih_l{k}")))
                bh = np.asarray(_ORIG["__array__"](getattr(m, f"bias_hh_l{k}")))
                both = np.concatenate([regate(bi)[0], regate(bh)[0]])[None]
                ins.append(tr.const(both, f"{prefix}B_l{k}", plain=True))
            else:
                ins.append("")
            ins += ["", initial(h0, k)]
            attrs: Dict[str, Any] = {"hidden_size": H}
            if kind == "LSTM":
                ins.append(initial(c0, k))
                n_out = 3
            else:
                n_out = 2
            if kind == "RNN":
                attrs["activations"] = ["Relu" if m.nonlinearity == "relu" else "Tanh"]
            if kind == "GRU":
                attrs["linear_before_reset"] = 1
            while ins and ins[-1] == "":
                ins.pop()
            outs = tr.node(kind, ins, n_out=n_out, hint=kind.lower(), **attrs)
            seq = tr.node("Squeeze", [outs[0], tr.ints([1], "axes")], hint="seq")
            hs.append(outs[1])
            if kind == "LSTM":
                cs.append(outs[2])
        output = tr.node("Transpose", [seq], perm=[1, 0, 2], hint="output")
        h_n = hs[0] if L == 1 else tr.node("Concat", hs, axis=0, hint="h_n")
        if kind == "LSTM":
            c_n = cs[0] if L == 1 else tr.node("Concat", cs, axis=0, hint="c_n")
            tr.set(out[0], nat=output)
            tr.set(out[1][0], nat=h_n)
            tr.set(out[1][1], nat=c_n)
        else:
            tr.set(out[0], nat=output)
            tr.set(out[1], nat=h_n)
    return conv


def _layer_mha(tr: _Tracer, m: Any, out: Any, a: Dict[str, Any]) -> None:
    query, key, value = a["query"], a["key"], a["value"]
    kpm, attn_mask = a.get("key_padding_mask"), a.get("attn_mask")
    need_weights, is_causal = bool(a.get("need_weights", True)), bool(a.get("is_causal", False))
    if m.training and m.dropout > 0.0:  # not reached: export runs in eval mode
        raise NotImplementedError("ng.onnx.export: MultiheadAttention dropout in training mode")
    dt = query.dtype
    N, L, E = (int(s) for s in query.shape)
    S = int(key.shape[1])
    Hh = int(m.num_heads)
    d = E // Hh

    def proj(x: Tensor, lin: Any) -> str:
        return _linear_nodes(tr, x, lin.weight, lin.bias, 3, dt)

    q = tr.node("Transpose", [tr.node("Reshape", [proj(query, m.q_proj), tr.ints([N, L, Hh, d])])],
                perm=[0, 2, 1, 3], hint="q_heads")
    kt = tr.node("Transpose", [tr.node("Reshape", [proj(key, m.k_proj), tr.ints([N, S, Hh, d])])],
                 perm=[0, 2, 3, 1], hint="k_heads_t")
    v = tr.node("Transpose", [tr.node("Reshape", [proj(value, m.v_proj), tr.ints([N, S, Hh, d])])],
                perm=[0, 2, 1, 3], hint="v_heads")
    masks = []
    if attn_mask is not None:
        shape = [N, Hh, L, S] if attn_mask.ndim == 3 else None
        masks.append(_additive_mask(tr, attn_mask, dt, True, shape))
    elif is_causal:
        masks.append((_causal(L, S, dt), None))
    if kpm is not None:
        masks.append(_additive_mask(tr, kpm, dt, True, [N, 1, 1, S]))
    o, p = _attention_core(tr, q, kt, v, masks, 1.0 / math.sqrt(d), dt, zero_fully_masked=not need_weights)
    o = tr.node("Reshape", [tr.node("Transpose", [o], perm=[0, 2, 1, 3]), tr.ints([N, L, E])], hint="attn_concat")
    res = _linear_nodes(tr, o, m.out_proj.weight, m.out_proj.bias, 3, dt)
    tr.set(out[0], nat=res)
    if need_weights and out[1] is not None:
        tr.set(out[1], nat=tr.reduce("ReduceMean", p, [1], False))


def _layer_table() -> Dict[type, Callable[..., None]]:
    from . import nn
    return {
        nn.Linear: _layer_linear, nn.Conv2d: _layer_conv, nn.MaxPool2d: _layer_max_pool,
        nn.AvgPool2d: _layer_avg_pool, nn.Flatten: _layer_flatten, nn.Dropout: _layer_dropout,
        nn.LayerNorm: _layer_layer_norm, nn.BatchNorm2d: _layer_batch_norm, nn.Embedding: _layer_embedding,
        nn.ReLU: _layer_act("Relu"), nn.Sigmoid: _layer_act("Sigmoid"), nn.Tanh: _layer_act("Tanh"),
        nn.GELU: _layer_gelu, nn.Softmax: _layer_softmax, nn.LeakyReLU: _layer_leaky,
        nn.RNN: _layer_recurrent("RNN"), nn.LSTM: _layer_recurrent("LSTM"), nn.GRU: _layer_recurrent("GRU"),
        nn.MultiheadAttention: _layer_mha,
    }


def supported_layers() -> List[str]:
    """Names of the built-in layers the exporter converts."""
    return sorted(c.__name__ for c in _layer_table())


def supported_ops() -> Dict[str, List[str]]:
    """The functional ops (``F.*`` / ``ng.*``) and Tensor methods the tracer records."""
    return {"functional": sorted(k for k, v in _CORE_CONV.items() if k != "dropout"),
            "tensor": sorted(_METHOD_CONV)}


# ======================================================================================
# Patching
# ======================================================================================
def _wrap_op(name: str, orig: Callable[..., Any], conv: Optional[Callable[..., None]], kind: str,
             why: str = "") -> Callable[..., Any]:
    label = f"Tensor.{name}" if kind == "method" else name

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tr = _TRACER
        if tr is None or tr.suspended or not (tr.any_dyn(args) or tr.any_dyn(kwargs)):
            return orig(*args, **kwargs)
        if conv is None:
            raise NotImplementedError(
                f"ng.onnx.export: op '{label}' is not supported on traced tensors" + (f" ({why})" if why else ""))
        tr.suspended += 1
        try:
            out = orig(*args, **kwargs)
            if out is NotImplemented:
                return out
            conv(tr, out, *args, **kwargs)
        finally:
            tr.suspended -= 1
        return out

    wrapper.__name__ = getattr(orig, "__name__", name)
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    return wrapper


def _layer_forward_wrapper(orig_forward: Callable[..., Any], table: Dict[type, Callable[..., None]]
                           ) -> Callable[..., Any]:
    """Replaces a built-in layer's ``forward`` while tracing: ``m(x)``, ``m.forward(x)`` and a
    subclass's ``super().forward(x)`` all become the layer's ONNX nodes."""
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        tr = _TRACER
        if tr is None or tr.suspended or not (tr.any_dyn(args) or tr.any_dyn(kwargs)):
            return orig_forward(self, *args, **kwargs)
        cls = next((c for c in type(self).__mro__ if c in table), None)
        if cls is None:
            raise NotImplementedError(f"ng.onnx.export: layer '{type(self).__name__}' is not supported")
        bound = inspect.signature(orig_forward).bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        tr.suspended += 1
        try:
            out = orig_forward(self, *args, **kwargs)
            table[cls](tr, self, out, arguments)
        finally:
            tr.suspended -= 1
        return out
    return forward


class _Patch:
    """Installs the tracing wrappers on entry and restores every original on exit."""

    def __init__(self) -> None:
        self.saved: List[Tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> "_Patch":
        from .nn.layers import _CoreModule
        try:
            _ORIG["__array__"] = Tensor.__dict__["__array__"]
            for name in dir(_core):
                obj = getattr(_core, name)
                if name.startswith("_") or isinstance(obj, type) or not callable(obj):
                    continue
                self.set(_core, name, _wrap_op(name, obj, _CORE_CONV.get(name), "function"))
            for name, attr in list(Tensor.__dict__.items()):
                if name in _METHOD_PASS or isinstance(attr, (property, type, staticmethod, classmethod)) \
                        or not callable(attr):
                    continue
                conv = _METHOD_CONV.get(name)
                if conv is None and name.startswith("__") and name not in (
                        "__array__", "__bool__", "__float__", "__int__", "__index__", "__setitem__",
                        "__dlpack__", "__iadd__", "__isub__", "__imul__", "__itruediv__"):
                    continue
                inplace = name.endswith("_") and not name.startswith("__") or name == "__setitem__" \
                    or name in ("__iadd__", "__isub__", "__imul__", "__itruediv__")
                why = _WHY_INPLACE if inplace else _WHY_VALUE
                self.set(Tensor, name, _wrap_op(name, attr, conv, "method", why))
            table = _layer_table()
            for cls in [_CoreModule] + [c for c in table if "forward" in c.__dict__]:
                self.set(cls, "forward", _layer_forward_wrapper(cls.__dict__["forward"], table))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()


def _flatten_outputs(obj: Any, acc: List[Tensor]) -> None:
    if obj is None:
        return
    if isinstance(obj, Tensor):
        acc.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flatten_outputs(o, acc)
    elif isinstance(obj, dict):
        for k in obj:
            _flatten_outputs(obj[k], acc)
    else:
        raise TypeError(f"ng.onnx.export: the model returned a {type(obj).__name__}; outputs must be Tensors "
                        "(or tuples, lists, dicts of Tensors)")


def _trace(onnx: Any, model: Any, inputs: List[Tensor], input_names: List[str],
           output_names: Optional[List[str]], opset: int, param_names: Dict[int, str]
           ) -> Tuple[_Tracer, List[Tensor], List[str], List[Tensor]]:
    """One trace of ``model`` on ``inputs``: the tracer (nodes, initializers), the graph's input
    tensors, the output names and the output tensors."""
    global _TRACER
    from ._tensor import tensor as _tensor

    tr = _Tracer(onnx, opset, param_names)
    # graph inputs are new tensor objects, so an input that is also used elsewhere (or twice) is traced by identity
    traced_inputs = [_tensor(t) for t in inputs]
    for t, n in zip(traced_inputs, input_names):
        tr.used_names.add(n)
        tr.set(t, nat=n)
    _TRACER = tr
    try:
        with _Patch(), no_grad():
            result = model(*traced_inputs)
    finally:
        _TRACER = None

    outs: List[Tensor] = []
    _flatten_outputs(result, outs)
    if not outs:
        raise ValueError("ng.onnx.export: the model returned no tensors")
    if output_names is None:
        output_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    output_names = [str(n) for n in output_names]
    if len(output_names) != len(outs) or len(set(output_names) | set(input_names)) != len(output_names) + len(
            input_names):
        raise ValueError(f"ng.onnx.export: {len(outs)} outputs but output_names={output_names!r} "
                         f"(names must be distinct from each other and from the inputs)")
    for t, n in zip(outs, output_names):
        if n in tr.used_names:
            raise ValueError(f"ng.onnx.export: output name {n!r} is already a name in the graph; pass output_names")
        tr.used_names.add(n)
        src = tr.nat(t)
        tr.nodes.append(onnx.helper.make_node("Identity", [src], [n], name=tr.fresh("n_output")))
    return tr, traced_inputs, output_names, outs


def _batch_dependent(onnx: Any, traces: List[Tuple[_Tracer, List[Tensor], List[str], List[Tensor]]],
                     batches: List[int], batch_input: str) -> Tuple[List[Any], List[Any], List[List[Any]]]:
    """Compares traces at batch sizes N, N+1, N+2 and turns every integer constant that moves
    with the batch size (reshape shapes, ...) into ``a * batch + b`` computed from the input's
    shape. Returns (nodes, initializers, output dims with "batch" or None where they vary)."""
    nh = onnx.numpy_helper
    base = traces[0][0]
    where = "ng.onnx.export(dynamic_batch=True)"
    for tr, *_ in traces[1:]:
        same = len(tr.nodes) == len(base.nodes) and all(
            a.SerializeToString() == b.SerializeToString() for a, b in zip(tr.nodes, base.nodes))
        if not same or [i.name for i in tr.inits] != [i.name for i in base.inits]:
            raise NotImplementedError(f"{where}: the traced graph changes with the batch size (the forward "
                                      "branches on a shape); export with a fixed batch instead")
    consumers: Dict[str, List[str]] = {}
    for n in base.nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    prefix: List[Any] = []
    inits: List[Any] = []
    batch = None
    N0, N1 = batches[0], batches[1]
    for k, init in enumerate(base.inits):
        arrs = [nh.to_array(tr.inits[k]) for tr, *_ in traces]
        if all(a.shape == arrs[0].shape and np.array_equal(a, arrs[0]) for a in arrs[1:]):
            inits.append(init)
            continue
        affine = all(a.shape == arrs[0].shape for a in arrs) and arrs[0].dtype == np.int64 and arrs[0].ndim == 1
        if affine:
            d = arrs[1] - arrs[0]
            affine = np.array_equal(arrs[2] - arrs[1], d * (batches[2] - N1) // (N1 - N0))
        if not affine:
            raise NotImplementedError(
                f"{where}: the constant {init.name!r} (used by {', '.join(consumers.get(init.name, ['?']))}) depends "
                f"on the batch size: shape {arrs[0].shape} at batch {N0}, {arrs[1].shape} at batch {N1}; "
                "pass such tensors as inputs, or export with a fixed batch")
        a = d // (N1 - N0)
        b = arrs[0] - a * N0
        if batch is None:
            batch = base.fresh("/batch")
            prefix.append(onnx.helper.make_node("Shape", [batch_input], [batch], start=0, end=1,
                                                name=base.fresh("n_Shape")))
        scaled = base.fresh(init.name + "_scaled")
        a_name, b_name = base.fresh(init.name + "_a"), base.fresh(init.name + "_b")
        inits += [nh.from_array(a.astype(np.int64), a_name), nh.from_array(b.astype(np.int64), b_name)]
        prefix.append(onnx.helper.make_node("Mul", [batch, a_name], [scaled], name=base.fresh("n_Mul")))
        prefix.append(onnx.helper.make_node("Add", [scaled, b_name], [init.name], name=base.fresh("n_Add")))
    out_dims: List[List[Any]] = []
    for j, t in enumerate(traces[0][3]):
        dims: List[Any] = []
        for axis, n0 in enumerate(t.shape):
            ns = [tr_[3][j].shape[axis] for tr_ in traces]
            if all(n == n0 for n in ns):
                dims.append(int(n0))
            else:
                dims.append("batch" if ns == batches else None)
        out_dims.append(dims)
    return prefix + list(base.nodes), inits, out_dims


def export(model: Any, example_input: Any, path: Union[str, "os.PathLike[str]", None] = None, *,
           input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
           opset_version: int = DEFAULT_OPSET, dynamic_batch: bool = False, check: bool = True) -> Any:
    """Exports ``model`` as an ONNX graph traced on ``example_input`` and returns the ``onnx.ModelProto``.

    Args:
        model: an ``ng.nn.Module`` (built-in layer, ``Sequential`` or a user Module whose forward uses
            the built-in layers, the functional ops and Tensor methods/operators) or a plain callable.
        example_input: a Tensor (or NumPy array), or a tuple/list of them for a model with several
            inputs (passed positionally). The graph's inputs and all shapes are fixed to these.
        path: where to write the ``.onnx`` file (None: only return the model).
        input_names: the graph's input names (default ``input``, numbered ``input_0, input_1, ...``
            when there are several).
        output_names: the graph's output names (default ``output``, numbered likewise).
        opset_version: ONNX opset (17 or newer; default 18).
        dynamic_batch: make axis 0 of every input (the batch) a symbolic dimension ``batch``. The model
            is traced at three batch sizes (N, N+1, N+2, the extra rows copies of the first); shape
            constants that move with the batch are computed from the input's shape in the graph.
            A constant that depends on the batch otherwise (a constant mask of shape (N, S), say), or a
            forward that branches on the batch size, raises NotImplementedError naming it.
        check: run ``onnx.checker.check_model`` (with shape inference) on the result.

    Raises:
        ImportError: the ``onnx`` package is missing (``pip install nablagrad[onnx]``).
        NotImplementedError: the forward uses an op or layer the exporter cannot express; the message
            names it (a loss, ``.item()``/``.numpy()`` of a traced tensor, an in-place change of one).
        RuntimeError: an export is already running (tracing patches process-wide state: one at a time).

    The model runs in eval mode during the trace (its training flags are restored afterwards) and
    without recording gradients.
    """
    onnx = _import_onnx()
    if not _ONNX_DTYPE:
        tp = onnx.TensorProto
        _ONNX_DTYPE.update({float32: tp.FLOAT, float64: tp.DOUBLE, int64: tp.INT64, bool_: tp.BOOL})
    if not _is_int(opset_version) or int(opset_version) < _MIN_OPSET:
        raise ValueError(f"ng.onnx.export: opset_version must be an int >= {_MIN_OPSET}, got {opset_version!r}")
    if _TRACER is not None:
        raise RuntimeError("ng.onnx.export: another export is running (one at a time)")

    from ._tensor import tensor as _tensor
    from .nn.module import Module

    inputs = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    inputs = [t if isinstance(t, Tensor) else _tensor(np.asarray(t)) for t in inputs]
    if not inputs:
        raise ValueError("ng.onnx.export: example_input is empty")
    if input_names is None:
        input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    input_names = [str(n) for n in input_names]
    if len(input_names) != len(inputs) or len(set(input_names)) != len(input_names):
        raise ValueError(f"ng.onnx.export: {len(inputs)} inputs but input_names={input_names!r}")

    param_names: Dict[int, str] = {}
    modes: List[Tuple[Any, bool]] = []
    if isinstance(model, Module):
        for n, p in model.named_parameters():
            param_names.setdefault(id(p), n)
        for n, b in model.named_buffers():
            param_names.setdefault(id(b), n)
        modes = [(m, bool(m.training)) for m in model.modules()]

    batches = [int(inputs[0].shape[0])] if dynamic_batch and inputs[0].ndim else []
    if dynamic_batch:
        if any(t.ndim == 0 or t.shape[0] != batches[0] for t in inputs):
            raise ValueError(f"ng.onnx.export: dynamic_batch=True needs every input to have the batch on axis 0, "
                             f"got shapes {[tuple(t.shape) for t in inputs]}")
        batches += [batches[0] + 1, batches[0] + 2]
    try:
        if isinstance(model, Module):
            model.eval()
        traces = [_trace(onnx, model, inputs, input_names, output_names, int(opset_version), param_names)]
        for extra in batches[1:]:
            grown = [_tensor(np.concatenate([np.asarray(t), np.repeat(np.asarray(t)[:1], extra - batches[0], 0)]))
                     for t in inputs]
            try:
                traces.append(_trace(onnx, model, grown, input_names, traces[0][2], int(opset_version),
                                     param_names))
            except (ValueError, TypeError, IndexError) as e:
                raise NotImplementedError(
                    f"ng.onnx.export(dynamic_batch=True): the model fails at batch size {extra} (it was traced at "
                    f"{batches[0]}; something in it depends on the batch size): {e}") from e
    finally:
        for m, flag in modes:
            m._set_training_flag(flag)

    tr, traced_inputs, output_names, outs = traces[0]
    helper = onnx.helper
    if dynamic_batch:
        nodes, inits, out_dims = _batch_dependent(onnx, traces, batches, input_names[0])
        in_dims: List[List[Any]] = [["batch"] + [int(d) for d in t.shape[1:]] for t in traced_inputs]
    else:
        nodes, inits = tr.nodes, tr.inits
        out_dims = [[int(d) for d in t.shape] for t in outs]
        in_dims = [[int(d) for d in t.shape] for t in traced_inputs]
    graph_inputs = [helper.make_tensor_value_info(n, _ONNX_DTYPE[t.dtype], d)
                    for t, n, d in zip(traced_inputs, input_names, in_dims)]
    graph_outputs = [helper.make_tensor_value_info(n, _ONNX_DTYPE[t.dtype], d)
                     for t, n, d in zip(outs, output_names, out_dims)]
    graph = helper.make_graph(nodes, type(model).__name__, graph_inputs, graph_outputs, initializer=inits)
    from . import __version__
    mp = helper.make_model(graph, producer_name="nablagrad", producer_version=__version__,
                           opset_imports=[helper.make_opsetid("", int(opset_version))])
    mp.ir_version = min(mp.ir_version, 10)  # readable by older runtimes too (opset <= 21 needs IR <= 10)
    if check:
        onnx.checker.check_model(mp, full_check=True)
    if path is not None:
        onnx.save_model(mp, os.fspath(path))
    return mp
