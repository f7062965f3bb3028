"""Datasets and mini-batch loading.

    >>> ds = ng.data.TensorDataset(x_train, y_train)          # NumPy arrays or Tensors
    >>> loader = ng.data.DataLoader(ds, batch_size=64, shuffle=True, seed=0)
    >>> for xb, yb in loader:                                  # tuples of Tensors
    ...     loss = F.cross_entropy(model(xb), yb)

A TensorDataset batch is gathered with one ``np.take`` per array into a fresh array that the
Tensor then shares (``ng.from_numpy``): each batch copies the data exactly once and never
aliases the source arrays. With ``shuffle=True`` every epoch has a new order, drawn from a
generator seeded by ``seed`` or, when ``seed`` is None, by nablagrad's global generator (so
``ng.manual_seed`` makes it reproducible).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np

from ._tensor import Tensor, float64, from_numpy, rand

__all__ = ["Dataset", "TensorDataset", "DataLoader", "DistributedSampler"]

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.bool_))


class Dataset:
    """Base class of map-style datasets: ``__getitem__(i)`` and ``__len__()``."""

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


def _as_array(a: Any, what: str) -> np.ndarray:
    """A NumPy view of a Tensor or array (no copy when possible), in a dtype nablagrad holds."""
    if isinstance(a, Tensor):
        arr = np.asarray(a.detach())
    elif isinstance(a, np.ndarray):
        arr = a
    else:
        arr = np.asarray(a)
    if arr.dtype in _NATIVE:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    raise TypeError(f"{what} has dtype {arr.dtype}; supported are float32, float64, int64 and bool "
                    "(and other integer kinds, converted to int64)")


class TensorDataset(Dataset):
    """Wraps arrays/Tensors with the same first dimension; item i is the tuple of their i-th rows."""

    def __init__(self, *arrays: Any) -> None:
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_as_array(a, f"TensorDataset: array {i}") for i, a in enumerate(arrays))
        for i, a in enumerate(self.arrays):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset: array {i} is 0-d; every array needs a first (sample) dimension")
        n = self.arrays[0].shape[0]
        for i, a in enumerate(self.arrays):
            if a.shape[0] != n:
                shapes = ", ".join(str(x.shape) for x in self.arrays)
                raise ValueError(f"TensorDataset: arrays must have the same first dimension, got shapes {shapes}")

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0])

    def __getitem__(self, index: int) -> Tuple[Tensor, ...]:
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"TensorDataset index {i} out of range for {n} samples")
        return self._gather(np.array([i % n], dtype=np.int64), squeeze=True)

    def _gather(self, idx: np.ndarray, squeeze: bool = False) -> Tuple[Tensor, ...]:
        """Rows ``idx`` of every array: one np.take per array into a fresh C-contiguous array."""
        out = []
        for a in self.arrays:
            batch = np.take(a, idx, axis=0)
            if squeeze:
                batch = batch.reshape(a.shape[1:])
            out.append(from_numpy(batch))
        return tuple(out)


def _collate(items: Sequence[Any]) -> Any:
    """Stacks samples of a generic dataset: tuples/lists field by field, else the samples."""
    first = items[0]
    if isinstance(first, (tuple, list)):
        width = len(first)
        if any(not isinstance(it, (tuple, list)) or len(it) != width for it in items):
            raise ValueError("DataLoader: samples have different structures and cannot be batched")
        return tuple(_stack([it[k] for it in items], k) for k in range(width))
    return _stack(items, 0)


def _stack(values: Sequence[Any], field: int) -> Tensor:
    arrays = [_as_array(v, f"DataLoader: field {field}") for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"DataLoader: field {field} has samples of different shapes {sorted(shapes)}")
    return from_numpy(np.stack(arrays))  # np.stack makes a fresh C-contiguous array


def _shard(order: np.ndarray, rank: int, world: int, drop_last: bool) -> np.ndarray:
    """Rank ``rank``'s share of ``order``: every ``world``-th index from position ``rank``, after
    dropping the tail (``drop_last``) or padding with the first indices so that all ranks get
    the same number of samples (PyTorch's DistributedSampler rule)."""
    n = len(order)
    if drop_last:
        total = (n // world) * world
        order = order[:total]
    else:
        total = -(-n // world) * world
        if total > n and n > 0:
            reps = -(-(total - n) // n)
            order = np.concatenate([order] + [order] * reps)[:total]
    return order[rank:total:world]


class DistributedSampler:
    """The indices of one rank's shard of a dataset, reshuffled every epoch from a seed that all
    ranks share (so the shards of one epoch partition the data set).

    ``num_replicas``/``rank`` default to ``ng.distributed``'s world size and rank. Epoch e's
    order is a permutation drawn from ``(seed, e)``; ``set_epoch(e)`` selects it (as in
    PyTorch), and when ``set_epoch`` is never called each new iteration moves to the next
    epoch by itself. Without ``drop_last`` the shards are padded to equal length with the first
    indices of the order; with it, the tail is dropped.
    """

    def __init__(self, dataset: Any, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            from . import distributed
            num_replicas = distributed.get_world_size() if num_replicas is None else num_replicas
            rank = distributed.get_rank() if rank is None else rank
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive integer, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"DistributedSampler: seed must be a non-negative integer, got {seed!r}")
        self.n = len(dataset)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._manual_epoch = False
        self._iterated = False

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of epoch ``epoch`` (the same on every rank)."""
        self.epoch = operator.index(epoch)
        self._manual_epoch = True

    def __len__(self) -> int:
        return self.n // self.num_replicas if self.drop_last else -(-self.n // self.num_replicas)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).astype(np.int64)
        else:
            order = np.arange(self.n, dtype=np.int64)
        return _shard(order, self.rank, self.num_replicas, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        if not self._manual_epoch and self._iterated:
            self.epoch += 1
        self._iterated = True
        return iter(int(i) for i in self.indices())


class DataLoader:
    """Iterates over ``dataset`` in mini-batches (tuples of Tensors).

    ``batch_size`` samples per batch; ``drop_last`` drops a final smaller batch; ``shuffle``
    draws a new permutation every epoch from a generator seeded by ``seed`` (None: seeded from
    nablagrad's global generator at each epoch, so ``ng.manual_seed`` makes it reproducible).

    ``distributed=True`` (data-parallel training, ``ng.distributed``): each rank iterates over
    its own shard of every epoch's order (every world-size-th sample, padded to equal length,
    or trimmed with ``drop_last``), ``batch_size`` being the per-rank batch. The order is the
    same on all ranks: ``seed``, or when None a seed drawn by rank 0 and shared at construction.
    ``sampler``: an iterable of indices (a :class:`DistributedSampler`, ...) used instead of
    ``shuffle``.
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: Optional[int] = None, sampler: Optional[Any] = None, distributed: bool = False) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader: dataset must have __len__ and __getitem__, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"DataLoader: seed must be a non-negative integer or None, got {seed!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if sampler is not None and (shuffle or distributed):
            raise ValueError("DataLoader: sampler is exclusive with shuffle=True and distributed=True")
        self.sampler = sampler
        self.distributed = bool(distributed)
        self._rank, self._world = 0, 1
        if self.distributed:
            from . import distributed as dist
            self._rank, self._world = dist.get_rank(), dist.get_world_size()
            if seed is None and self.shuffle:  # one order for all ranks: rank 0's draw
                u = np.asarray(rand(2, dtype=float64)) if self._rank == 0 else None
                seed = dist._broadcast_object(None if u is None else [int(x * 2.0**52) for x in u])
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.sampler is not None:
            n = len(self.sampler)
        elif self.distributed:
            n = n // self._world if self.drop_last else -(-n // self._world)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = self._rng
        if rng is None:
            # 2 x 52 random bits from nablagrad's generator seed this epoch's permutation.
            u = np.asarray(rand(2, dtype=float64))
            rng = np.random.default_rng([int(x * 2.0**52) for x in u])
        return rng.permutation(n).astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[Any]:
        if self.sampler is not None:
            order = np.fromiter((operator.index(i) for i in self.sampler), dtype=np.int64)
        else:
            order = self._order(len(self.dataset))
            if self.distributed:
                order = _shard(order, self._rank, self._world, self.drop_last)
        n = len(order)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        gather = getattr(self.dataset, "_gather", None) if isinstance(self.dataset, TensorDataset) else None
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            if gather is not None:
                yield gather(idx)
            else:
                yield _collate([self.dataset[int(i)] for i in idx])
