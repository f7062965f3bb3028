"""``Module``, ``Parameter`` and the containers (``Sequential``, ``ModuleList``).

A ``Module`` registers the ``Parameter``s, buffers and sub-modules assigned to its
attributes, as PyTorch's does, and walks them in PyTorch's order (a module's own tensors,
then its children's, depth first, each tensor once even when shared)::

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8, activation="relu")
            self.fc2 = nn.Linear(8, 2)
            self.scale = nn.Parameter(ng.ones(2))

        def forward(self, x):
            return self.fc2(self.fc1(x)) * self.scale

Built-in layers (``nn.Linear`` and friends, in ``layers.py``) are thin wrappers over the C++
layers of ``_core.nn``: their parameters are ``Parameter`` objects wrapping the C++ layer's own
tensors, so an update made from Python (an optimizer step, ``copy_``, ``load_state_dict``) is
what the C++ forward reads, with no copies.
"""

from __future__ import annotations

import collections
import itertools
import operator
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Set, Tuple,
                    TypeVar, Union, cast, overload)

from .. import _core
from .._tensor import Tensor, _resolve_dtype, float32, float64, no_grad

__all__ = ["Parameter", "Module", "Sequential", "ModuleList"]

_M = TypeVar("_M", bound="Module")


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as a parameter: ``Parameter(t)`` shares ``t``'s data
    (no copy) as a new leaf that requires grad (as ``torch.nn.Parameter``)."""

    def __init__(self, data: Optional[Tensor] = None, requires_grad: bool = True) -> None:
        if data is None:
            data = _core.empty((0,), float32)
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter expects a Tensor, got {type(data).__name__}")
        super().__init__(data)
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _wrap(cls, t: Tensor) -> "Parameter":
        """The Parameter of ``t``'s own TensorImpl (a C++ layer's tensor): same data, same
        ``.grad`` slot, and from now on the object Python sees whenever C++ returns ``t``."""
        if type(t) is cls:
            return t
        obj = Tensor.__new__(cls)
        Tensor.__init__(obj, t, _share_impl=True)
        return obj

    def __repr__(self) -> str:
        return "Parameter containing:\n" + Tensor.__repr__(self)

    __str__ = __repr__


class _IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _addindent(s: str, n: int) -> str:
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * n + line for line in lines[1:])


def _check_name(kind: str, name: Any, owner: "Module") -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
    if name == "":
        raise KeyError(f'{kind} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{kind} name can\'t contain ".", got {name!r}')
    d = owner.__dict__
    if "_parameters" not in d:
        raise AttributeError(f"cannot assign {kind} before Module.__init__() call")
    taken = (name in d) or (hasattr(type(owner), name) and not isinstance(getattr(type(owner), name), property))
    if taken and name not in d["_parameters"] and name not in d["_buffers"] and name not in d["_modules"]:
        raise KeyError(f"attribute {name!r} already exists")


class Module:
    """Base class of every layer and model. Subclasses call ``super().__init__()`` first, assign
    ``Parameter``s and sub-modules as attributes, and define ``forward``."""

    training: bool
    _parameters: Dict[str, Optional[Parameter]]
    _buffers: Dict[str, Optional[Tensor]]
    _modules: Dict[str, Optional["Module"]]

    def __init__(self) -> None:
        d = self.__dict__
        d["_parameters"] = {}
        d["_buffers"] = {}
        d["_non_persistent_buffers"] = set()
        d["_modules"] = {}
        self._set_training_flag(True)

    def _set_training_flag(self, mode: bool) -> None:
        self.__dict__["training"] = mode

    # ----------------------------------------------------------------- forward and call
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ----------------------------------------------------------------- registration
    def register_parameter(self, name: str, param: Optional[Parameter]) -> None:
        """Adds a parameter (a ``Parameter`` or None) under ``name``."""
        _check_name("parameter", name, self)
        if name in self._buffers or name in self._modules:
            raise KeyError(f"attribute {name!r} already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                            "(nn.Parameter or None required)")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Optional[Tensor], persistent: bool = True) -> None:
        """Adds a tensor that is state but not a parameter (running statistics...); persistent
        buffers go into ``state_dict``."""
        _check_name("buffer", name, self)
        if name in self._parameters or name in self._modules:
            raise KeyError(f"attribute {name!r} already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' "
                            "(Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Optional["Module"]) -> None:
        """Adds a child module under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        _check_name("module", name, self)
        if name in self._parameters or name in self._buffers:
            raise KeyError(f"attribute {name!r} already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self._remove_from(name, keep="_parameters")
            self._assign_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            self._assign_parameter(name, None)
            return
        modules = d.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            self._remove_from(name, keep="_modules")
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(nn.Module or None expected)")
            modules[name] = None
            return
        buffers = d.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(Tensor or None expected)")
            self._assign_buffer(name, value)
            return
        object.__setattr__(self, name, value)

    def _assign_parameter(self, name: str, value: Optional[Parameter]) -> None:
        self._parameters[name] = value

    def _assign_buffer(self, name: str, value: Optional[Tensor]) -> None:
        self._buffers[name] = value

    def _remove_from(self, name: str, keep: str) -> None:
        d = self.__dict__
        d.pop(name, None)
        for store in ("_parameters", "_buffers", "_modules"):
            if store != keep:
                d[store].pop(name, None)
        if keep != "_buffers":
            d["_non_persistent_buffers"].discard(name)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            s = d.get(store)
            if s is not None and name in s:
                return s[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            s = d.get(store)
            if s is not None and name in s:
                self._check_deletable(name)
                del s[name]
                d["_non_persistent_buffers"].discard(name)
                return
        object.__delattr__(self, name)

    def _check_deletable(self, name: str) -> None:
        pass

    def __dir__(self) -> List[str]:
        keys = set(super().__dir__())
        for store in ("_parameters", "_buffers", "_modules"):
            keys.update(self.__dict__.get(store, {}))
        return sorted(k for k in keys if not k[0].isdigit())

    # ----------------------------------------------------------------- walks
    def named_modules(self, memo: Optional[Set["Module"]] = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, "Module"]]:
        """Every module of the tree, parent before children, the root named ``prefix`` ("")."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if self in memo:
                return
            memo.add(self)
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        seen: Set[Module] = set()
        for name, m in self._modules.items():
            if m is not None and m not in seen:
                seen.add(m)
                yield name, m

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, store: str, prefix: str, recurse: bool,
                       remove_duplicate: bool = True) -> Iterator[Tuple[str, Any]]:
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        seen: Set[int] = set()
        for mprefix, m in mods:
            for k, v in m.__dict__[store].items():
                if v is None:
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                yield mprefix + ("." if mprefix else "") + k, v

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a parameter shared by several modules comes once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, Tensor]]:
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        if target == "":
            return self
        mod: Module = self
        for item in target.split("."):
            sub = mod._modules.get(item)
            if sub is None:
                raise AttributeError(f"{type(mod).__name__} has no submodule `{item}` (looking up {target!r})")
            mod = sub
        return mod

    def get_parameter(self, target: str) -> Parameter:
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        p = mod._parameters.get(name)
        if p is None:
            raise AttributeError(f"{type(mod).__name__} has no parameter `{name}` (looking up {target!r})")
        return p

    # ----------------------------------------------------------------- state
    def _state_items(self, prefix: str = "") -> Iterator[Tuple[str, Tensor]]:
        """(key, live tensor) for every parameter and persistent buffer, in state_dict order."""
        for k, p in self._parameters.items():
            if p is not None:
                yield prefix + k, p
        for k, b in self._buffers.items():
            if b is not None and k not in self._non_persistent_buffers:
                yield prefix + k, b
        for name, m in self._modules.items():
            if m is not None:
                yield from m._state_items(prefix + name + ".")

    def state_dict(self, destination: Optional[Dict[str, Tensor]] = None, prefix: str = "",
                   keep_vars: bool = False) -> Dict[str, Tensor]:
        """Parameters and persistent buffers by dotted name. Values are detached tensors that
        share memory with the module's (as PyTorch); ``keep_vars=True`` gives the tensors themselves."""
        out: Dict[str, Tensor] = collections.OrderedDict() if destination is None else destination
        for k, t in self._state_items(prefix):
            out[k] = t if keep_vars else t.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> _IncompatibleKeys:
        """Copies values (Tensors or NumPy arrays) into the parameters and buffers, under
        ``no_grad``, keeping their identity and dtype. With ``strict`` a missing or unexpected key
        raises KeyError naming them; a shape mismatch always raises ValueError. Nothing is copied
        when an error is raised. Returns ``(missing_keys, unexpected_keys)``."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}")
        own = collections.OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
            if unexpected:
                parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected))
            raise KeyError(f"Error(s) in loading state_dict for {type(self).__name__}: " + ". ".join(parts))
        todo = []
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            shape = tuple(getattr(v, "shape", ()))
            if not hasattr(v, "shape"):
                raise TypeError(f"load_state_dict: value for {k!r} is a {type(v).__name__}, "
                                "expected a Tensor or NumPy array")
            if shape != t.shape:
                raise ValueError(f"load_state_dict: size mismatch for {k}: copying a param with shape {shape} "
                                 f"from checkpoint, the shape in current model is {t.shape}")
            todo.append((t, v))
        with no_grad():
            for t, v in todo:
                t.copy_(v)
        return _IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- modes, grads, dtype
    def train(self: _M, mode: bool = True) -> _M:
        """Training mode (dropout active, batch norm on batch statistics) for the whole tree."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            m._set_training_flag(mode)
        return self

    def eval(self: _M) -> _M:
        return self.train(False)

    def requires_grad_(self: _M, requires_grad: bool = True) -> _M:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets every parameter's gradient (to None, as PyTorch's default)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                with no_grad():
                    p.grad.copy_(0.0)

    def _convert_own(self, dtype: Any) -> None:
        """Converts this module's own floating parameters and buffers in place (identity kept)."""
        for store in (self._parameters, self._buffers):
            for t in store.values():
                if t is not None and t.dtype.is_floating_point and t.dtype != dtype:
                    _core._set_data(t, t.detach().astype(dtype))
                    g = t.grad
                    if g is not None and g.dtype != dtype:
                        _core._set_data(g, g.astype(dtype))

    def to(self: _M, *args: Any, **kwargs: Any) -> _M:
        """``to(dtype)``: converts floating parameters and buffers in place (the same Parameter
        objects, now of ``dtype``; an existing ``.grad`` too). Device strings ("cpu") are accepted."""
        dtype = kwargs.pop("dtype", None)
        kwargs.pop("device", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, str) and a in ("cpu",):
                continue
            if dtype is not None:
                raise TypeError("to() takes one dtype")
            dtype = a
        if dtype is None:
            return self
        d = _resolve_dtype(dtype)
        if d is None or not d.is_floating_point:
            raise TypeError(f"nn.Module.to only accepts floating point dtypes, but got desired dtype={d!r}")
        mods = list(self.modules())
        for m in mods:  # C++ layers first: their tensors are converted by the C++ side
            layer = m.__dict__.get("_layer")
            if layer is not None:
                layer.to(d)
        for m in mods:
            m._convert_own(d)
        return self

    def float(self: _M) -> _M:
        return self.to(float32)

    def double(self: _M) -> _M:
        return self.to(float64)

    def apply(self: _M, fn: Callable[["Module"], Any]) -> _M:
        """Calls ``fn`` on every sub-module (children first), then on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        child_lines = []
        for name, m in self._modules.items():
            child_lines.append(f"({name}): " + _addindent(repr(m), 2))
        body = lines + child_lines
        s = self._get_name() + "("
        if body:
            if len(lines) == 1 and not child_lines:
                s += lines[0]
            else:
                s += "\n  " + "\n  ".join(body) + "\n"
        return s + ")"

    # modules hash and compare by identity (PyTorch's behaviour)
    __hash__ = object.__hash__


class _ModuleContainer(Module):
    """What Sequential and ModuleList share: integer indexing (negative too) into the
    registered modules, assignment, deletion (the keys are renumbered 0..n-1, as PyTorch),
    len and iteration."""

    def _index(self, idx: Any) -> str:
        n = len(self._modules)
        i = operator.index(idx)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a {type(self).__name__} of length {n}")
        return list(self._modules)[i % n]

    def __setitem__(self, idx: int, module: Module) -> None:
        setattr(self, self._index(idx), module)

    def __delitem__(self, idx: Union[int, slice]) -> None:
        keys = list(self._modules)[idx] if isinstance(idx, slice) else [self._index(idx)]
        for k in keys:
            del self._modules[k]
        items = list(self._modules.values())
        self._modules.clear()
        for i, m in enumerate(items):
            self._modules[str(i)] = m

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(cast(Dict[str, Module], self._modules).values())


class Sequential(_ModuleContainer):
    """Modules applied in order: ``Sequential(m1, m2, ...)`` or ``Sequential(OrderedDict(name=m))``.
    Supports ``len``, iteration, indexing (negative too), slicing (a new Sequential) and ``append``."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], collections.OrderedDict):
            for k, m in args[0].items():
                self.add_module(k, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def forward(self, x: Any) -> Any:
        for m in cast(Dict[str, Module], self._modules).values():
            x = m(x)
        return x

    def __getitem__(self, idx: Union[int, slice]) -> Any:
        if isinstance(idx, slice):
            return type(self)(collections.OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._index(idx)]

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "Sequential":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> "Sequential":
        items = list(self._modules.values())
        n = len(items)
        i = operator.index(index)
        if not -n <= i <= n:
            raise IndexError(f"index {i} is out of range for insertion into a Sequential of length {n}")
        items.insert(i if i >= 0 else i + n, module)
        self._modules.clear()
        for j, m in enumerate(items):
            self.add_module(str(j), m)
        return self


class ModuleList(_ModuleContainer):
    """A list of modules that registers them (no forward of its own)."""

    def __init__(self, modules: Optional[Iterable[Module]] = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx: Union[int, slice]) -> Any:
        if isinstance(idx, slice):
            return ModuleList(list(cast(Dict[str, Module], self._modules).values())[idx])
        return self._modules[self._index(idx)]

    def __iadd__(self, modules: Iterable[Module]) -> "ModuleList":
        return self.extend(modules)

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for j, m in enumerate(items):
            self.add_module(str(j), m)
