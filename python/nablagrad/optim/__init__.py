"""Optimizers (``import nablagrad.optim as optim``): SGD, Adam, AdamW, RMSprop.

PyTorch's classes, arguments and update rules (the single-tensor rules of torch.optim)::

    opt = ng.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

Each ``step()`` makes one C++ call per parameter group (``_core._adam_step`` etc.): a fused
loop per parameter, multithreaded over large parameters, with the GIL released. Parameters
whose ``.grad`` is None are skipped. ``params`` is an iterable of tensors or of parameter-group
dicts (``{"params": [...], "lr": 0.1}``) whose missing options take the optimizer's defaults.

``state_dict()`` uses PyTorch's layout, made of tensors, numbers, strings, lists and dicts::

    {"state": {0: {"step": tensor(3.), "exp_avg": ..., "exp_avg_sq": ...}, ...},
     "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], ..., "params": [0, 1, 2]}]}

(tuples such as ``betas`` are stored as lists; the state tensors are the optimizer's own, as in
PyTorch). ``load_state_dict`` copies the state (converted to each parameter's dtype) and the
groups' hyper-parameters back; it accepts the state indices as ints or as digit strings.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from .. import _core
from .._tensor import Tensor, enable_grad, float32

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler"]

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]


def _zeros_like(p: Tensor) -> Tensor:
    return _core.zeros(p.shape, p.dtype)


def _copy_tensor(value: Any, dtype: Any) -> Tensor:
    """A fresh contiguous tensor holding ``value`` (a Tensor or array) converted to ``dtype``."""
    out = _core.empty(tuple(value.shape), dtype)
    out.copy_(value)
    return out


def _plain(value: Any) -> Any:
    """Tuples become lists (state dicts hold lists, dicts, numbers, strings and tensors)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and state dicts.

    A subclass defines ``_validate(group)`` (raises ValueError for a bad hyper-parameter) and
    ``_step_group(group)`` (updates the group's parameters that have a gradient)."""

    def __init__(self, params: ParamsT, defaults: Dict[str, Any]) -> None:
        self.defaults: Dict[str, Any] = dict(defaults)
        self._validate(self.defaults)
        # Keyed by the parameter itself (tensors hash by identity, as in PyTorch).
        self.state: Dict[Tensor, Dict[str, Any]] = {}
        self.param_groups: List[Dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor")
        groups: List[Any] = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- hooks for subclasses ---------------------------------------------------------
    def _validate(self, group: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _step_group(self, group: Dict[str, Any]) -> None:
        raise NotImplementedError

    # -- parameter groups -------------------------------------------------------------
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a group; options it does not give take the optimizer's defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if params is None:
            raise ValueError("a parameter group needs a 'params' entry")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering of "
                            "tensors in sets will change between runs. Please use a list instead.")
        else:
            params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        seen = set()
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if not p.dtype.is_floating_point:
                raise TypeError(f"optimizer can only optimize float32 or float64 tensors, got {p.dtype}")
            if id(p) in seen:
                raise ValueError("a parameter group lists the same parameter twice")
            seen.add(id(p))
        for group in self.param_groups:
            if seen.intersection(id(q) for q in group["params"]):
                raise ValueError("some parameters appear in more than one parameter group")
        group = dict(param_group)
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate(group)
        self.param_groups.append(group)

    # -- the training-loop calls ------------------------------------------------------
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Updates every parameter that has a gradient; returns ``closure()`` when given (it is
        called first, with grad mode on, to recompute the loss)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drops every parameter's ``.grad`` (or, with ``set_to_none=False``, zeroes it)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                else:
                    g = p.grad
                    if g is not None:
                        g.zero_()

    def _with_grads(self, group: Dict[str, Any], init: Callable[[Tensor], Dict[str, Any]]
                    ) -> Tuple[List[Tensor], List[Tensor], List[Dict[str, Any]]]:
        """The group's parameters that have a gradient, their gradients and their states
        (created by ``init`` on first use)."""
        params, grads, states = [], [], []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            st = self.state.get(p)
            if not st:
                st = init(p)
                self.state[p] = st
            params.append(p)
            grads.append(g)
            states.append(st)
        return params, grads, states

    # -- state dicts ----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``, indices
        numbering the parameters of all groups in order (PyTorch's layout)."""
        index: Dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: _plain(v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    state[index[id(p)]] = dict(st)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the state and every group's hyper-parameters from ``state_dict()``'s output
        (ValueError when its groups do not match this optimizer's)."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("an optimizer state dict has the keys 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups but the optimizer has "
                             f"{len(self.param_groups)}")
        params: List[Tensor] = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"loaded state dict's parameter group {i} has {len(saved['params'])} parameters but "
                                 f"the optimizer's has {len(group['params'])}")
            params.extend(group["params"])
        by_index: Dict[int, Tensor] = {}
        for group, saved in zip(self.param_groups, saved_groups):
            for p, idx in zip(group["params"], saved["params"]):
                by_index[int(idx)] = p
        new_state: Dict[Tensor, Dict[str, Any]] = {}
        for key, values in dict(state_dict["state"]).items():
            idx = int(key)
            if idx not in by_index:
                raise ValueError(f"loaded state dict has state for parameter {key}, which no group lists")
            p = by_index[idx]
            st: Dict[str, Any] = {}
            for name, v in dict(values).items():
                if name == "step":  # a 0-d float32 tensor, as PyTorch's (a saved number is accepted)
                    st[name] = _copy_tensor(v, float32) if hasattr(v, "shape") else _core.full((), float(v), float32)
                    continue
                if v is None or isinstance(v, (int, float, str, bool)):
                    st[name] = v
                    continue
                if tuple(v.shape) != tuple(p.shape):
                    raise ValueError(f"loaded state '{name}' of parameter {key} has shape {tuple(v.shape)} but the "
                                     f"parameter has shape {tuple(p.shape)}")
                st[name] = _copy_tensor(v, p.dtype)
            new_state[p] = st
        # Hyper-parameters: validated on copies before anything changes.
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            g = dict(group)
            for k, v in saved.items():
                if k == "params":
                    continue
                g[k] = tuple(v) if isinstance(v, list) and isinstance(group.get(k), tuple) else v
            self._validate(g)
            new_groups.append(g)
        for group, g in zip(self.param_groups, new_groups):
            group.update(g)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay
    (``torch.optim.SGD``'s rule)."""

    def __init__(self, params: ParamsT, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _validate(self, group: Dict[str, Any]) -> None:
        _check(0.0 <= group["lr"], f"Invalid learning rate: {group['lr']}")
        _check(0.0 <= group["momentum"], f"Invalid momentum value: {group['momentum']}")
        _check(0.0 <= group["weight_decay"], f"Invalid weight_decay value: {group['weight_decay']}")
        _check(not group["nesterov"] or (group["momentum"] > 0 and group["dampening"] == 0),
               "Nesterov momentum requires a momentum and zero dampening")

    def _step_group(self, group: Dict[str, Any]) -> None:
        params, grads, states = self._with_grads(group, lambda p: {})
        if not params:
            return
        momentum = float(group["momentum"])
        bufs = [st.get("momentum_buffer") for st in states]
        bufs = _core._sgd_step(params, grads, bufs, float(group["lr"]), momentum, float(group["dampening"]),
                               float(group["weight_decay"]), bool(group["nesterov"]))
        if momentum != 0:
            for st, buf in zip(states, bufs):
                st["momentum_buffer"] = buf


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``'s rule, with bias correction; weight decay added to the
    gradient)."""

    _decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate(self, group: Dict[str, Any]) -> None:
        _check(0.0 <= group["lr"], f"Invalid learning rate: {group['lr']}")
        _check(0.0 <= group["eps"], f"Invalid epsilon value: {group['eps']}")
        betas = group["betas"]
        _check(len(betas) == 2, f"betas must be a pair, got {betas!r}")
        _check(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
        _check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
        _check(0.0 <= group["weight_decay"], f"Invalid weight_decay value: {group['weight_decay']}")

    def _step_group(self, group: Dict[str, Any]) -> None:
        params, grads, states = self._with_grads(group, lambda p: {
            "step": _core.zeros((), float32), "exp_avg": _zeros_like(p), "exp_avg_sq": _zeros_like(p)})
        if not params:
            return
        beta1, beta2 = group["betas"]
        _core._adam_step(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                         [st["step"] for st in states], float(group["lr"]), float(beta1), float(beta2),
                         float(group["eps"]), float(group["weight_decay"]), self._decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``'s rule: the parameter is scaled
    by ``1 - lr * weight_decay`` before the Adam update)."""

    _decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``'s rule, not centered)."""

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum))

    def _validate(self, group: Dict[str, Any]) -> None:
        _check(0.0 <= group["lr"], f"Invalid learning rate: {group['lr']}")
        _check(0.0 <= group["eps"], f"Invalid epsilon value: {group['eps']}")
        _check(0.0 <= group["momentum"], f"Invalid momentum value: {group['momentum']}")
        _check(0.0 <= group["weight_decay"], f"Invalid weight_decay value: {group['weight_decay']}")
        _check(0.0 <= group["alpha"], f"Invalid alpha value: {group['alpha']}")

    def _step_group(self, group: Dict[str, Any]) -> None:
        momentum = float(group["momentum"])

        def init(p: Tensor) -> Dict[str, Any]:
            st = {"step": _core.zeros((), float32), "square_avg": _zeros_like(p)}
            if momentum > 0:
                st["momentum_buffer"] = _zeros_like(p)
            return st

        params, grads, states = self._with_grads(group, init)
        if not params:
            return
        if momentum > 0:  # momentum turned on after the first steps (a changed group)
            for p, st in zip(params, states):
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = _zeros_like(p)
        _core._rmsprop_step(params, grads, [st["square_avg"] for st in states],
                            [st.get("momentum_buffer") for st in states], [st["step"] for st in states],
                            float(group["lr"]), float(group["alpha"]), float(group["eps"]),
                            float(group["weight_decay"]), momentum)


from . import lr_scheduler  # noqa: E402
