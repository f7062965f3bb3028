"""ng.data: TensorDataset and DataLoader (batching, drop_last, seeded shuffling, one copy per batch)."""

from __future__ import annotations

import numpy as np
import pytest

import nablagrad as ng
import nablagrad.data as ngdata


def _np(t):
    return np.asarray(t.detach())


def _dataset(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64)
    return x, y, ng.data.TensorDataset(x, y)


def test_batches_in_order_with_last_partial():
    x, y, ds = _dataset(10)
    assert len(ds) == 10
    loader = ng.data.DataLoader(ds, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    for i, (xb, yb) in enumerate(batches):
        assert isinstance(xb, ng.Tensor) and isinstance(yb, ng.Tensor)
        assert xb.dtype == ng.float32 and yb.dtype == ng.int64
        np.testing.assert_array_equal(_np(xb), x[4 * i:4 * i + 4])
        np.testing.assert_array_equal(_np(yb), y[4 * i:4 * i + 4])


def test_drop_last():
    _, y, ds = _dataset(10)
    loader = ng.data.DataLoader(ds, batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [b[1].shape for b in loader] == [(4,), (4,)]
    assert len(ng.data.DataLoader(ds, batch_size=5, drop_last=True)) == 2
    assert len(ng.data.DataLoader(ds, batch_size=11, drop_last=True)) == 0
    assert list(ng.data.DataLoader(ds, batch_size=11, drop_last=True)) == []
    assert len(ng.data.DataLoader(ds, batch_size=11)) == 1


def test_shuffle_is_a_permutation_new_each_epoch_and_seeded():
    x, y, ds = _dataset(50)
    loader = ng.data.DataLoader(ds, batch_size=8, shuffle=True, seed=7)
    epochs = [np.concatenate([_np(yb) for _, yb in loader]) for _ in range(3)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(50))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(50))
    # Rows stay aligned across arrays.
    for xb, yb in ng.data.DataLoader(ds, batch_size=8, shuffle=True, seed=1):
        np.testing.assert_array_equal(_np(xb), x[_np(yb)])
    # The same seed gives the same sequence of epochs; another seed another.
    again = ng.data.DataLoader(ds, batch_size=8, shuffle=True, seed=7)
    for e in epochs:
        np.testing.assert_array_equal(np.concatenate([_np(yb) for _, yb in again]), e)
    other = ng.data.DataLoader(ds, batch_size=8, shuffle=True, seed=8)
    assert not np.array_equal(np.concatenate([_np(yb) for _, yb in other]), epochs[0])


def test_shuffle_without_seed_follows_manual_seed():
    _, _, ds = _dataset(40)

    def run():
        loader = ng.data.DataLoader(ds, batch_size=16, shuffle=True)
        return [np.concatenate([_np(yb) for _, yb in loader]) for _ in range(2)]

    ng.manual_seed(11)
    a = run()
    ng.manual_seed(11)
    b = run()
    ng.manual_seed(12)
    c = run()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], c[0])


def test_one_copy_per_batch(monkeypatch):
    x = np.random.default_rng(0).standard_normal((20, 4, 4, 1)).astype(np.float32)
    y = np.arange(20)
    ds = ng.data.TensorDataset(x, y)
    calls = []
    real_take = np.take

    def counting_take(a, indices, axis=None, **kw):
        out = real_take(a, indices, axis=axis, **kw)
        calls.append(out)
        return out

    monkeypatch.setattr(ngdata.np, "take", counting_take)
    batches = list(ng.data.DataLoader(ds, batch_size=6, shuffle=True, seed=0))
    assert len(calls) == 2 * len(batches)  # exactly one gather per array per batch
    for (xb, yb), gx, gy in zip(batches, calls[0::2], calls[1::2]):
        # The Tensor shares the gathered array (no second copy) and not the source.
        assert np.shares_memory(_np(xb), gx) and np.shares_memory(_np(yb), gy)
        assert not np.shares_memory(_np(xb), x) and not np.shares_memory(_np(yb), y)
    # The dataset keeps views of the inputs (no copy at construction).
    assert np.shares_memory(ds.arrays[0], x)
    # Writing to a batch never changes the source.
    xb, _ = next(iter(ng.data.DataLoader(ds, batch_size=3)))
    _np(xb)[...] = 0
    assert np.abs(x[:3]).sum() > 0


def test_tensors_as_input_and_items():
    ng.manual_seed(0)
    a = ng.randn(5, 2)
    b = ng.tensor([1, 2, 3, 4, 5])
    m = np.array([True, False, True, False, True])
    ds = ng.data.TensorDataset(a, b, m)
    xa, xb, xm = ds[1]
    assert xa.shape == (2,) and xb.shape == () and xb.item() == 2 and xm.dtype == ng.bool
    assert ds[-1][1].item() == 5
    with pytest.raises(IndexError):
        ds[5]
    batches = list(ng.data.DataLoader(ds, batch_size=2))
    np.testing.assert_array_equal(_np(batches[2][0]), _np(a)[4:5])
    # Other integer kinds become int64 (once, at construction).
    ds32 = ng.data.TensorDataset(np.arange(4, dtype=np.int32))
    assert next(iter(ng.data.DataLoader(ds32, batch_size=4)))[0].dtype == ng.int64


def test_errors():
    with pytest.raises(ValueError, match="first dimension"):
        ng.data.TensorDataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError):
        ng.data.TensorDataset()
    with pytest.raises(ValueError):
        ng.data.TensorDataset(np.float32(1.0))
    with pytest.raises(TypeError, match="float16"):
        ng.data.TensorDataset(np.zeros(3, np.float16))
    _, _, ds = _dataset(4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            ng.data.DataLoader(ds, batch_size=bad)
    with pytest.raises(ValueError, match="seed"):
        ng.data.DataLoader(ds, seed=-1)
    with pytest.raises(TypeError):
        ng.data.DataLoader(42)


class _Squares(ng.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        if not 0 <= i < 7:
            raise IndexError(i)
        return np.full((2,), i, dtype=np.float32), i * i


class _Plain:
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return ng.tensor([float(i), -float(i)])


def test_generic_datasets_are_collated_by_stacking():
    batches = list(ng.data.DataLoader(_Squares(), batch_size=3, shuffle=True, seed=3))
    assert [b[0].shape for b in batches] == [(3, 2), (3, 2), (1, 2)]
    xs = np.concatenate([_np(b[0])[:, 0] for b in batches])
    sq = np.concatenate([_np(b[1]) for b in batches])
    assert sorted(xs.tolist()) == list(range(7))
    np.testing.assert_array_equal(sq, xs.astype(np.int64) ** 2)
    assert batches[0][1].dtype == ng.int64
    plain = list(ng.data.DataLoader(_Plain(), batch_size=2, drop_last=True))
    assert len(plain) == 2 and isinstance(plain[0], ng.Tensor) and plain[0].shape == (2, 2)
    np.testing.assert_array_equal(_np(plain[1]), [[2, -2], [3, -3]])


def test_training_loop_with_loader():
    nn, F = ng.nn, ng.functional
    ng.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    w = np.array([[1.0], [-2.0], [0.5]], np.float32)
    y = x @ w
    model = nn.Linear(3, 1)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    loader = ng.data.DataLoader(ng.data.TensorDataset(x, y), batch_size=16, shuffle=True, seed=0)
    for _ in range(30):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
    np.testing.assert_allclose(_np(model.weight).reshape(-1), w.reshape(-1), atol=1e-2)
