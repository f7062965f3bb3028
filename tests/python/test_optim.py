"""nablagrad.optim (SGD, Adam, AdamW, RMSprop), optim.lr_scheduler and the in-place tensor ops.

The optimizers are compared with torch.optim over 25 steps with identical parameters and
gradients (float32 to ~1e-6 relative, float64 to ~1e-12), the schedulers with PyTorch's over 30
epochs; state dicts must let a run continue bitwise identically. In-place ops are compared with
NumPy and checked against autograd's rules (leaf RuntimeError, version counter)."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import optim

SHAPES = [(4, 3), (3,), (2, 2, 2)]
TOL = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}
NG_DTYPE = {np.float32: ng.float32, np.float64: ng.float64}


def _arrays(seed, dtype, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _ng_params(arrays):
    return [ng.tensor(a.copy(), requires_grad=True) for a in arrays]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else ng.tensor(g)


def _run(opt, params, dtype, steps, seed=1, skip=None):
    """`steps` steps with gradients drawn from `seed`; parameter `skip` never gets one."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        if skip is not None:
            grads[skip] = None
        _set_grads(params, grads)
        opt.step()


OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.3)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.9)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kwargs", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_matches_torch(name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    arrays = _arrays(0, dtype)
    params = _ng_params(arrays)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = getattr(optim, name)(params, **kwargs)
    topt = getattr(torch.optim, name)(tparams, **kwargs)
    rng = np.random.default_rng(1)
    for step in range(25):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in arrays]
        _set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            # relative to each tensor's scale: an entry near 0 carries the rounding of its past values
            want = tp.detach().numpy()
            np.testing.assert_allclose(np.asarray(p), want, rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["rtol"] * float(np.abs(want).max()), err_msg=f"step {step}")
    for p, tp in zip(params, tparams):
        assert p.dtype == NG_DTYPE[dtype]
        ours, theirs = opt.state.get(p, {}), topt.state[tp]
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                # state sums many terms: near-cancelled entries are compared against its scale
                scale = float(np.abs(value.numpy()).max())
                np.testing.assert_allclose(np.asarray(ours[key]), value.numpy(), rtol=TOL[dtype]["rtol"],
                                           atol=TOL[dtype]["rtol"] * scale, err_msg=key)
        if "step" in theirs:
            assert float(ours["step"]) == float(theirs["step"]) == 25.0


def test_param_groups_match_torch():
    torch = pytest.importorskip("torch")
    arrays = _arrays(2, np.float64)
    params = _ng_params(arrays)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    groups = lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.1, "betas": (0.5, 0.6)}]  # noqa: E731
    opt = optim.Adam(groups(params), lr=0.01)
    topt = torch.optim.Adam(groups(tparams), lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert opt.param_groups[1]["betas"] == (0.5, 0.6) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    rng = np.random.default_rng(3)
    for _ in range(10):
        grads = [rng.standard_normal(a.shape) for a in arrays]
        _set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_grad_none_is_skipped(name):
    arrays = _arrays(4, np.float32)
    params = _ng_params(arrays)
    kwargs = dict(lr=0.1, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.1)
    opt = getattr(optim, name)(params, **kwargs)
    _run(opt, params, np.float32, 3, skip=1)
    np.testing.assert_array_equal(np.asarray(params[1]), arrays[1])
    assert params[1] not in opt.state
    assert not np.array_equal(np.asarray(params[0]), arrays[0])


def test_zero_grad():
    params = _ng_params(_arrays(5, np.float32))
    opt = optim.SGD(params, lr=0.1)
    _set_grads(params, _arrays(6, np.float32))
    opt.zero_grad(set_to_none=False)
    for p in params:
        assert p.grad is not None and not np.asarray(p.grad).any()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_step_bumps_version_and_records_no_graph():
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    p.grad = ng.tensor([0.5, 0.5])
    v = p._version
    opt.step()
    assert p._version == v + 1
    assert p.is_leaf and p.requires_grad and p.grad_fn_name is None
    loss = (p * p).sum()  # mul saves p: the update below overwrites it, and backward says so
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()


def test_closure_and_repr():
    p = ng.tensor([3.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss) == 9.0 and float(p) == 1.5
    assert "Parameter Group 0" in repr(opt) and "lr: 0.25" in repr(opt)


def _is_plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, (int, str)) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_is_plain(v) for v in obj)
    return obj is None or isinstance(obj, (bool, int, float, str, ng.Tensor))


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, weight_decay=0.1)),
                                         ("AdamW", dict(lr=0.01)),
                                         ("RMSprop", dict(lr=0.01, momentum=0.5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_continues_bitwise(name, kwargs, dtype):
    arrays = _arrays(7, dtype)
    # uninterrupted run: 20 steps
    ref = _ng_params(arrays)
    ref_opt = getattr(optim, name)([{"params": ref[:2]}, {"params": ref[2:], "lr": 0.02}], **kwargs)
    rng = np.random.default_rng(8)
    grads = [[rng.standard_normal(a.shape).astype(dtype) for a in arrays] for _ in range(20)]
    for g in grads:
        _set_grads(ref, g)
        ref_opt.step()
    # interrupted: 10 steps, state dict, a fresh optimizer (other hyper-parameters) on copies
    first = _ng_params(arrays)
    opt = getattr(optim, name)([{"params": first[:2]}, {"params": first[2:], "lr": 0.02}], **kwargs)
    for g in grads[:10]:
        _set_grads(first, g)
        opt.step()
    sd = opt.state_dict()
    assert _is_plain(sd)
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sorted(sd["state"]) == [0, 1, 2]
    # as after a save/load: state keys as strings, tuples as lists
    sd = {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}
    resumed = _ng_params([np.asarray(p).copy() for p in first])
    opt2 = getattr(optim, name)([{"params": resumed[:2]}, {"params": resumed[2:]}], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.02 and opt2.param_groups[0]["lr"] == kwargs["lr"]
    if "betas" in opt2.param_groups[0]:
        assert isinstance(opt2.param_groups[0]["betas"], tuple)
    # the loaded state is a copy: running `opt` further does not change opt2
    for g in grads[10:]:
        _set_grads(first, g)
        opt.step()
    for g in grads[10:]:
        _set_grads(resumed, g)
        opt2.step()
    for a, b, c in zip(ref, first, resumed):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_load_state_dict_from_torch_layout():
    """A torch.optim.Adam state dict (tensors converted) loads and the run continues as torch's."""
    torch = pytest.importorskip("torch")
    arrays = _arrays(9, np.float64)
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    topt = torch.optim.Adam(tparams, lr=0.02, weight_decay=0.01)
    rng = np.random.default_rng(10)
    grads = [[rng.standard_normal(a.shape) for a in arrays] for _ in range(8)]
    for g in grads[:4]:
        for tp, gi in zip(tparams, g):
            tp.grad = torch.tensor(gi)
        topt.step()
    tsd = topt.state_dict()
    sd = {"state": {k: {n: ng.tensor(v.numpy()) for n, v in st.items()} for k, st in tsd["state"].items()},
          "param_groups": tsd["param_groups"]}
    params = _ng_params([tp.detach().numpy().copy() for tp in tparams])
    opt = optim.Adam(params)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.02 and opt.state[params[0]]["step"].dtype == ng.float32
    for g in grads[4:]:
        for tp, gi in zip(tparams, g):
            tp.grad = torch.tensor(gi)
        topt.step()
        _set_grads(params, g)
        opt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), rtol=1e-12)


def test_load_state_dict_errors():
    params = _ng_params(_arrays(11, np.float32))
    opt = optim.Adam(params)
    _run(opt, params, np.float32, 1)
    sd = opt.state_dict()
    other = optim.Adam(_ng_params(_arrays(11, np.float32))[:2])
    with pytest.raises(ValueError):
        other.load_state_dict(sd)
    two_groups = _ng_params(_arrays(11, np.float32))
    with pytest.raises(ValueError):
        optim.Adam([{"params": two_groups[:1]}, {"params": two_groups[1:]}]).load_state_dict(sd)
    bad = {"state": {0: dict(sd["state"][1])}, "param_groups": sd["param_groups"]}  # shape (3,) for a (4, 3)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(_ng_params(_arrays(11, np.float32))).load_state_dict(bad)
    bad_lr = {"state": {}, "param_groups": [dict(sd["param_groups"][0], lr=-1.0)]}
    target = optim.Adam(_ng_params(_arrays(11, np.float32)), lr=0.5)
    with pytest.raises(ValueError, match="learning rate"):
        target.load_state_dict(bad_lr)
    assert target.param_groups[0]["lr"] == 0.5  # unchanged


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_constructor_errors(name):
    cls = getattr(optim, name)
    p = ng.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="learning rate"):
        cls([p], lr=-0.1)
    with pytest.raises(ValueError, match="empty"):
        cls([], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        cls([p * 2], lr=0.1)
    with pytest.raises(TypeError):
        cls(p, lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        cls([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError):
        cls([ng.tensor([1, 2])], lr=0.1)


def test_hyper_parameter_errors():
    p = ng.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="epsilon"):
        optim.AdamW([p], eps=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        optim.RMSprop([p], momentum=-0.5)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.SGD([p], lr=0.1, weight_decay=-1.0)
    assert optim.AdamW([p]).defaults["weight_decay"] == 1e-2
    assert optim.RMSprop([p]).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0)


def test_step_independent_of_thread_count():
    n = 300_001  # split across threads
    results = []
    before = ng.get_num_threads()
    try:
        for threads in (1, 2, 4):
            ng.set_num_threads(threads)
            params = _ng_params(_arrays(12, np.float32, [(n,), (5,)]))
            opt = optim.Adam(params, lr=0.01, weight_decay=0.1)
            _run(opt, params, np.float32, 3, seed=13)
            results.append([np.asarray(p).copy() for p in params])
    finally:
        ng.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------
# lr_scheduler
# ---------------------------------------------------------------------------------------
SCHEDULERS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=7)),
]


def _two_groups(lib, params):
    return [{"params": params[:1]}, {"params": params[1:], "lr": 0.03}]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULERS)])
def test_scheduler_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    params = _ng_params(_arrays(14, np.float32))
    tparams = [torch.zeros(2, requires_grad=True) for _ in params]
    opt = optim.SGD(_two_groups(ng, params), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(_two_groups(torch, tparams), lr=0.1, momentum=0.9)
    sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    assert sched.get_last_lr() == tsched.get_last_lr()
    for epoch in range(30):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert sched.get_last_lr() == tsched.get_last_lr(), epoch
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    assert sched.last_epoch == tsched.last_epoch == 30
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.03]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULERS)])
def test_scheduler_state_dict_resumes(name, kwargs):
    def make():
        params = _ng_params(_arrays(15, np.float32))
        opt = optim.Adam(_two_groups(ng, params), lr=0.1)
        return opt, getattr(optim.lr_scheduler, name)(opt, **kwargs)

    opt, sched = make()
    lrs = []
    for _ in range(25):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
    opt, sched = make()
    for _ in range(12):
        opt.step()
        sched.step()
    osd, ssd = opt.state_dict(), sched.state_dict()
    assert _is_plain(ssd) and "optimizer" not in ssd
    opt2, sched2 = make()  # constructed first, then loaded (PyTorch's order)
    opt2.load_state_dict(osd)
    sched2.load_state_dict(ssd)
    assert sched2.last_epoch == 12
    for i in range(12, 25):
        opt2.step()
        sched2.step()
        assert sched2.get_last_lr() == lrs[i]


def test_scheduler_errors():
    p = ng.tensor([1.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError):
        optim.lr_scheduler.StepLR(object(), step_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        optim.lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError):
        optim.lr_scheduler.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(KeyError):
        optim.lr_scheduler.ExponentialLR(optim.SGD([ng.tensor([1.0], requires_grad=True)], lr=0.1), 0.5,
                                         last_epoch=3)


# ---------------------------------------------------------------------------------------
# in-place ops
# ---------------------------------------------------------------------------------------
def _pair(shape, dtype=np.float64, seed=20):
    a = np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(dtype)
    return a, ng.tensor(a.copy())


INPLACE = [
    ("add_", lambda t, o: t.add_(o), lambda a, o: a + o),
    ("add_alpha", lambda t, o: t.add_(o, alpha=-0.5), lambda a, o: a - 0.5 * o),
    ("sub_", lambda t, o: t.sub_(o, alpha=2), lambda a, o: a - 2 * o),
    ("mul_", lambda t, o: t.mul_(o), lambda a, o: a * o),
    ("div_", lambda t, o: t.div_(o), lambda a, o: a / o),
    ("addcmul_", lambda t, o: t.addcmul_(o, o, value=0.3), lambda a, o: a + 0.3 * o * o),
    ("addcdiv_", lambda t, o: t.addcdiv_(o, o + 1, value=-2), lambda a, o: a - 2 * o / (o + 1)),
    ("lerp_", lambda t, o: t.lerp_(o, 0.3), lambda a, o: a + 0.3 * (o - a)),
    ("lerp_big", lambda t, o: t.lerp_(o, 0.7), lambda a, o: a + 0.7 * (o - a)),
    ("lerp_tensor", lambda t, o: t.lerp_(o, o), lambda a, o: a + o * (o - a)),
    ("clamp_", lambda t, o: t.clamp_(0.9, 1.5), lambda a, o: np.clip(a, 0.9, 1.5)),
    ("clamp_tensor", lambda t, o: t.clamp_(min=o), lambda a, o: np.maximum(a, o)),
    ("clamp_max", lambda t, o: t.clamp_(max=1.0), lambda a, o: np.minimum(a, 1.0)),
]


@pytest.mark.parametrize("other_shape", [(2, 3), (3,), (1, 3), ()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,op,ref", INPLACE, ids=[n for n, _, _ in INPLACE])
def test_inplace_vs_numpy(name, op, ref, dtype, other_shape):
    a, t = _pair((2, 3), dtype)
    o_np, o = _pair(other_shape, dtype, seed=21)
    version = t._version
    out = op(t, o)
    assert out is t
    assert t._version > version
    assert t.dtype == NG_DTYPE[dtype] and t.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(t), ref(a.astype(np.float64), o_np.astype(np.float64)),
                               rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6 if dtype == np.float32 else 0)


def test_inplace_scalars_fill_zero():
    t = ng.tensor([[1.0, 2.0], [3.0, 4.0]])
    t.add_(1).mul_(2.0).sub_(0.5).div_(2)
    np.testing.assert_allclose(np.asarray(t), (np.array([[1, 2], [3, 4]]) + 1) * 2.0 / 2 - 0.25)
    v = t._version
    assert t.fill_(7.5) is t and np.all(np.asarray(t) == 7.5)
    t.zero_()
    assert not np.asarray(t).any() and t._version == v + 2
    t.fill_(ng.tensor(3.0))
    assert np.all(np.asarray(t) == 3.0)
    i = ng.tensor([1, 2, 3])
    i.add_(2).mul_(ng.tensor([1, 2, 3])).clamp_(0, 10)
    assert i.dtype == ng.int64 and np.asarray(i).tolist() == [3, 8, 10]


def test_inplace_on_views_and_aliases():
    base = ng.tensor(np.arange(6.0).reshape(2, 3))
    col = base[:, 1]
    col.mul_(10)
    np.testing.assert_array_equal(np.asarray(base), [[0, 10, 2], [3, 40, 5]])
    x = ng.tensor([[1.0, 2.0], [3.0, 4.0]])
    x.add_(x.T)  # reads the original values
    np.testing.assert_array_equal(np.asarray(x), [[2, 5], [5, 8]])
    f32 = ng.tensor([1.0, 1.0])
    f32.add_(ng.tensor(np.array([1e-9, 1e-9])))  # float64 operand computed in double, stored in float32
    assert f32.dtype == ng.float32 and np.asarray(f32)[0] == np.float32(1.0 + 1e-9)


def test_inplace_dtype_and_shape_errors():
    i = ng.tensor([1, 2])
    with pytest.raises(TypeError):
        i.add_(0.5)
    with pytest.raises(TypeError):
        i.mul_(ng.tensor([1.5, 2.0]))
    with pytest.raises(TypeError):
        i.div_(2)
    with pytest.raises(TypeError):
        i.lerp_(i, 0.5)
    with pytest.raises(TypeError):
        ng.tensor([True, False]).add_(1)
    with pytest.raises(ValueError, match="broadcast"):
        ng.zeros(3).add_(ng.zeros((2, 3)))
    with pytest.raises(ValueError):
        ng.zeros(3).mul_(ng.zeros(2))
    with pytest.raises(ValueError):
        ng.zeros(3).clamp_()
    with pytest.raises(RuntimeError):
        ng.zeros(1).expand(3).mul_(2)


def test_inplace_autograd_rules():
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.mul_(2)
    np.testing.assert_array_equal(np.asarray(w), [1.0, 2.0])
    with ng.no_grad():
        w.mul_(2)
    np.testing.assert_array_equal(np.asarray(w), [2.0, 4.0])
    assert w.requires_grad and w.is_leaf
    with pytest.raises(RuntimeError):
        (w * 1).add_(1)  # a result of a recorded op
    with pytest.raises(RuntimeError):
        ng.zeros(2).add_(w)  # the gradient to w would be lost
    # writing into a tensor an op saved makes backward refuse
    x = ng.tensor([0.5, 1.0], requires_grad=True)
    y = x.exp()  # saves its output
    v = y._version
    y.detach().mul_(2)
    assert y._version == v + 1
    with pytest.raises(RuntimeError, match="in-place"):
        y.sum().backward()
    # a tensor the op did not save may be written
    z = x * 3.0
    z.detach().zero_()
    z.sum().backward()
    np.testing.assert_array_equal(np.asarray(x.grad), [3.0, 3.0])


def test_load_state_dict_accepts_a_numeric_step():
    params = _ng_params(_arrays(30, np.float32))
    opt = optim.Adam(params)
    _run(opt, params, np.float32, 3)
    sd = opt.state_dict()
    sd["state"] = {k: dict(v, step=float(v["step"])) for k, v in sd["state"].items()}
    opt2 = optim.Adam(_ng_params(_arrays(30, np.float32)))
    opt2.load_state_dict(sd)
    step = opt2.state[opt2.param_groups[0]["params"][0]]["step"]
    assert step.dtype == ng.float32 and step.shape == () and float(step) == 3.0
