"""Data-parallel training: ``DistributedDataParallel`` (``ng.nn.parallel``).

    dist.init()
    model = nn.parallel.DistributedDataParallel(Net())      # rank 0's weights everywhere
    loader = ng.data.DataLoader(ds, batch_size=32, shuffle=True, seed=0, distributed=True)
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()                                      # gradients averaged over ranks
        opt.step()

How the gradients are averaged: the parameters are grouped in buckets (in reverse order of
registration, roughly the order backward produces their gradients) of about
``bucket_cap_mb``. A grad-ready hook on every parameter (the engine calls it once per
backward, as soon as that parameter's gradient is final, even for a parameter used several
times in the graph) copies the gradient into its bucket; when a bucket is complete its
non-blocking all-reduce (``MPI_Iallreduce``) starts at once, while backward goes on with the
layers below. Buckets start in the same order on every rank (bucket k waits for k - 1), as
MPI requires. When backward has finished, a callback queued by the first hook starts the
buckets still left (parameters that got no gradient in this pass), waits for all of them
and gives each parameter the average, as its ``.grad`` (a view of the bucket's buffer).

Parameters unused on some ranks contribute zeros there; each bucket also sums one "used"
flag per parameter, so a parameter no rank used keeps ``.grad`` None (no optimizer step),
as in PyTorch. ``no_sync()`` skips the averaging for gradient accumulation; the next
synchronised backward averages everything accumulated since.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from .. import _core
from .. import distributed as dist
from .._tensor import Tensor, from_numpy, no_grad
from .module import Module

__all__ = ["DistributedDataParallel"]


class _Bucket:
    """Parameters whose gradients travel in one all-reduce: one flat buffer of their gradients
    followed by one "used on this rank" flag per parameter."""

    def __init__(self, index: int, params: List[int], sizes: List[int], np_dtype: np.dtype) -> None:
        self.index = index
        self.params = params  # indices into DistributedDataParallel._params
        self.offsets: List[int] = []
        off = 0
        for n in sizes:
            self.offsets.append(off)
            off += n
        self.numel = off  # gradient elements; the flags follow
        self.sizes = sizes
        self.np_dtype = np_dtype
        self.buffer: Optional[np.ndarray] = None
        self.filled: List[bool] = []
        self.pending = 0
        self.request: Any = None
        self.launched_at = 0.0

    def begin(self) -> None:
        self.buffer = np.empty(self.numel + len(self.params), dtype=self.np_dtype)
        self.buffer[self.numel:] = 0
        self.filled = [False] * len(self.params)
        self.pending = len(self.params)
        self.request = None

    def nbytes(self) -> int:
        return (self.numel + len(self.params)) * self.np_dtype.itemsize


class DistributedDataParallel(Module):
    """Wraps ``module`` for data-parallel training across the ranks of ``ng.distributed``.

    At construction every rank checks that all ranks hold the same parameter and buffer names,
    shapes and dtypes (ValueError naming the first difference otherwise), then takes rank 0's
    values. ``forward`` calls the module (re-broadcasting rank 0's buffers first when
    ``broadcast_buffers``: BatchNorm statistics stay identical); every ``backward()`` through
    its output averages the gradients over the ranks, overlapped with the rest of backward
    (see the module docstring). ``bucket_cap_mb``: the size of one all-reduce, in MiB.
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got {type(module).__name__}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be positive, got {bucket_cap_mb!r}")
        dist.init()
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.require_backward_grad_sync = True
        self.world_size = dist.get_world_size()
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self._params: List[Tensor] = [p for _, p in named]
        self._names: List[str] = [n for n, _ in named]
        self._check_same_everywhere()
        self._broadcast_state()
        self.buckets = self._make_buckets(float(bucket_cap_mb) * 2**20)
        self._bucket_of = {}
        for b in self.buckets:
            for j, i in enumerate(b.params):
                self._bucket_of[i] = (b, j)
        self._sync_this_graph = True
        self._active = False  # a synchronised backward is in progress
        self._next_launch = 0
        self._ready: List[bool] = []
        self._in_flight: List[Any] = []
        self.last_sync: Dict[str, float] = {}
        handles = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self._params)]
        weakref.finalize(self, _remove_hooks, handles)  # the hooks go with the wrapper

    # ------------------------------------------------------------------ construction
    def _check_same_everywhere(self) -> None:
        mine = (dist._shapes_signature(list(self.module.named_parameters())),
                dist._shapes_signature(list(self.module.named_buffers())))
        everyone = dist._allgather_object(mine)
        for rank, theirs in enumerate(everyone):
            if theirs == everyone[0]:
                continue
            for kind, a, b in (("parameter", everyone[0][0], theirs[0]), ("buffer", everyone[0][1], theirs[1])):
                for x, y in zip(a, b):
                    if x != y:
                        raise ValueError(
                            f"DistributedDataParallel: {kind} {x[0]!r} is {x[2]} of shape {x[1]} on rank 0 "
                            f"but {y[0]!r} is {y[2]} of shape {y[1]} on rank {rank}; every rank must build "
                            f"the same model")
                if len(a) != len(b):
                    raise ValueError(f"DistributedDataParallel: rank 0 has {len(a)} {kind}s but rank {rank} has "
                                     f"{len(b)}; every rank must build the same model")

    def _broadcast_state(self) -> None:
        if self.world_size == 1:
            return
        with no_grad():
            for _, p in self.module.named_parameters():
                dist.broadcast(p, 0)
            for _, b in self.module.named_buffers():
                dist.broadcast(b, 0)

    def _make_buckets(self, cap_bytes: float) -> List[_Bucket]:
        buckets: List[_Bucket] = []
        current: List[int] = []
        current_bytes = 0
        current_dtype: Optional[np.dtype] = None

        def close() -> None:
            nonlocal current, current_bytes
            if current:
                sizes = [int(self._params[i].numel()) for i in current]
                assert current_dtype is not None
                buckets.append(_Bucket(len(buckets), current, sizes, current_dtype))
            current, current_bytes = [], 0

        for i in reversed(range(len(self._params))):
            p = self._params[i]
            dt = np.dtype(np.asarray(p.detach()).dtype)
            nbytes = int(p.numel()) * dt.itemsize
            if current and (dt != current_dtype or current_bytes + nbytes > cap_bytes):
                close()
            current_dtype = dt
            current.append(i)
            current_bytes += nbytes
        close()
        return buckets

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._sync_this_graph = self.require_backward_grad_sync
        self._active = False  # a backward that raised never finished its sync: start afresh
        if self.broadcast_buffers and self.world_size > 1:
            with no_grad():
                for b in self.module.buffers():
                    dist.broadcast(b, 0)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside: forward/backward accumulate gradients locally, without communication (for
        gradient accumulation); the first synchronised backward after it averages the total."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    # ------------------------------------------------------------------ backward
    def _make_hook(self, index: int) -> Any:
        ref = weakref.ref(self)  # the engine's hook table must not keep the wrapper alive

        def hook(param: Tensor) -> None:
            ddp = ref()
            if ddp is not None:
                ddp._grad_ready(index, param)
        return hook

    def _begin_sync(self) -> None:
        self._active = True
        self._next_launch = 0
        self._ready = [False] * len(self.buckets)
        self._in_flight = []
        self._t_backward = time.perf_counter()
        for b in self.buckets:
            b.begin()
        _core._queue_backward_callback(self._finish_sync)

    def _grad_ready(self, index: int, param: Tensor) -> None:
        if not self._sync_this_graph or self.world_size == 1:
            return
        if not self._active:
            self._begin_sync()
        bucket, j = self._bucket_of[index]
        self._fill(bucket, j, param.grad)
        bucket.pending -= 1
        if bucket.pending == 0:
            self._ready[bucket.index] = True
            self._launch_ready()
        dist._test_requests(self._in_flight)

    def _fill(self, bucket: _Bucket, j: int, grad: Optional[Tensor]) -> None:
        assert bucket.buffer is not None
        off, n = bucket.offsets[j], bucket.sizes[j]
        bucket.filled[j] = True
        if grad is None:
            bucket.buffer[off:off + n] = 0
        else:
            bucket.buffer[off:off + n] = np.asarray(grad).reshape(-1)
            bucket.buffer[bucket.numel + j] = 1

    def _launch_ready(self) -> None:
        while self._next_launch < len(self.buckets) and self._ready[self._next_launch]:
            b = self.buckets[self._next_launch]
            assert b.buffer is not None
            b.launched_at = time.perf_counter()
            b.request = dist._iallreduce_array(b.buffer)
            self._in_flight.append(b.request)
            self._next_launch += 1

    def _finish_sync(self) -> None:
        """After backward: start the buckets still waiting (gradients that never came: zeros,
        or a gradient accumulated earlier under no_sync), wait for all, then hand out averages."""
        t_end_backward = time.perf_counter()
        try:
            for b in self.buckets[self._next_launch:]:
                if b.pending:
                    for j, i in enumerate(b.params):
                        if not b.filled[j]:
                            self._fill(b, j, self._params[i].grad)
                    b.pending = 0
                self._ready[b.index] = True
            self._launch_ready()
            t0 = time.perf_counter()
            dist._wait_all(self._in_flight)
            t_wait = time.perf_counter() - t0
            scale = 1.0 / self.world_size
            for b in self.buckets:
                assert b.buffer is not None
                grads = b.buffer[:b.numel]
                grads *= scale
                for j, i in enumerate(b.params):
                    if b.buffer[b.numel + j] == 0:  # no rank produced a gradient for it
                        continue
                    p = self._params[i]
                    off, n = b.offsets[j], b.sizes[j]
                    p.grad = from_numpy(grads[off:off + n].reshape(tuple(p.shape)))
                b.buffer = None
            self.last_sync = {"backward_s": t_end_backward - self._t_backward, "wait_s": t_wait,
                              "buckets": float(len(self.buckets)),
                              "bytes": float(sum(b.nbytes() for b in self.buckets))}
        finally:
            self._active = False
            self._in_flight = []


def _remove_hooks(handles: List[Any]) -> None:
    for h in handles:
        h.remove()
