"""Data parallelism across processes and machines on MPI (``import nablagrad.distributed as dist``).

    $ mpiexec -n 4 python train.py                 # or plain `python train.py`: world size 1

    >>> dist.init()
    >>> dist.get_rank(), dist.get_world_size()
    (0, 1)
    >>> t = ng.ones(3)
    >>> dist.all_reduce(t)                           # in place: the sum over all ranks
    tensor([1., 1., 1.])

The engine is MPI through ``mpi4py`` (``pip install "nablagrad[mpi]"`` brings mpi4py and the
``mpich`` wheel with its ``mpiexec``; on a cluster, mpi4py built against the site's MPI).
Collectives work on the tensor's own memory: MPI reads and writes its buffer (a broadcast
into a non-contiguous view too, described to MPI by a derived datatype of its strides; a
reduction into one goes through one contiguous copy, since MPI's reduction ops refuse derived
datatypes), so nothing is copied on our side for contiguous tensors. A process started without a launcher is a world of size one
and never initialises MPI, so the same script runs alone or under ``mpiexec``.

:func:`init` also installs the failure rule of MPI programs: an exception that reaches the
top level of any rank prints its traceback (prefixed with the rank) and aborts the whole job
(``MPI_Abort``), so the other ranks never hang in a collective waiting for it.

Everything MPI-specific lives in Python on mpi4py; the one piece inside the engine is the
grad-ready hook (``Tensor.register_post_accumulate_grad_hook``, in the same ``_core``
extension as everything else) that ``nn.parallel.DistributedDataParallel`` starts its
non-blocking all-reduces from. See docs/distributed.md.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from . import _core
from ._tensor import Tensor

__all__ = ["init", "is_available", "is_initialized", "get_rank", "get_world_size", "all_reduce", "broadcast",
           "barrier", "Work", "ReduceOp"]

# Environment variables that MPI launchers set in each process they start (MPICH/Hydra and
# Intel MPI: PMI_*; Open MPI: OMPI_*; PMIx-based launchers; MVAPICH).
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class ReduceOp:
    """Names accepted by ``all_reduce(t, op=...)``."""

    SUM = "sum"
    AVG = "avg"
    PROD = "prod"
    MAX = "max"
    MIN = "min"


_OPS = ("sum", "avg", "prod", "max", "min")


class _State:
    initialized = False
    comm: Any = None  # mpi4py.MPI.Comm (a duplicate of COMM_WORLD), or None for a world of one
    MPI: Any = None  # the mpi4py.MPI module when MPI is in use
    rank = 0
    size = 1
    previous_excepthook: Optional[Callable[..., Any]] = None


_state = _State()


def is_available() -> bool:
    """True when mpi4py can be imported (MPI itself is initialised only by :func:`init`)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _launched() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _launcher_world_size() -> int:
    for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if v in os.environ:
            try:
                return int(os.environ[v])
            except ValueError:
                pass
    return 1


def init(abort_on_error: bool = True) -> None:
    """Joins the job: MPI's COMM_WORLD when started by ``mpiexec``/``mpirun``/``srun``, else a
    world of one process (MPI is not initialised then). Idempotent.

    ``abort_on_error``: an uncaught exception on any rank prints its traceback and calls
    ``MPI_Abort``, ending every rank of the job (instead of leaving the others waiting forever).
    Raises RuntimeError when a launcher started several processes but mpi4py is missing.
    """
    if _state.initialized:
        return
    if _launched():
        try:
            import mpi4py
        except ImportError:
            if _launcher_world_size() > 1:
                raise RuntimeError(
                    f"nablagrad.distributed: this process was started by an MPI launcher with "
                    f"{_launcher_world_size()} processes, but mpi4py is not installed; install it with "
                    f"pip install \"nablagrad[mpi]\" (or mpi4py built against your site's MPI)") from None
        else:
            # Collectives are called from one thread at a time (hooks run on the thread running
            # backward); "serialized" spares MPI the locking of MPI_THREAD_MULTIPLE.
            if not _mpi_already_initialized():
                mpi4py.rc.thread_level = "serialized"
            from mpi4py import MPI
            _state.MPI = MPI
            _state.comm = MPI.COMM_WORLD.Dup()  # our own context: never mixes with the user's messages
            _state.rank = _state.comm.Get_rank()
            _state.size = _state.comm.Get_size()
    _state.initialized = True
    if abort_on_error and _state.size > 1:
        _install_abort_hook()


def _mpi_already_initialized() -> bool:
    mod = sys.modules.get("mpi4py.MPI")
    return mod is not None and mod.Is_initialized()


def _install_abort_hook() -> None:
    previous = sys.excepthook

    def abort_job(exc_type: Any, exc: BaseException, tb: Any) -> None:
        # The message first (flushed), then the whole job ends: a rank that raises must never
        # leave the others blocked in a collective.
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        prefix = f"[rank {_state.rank}/{_state.size}] "
        sys.stderr.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
        sys.stderr.write(f"{prefix}aborting the MPI job (MPI_Abort) because rank {_state.rank} raised "
                         f"{exc_type.__name__}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # The launcher forwards a rank's output and its abort request separately: a CI run
        # (MPICH's Hydra) once acted on the abort first and the job ended with no output at
        # all. A moment's grace lets the message through; the job still ends within a second.
        time.sleep(0.25)
        _state.MPI.COMM_WORLD.Abort(1)

    _state.previous_excepthook = previous
    sys.excepthook = abort_job


def is_initialized() -> bool:
    return _state.initialized


def get_rank() -> int:
    """This process's rank, 0 .. world size - 1 (initialises the world on first use)."""
    init()
    return _state.rank


def get_world_size() -> int:
    """Number of processes in the job (1 without a launcher)."""
    init()
    return _state.size


def _comm() -> Any:
    init()
    return _state.comm


# ----------------------------------------------------------------------------- buffers
def _mpi_type(t: Tensor, what: str) -> Any:
    MPI = _state.MPI
    name = t.dtype.name if hasattr(t.dtype, "name") else str(t.dtype)
    table = {"float32": MPI.FLOAT, "float64": MPI.DOUBLE, "int64": MPI.INT64_T, "bool": MPI.C_BOOL}
    for key, dt in table.items():
        if key in name:
            return dt
    raise TypeError(f"{what}: unsupported dtype {t.dtype!r}")


def _check_writable(t: Tensor, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: expected a Tensor, got {type(t).__name__}")
    if t.requires_grad and _core.is_grad_enabled():
        raise RuntimeError(f"{what}: the tensor requires grad and would be changed in place outside autograd; "
                           f"call it inside `with ng.no_grad():` (as for copy_ on a parameter)")


class _Buffer:
    """An MPI message describing a tensor's memory in place: ``spec`` for mpi4py, plus the
    derived datatype to free once the operation has completed (None for a contiguous one).

    A non-contiguous tensor goes through one contiguous copy (written back by ``release``) when
    it has negative strides (``t[::-1]``) or is the target of a reduction: MPI implementations
    (MPICH among them) refuse the predefined reduction ops on derived datatypes."""

    def __init__(self, t: Tensor, what: str, reduction: bool) -> None:
        base = _mpi_type(t, what)
        self.datatype = None
        self.copy_of: Optional[Tensor] = None
        if any(int(n) > 1 and int(s) == 0 for n, s in zip(t.shape, t.strides)):
            raise ValueError(f"{what}: the tensor of shape {tuple(t.shape)} and strides {tuple(t.strides)} has "
                             f"overlapping elements (a broadcast view); pass a tensor with its own memory")
        if not t.is_contiguous() and (reduction or any(int(s) < 0 for s in t.strides)):
            self.copy_of, t = t, t.detach().contiguous()
        arr = t.detach().numpy()  # shares the tensor's memory, writable
        self.array = arr
        if arr.flags.c_contiguous or arr.size <= 1:
            flat = arr.reshape(-1) if arr.ndim != 1 else arr
            self.spec: List[Any] = [flat, int(arr.size), base]
            return
        item = arr.itemsize
        dims = [(n, s) for n, s in zip(arr.shape, arr.strides) if n != 1]
        # The span from the first to the last element, as one contiguous byte range that MPI
        # walks with a nested hvector datatype of the tensor's own strides.
        span = 1 + sum((n - 1) * s for n, s in dims) // item
        flat = np.lib.stride_tricks.as_strided(arr, shape=(span,), strides=(item,), writeable=True)
        dt = base
        made = []
        for n, s in reversed(dims):
            dt = dt.Create_hvector(n, 1, s)
            made.append(dt)
        dt.Commit()
        for m in made[:-1]:
            m.Free()
        self.datatype = dt
        self.spec = [flat, 1, dt]

    def release(self) -> None:
        """After the operation: frees the datatype, copies a detour's result back."""
        if self.datatype is not None:
            self.datatype.Free()
            self.datatype = None
        if self.copy_of is not None:
            self.copy_of.detach().copy_(self.array)
            self.copy_of = None


class Work:
    """A collective in flight (``async_op=True``): ``wait()`` completes it, ``is_completed()``
    tests it without blocking. The tensor must not be touched until then."""

    def __init__(self, request: Any, finish: Callable[[], None]) -> None:
        self._request = request
        self._finish: Optional[Callable[[], None]] = finish

    def is_completed(self) -> bool:
        if self._finish is None:
            return True
        if self._request is not None and not self._request.Test():
            return False
        self._complete()
        return True

    def wait(self) -> None:
        if self._finish is None:
            return
        if self._request is not None:
            self._request.Wait()
        self._complete()

    def _complete(self) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()


def _mpi_op(op: str, t: Tensor) -> Any:
    MPI = _state.MPI
    if op not in _OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}; choose one of {', '.join(_OPS)}")
    is_bool = "bool" in str(t.dtype)
    if is_bool:
        if op not in ("max", "min"):
            raise TypeError(f"all_reduce: op {op!r} is not defined for bool tensors (use 'max' or 'min')")
        return None if MPI is None else (MPI.LOR if op == "max" else MPI.LAND)
    if op == "avg" and "float" not in str(t.dtype):
        raise TypeError(f"all_reduce: op 'avg' needs a floating-point tensor, got {t.dtype!r}")
    if MPI is None:
        return None
    return {"sum": MPI.SUM, "avg": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}[op]


def all_reduce(tensor: Tensor, op: str = "sum", async_op: bool = False) -> Any:
    """Reduces ``tensor`` over all ranks in place (every rank gets the result) and returns it,
    or a :class:`Work` when ``async_op`` (the result is there after ``wait()``).

    ``op``: "sum", "avg" (floating point), "prod", "max", "min" ("max"/"min" are OR/AND on bool).
    Every rank must call it with a tensor of the same shape and dtype. A tensor that requires
    grad is accepted only inside ``ng.no_grad()``.
    """
    _check_writable(tensor, "all_reduce")
    comm = _comm()
    mpi_op = _mpi_op(op, tensor)
    if comm is None:  # a world of one: the reduction is the tensor itself
        _mpi_type_check_only(tensor, "all_reduce")
        return Work(None, lambda: None) if async_op else tensor
    buf = _Buffer(tensor, "all_reduce", reduction=True)
    size = _state.size

    def finish() -> None:
        if op == "avg":
            np.divide(buf.array, size, out=buf.array)
        buf.release()
        _core._bump_version(tensor)

    if async_op:
        return Work(comm.Iallreduce(_state.MPI.IN_PLACE, buf.spec, op=mpi_op), finish)
    comm.Allreduce(_state.MPI.IN_PLACE, buf.spec, op=mpi_op)
    finish()
    return tensor


def _mpi_type_check_only(t: Tensor, what: str) -> None:
    name = str(t.dtype)
    if not any(k in name for k in ("float32", "float64", "int64", "bool")):
        raise TypeError(f"{what}: unsupported dtype {t.dtype!r}")


def broadcast(tensor: Tensor, src: int = 0, async_op: bool = False) -> Any:
    """Copies rank ``src``'s ``tensor`` into the tensor of every other rank, in place; returns
    it (or a :class:`Work` when ``async_op``). Shapes and dtypes must agree on all ranks."""
    _check_writable(tensor, "broadcast")
    comm = _comm()
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < _state.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {_state.size}), got {src!r}")
    if comm is None:
        _mpi_type_check_only(tensor, "broadcast")
        return Work(None, lambda: None) if async_op else tensor
    buf = _Buffer(tensor, "broadcast", reduction=False)

    def finish() -> None:
        buf.release()
        _core._bump_version(tensor)

    if async_op:
        return Work(comm.Ibcast(buf.spec, root=int(src)), finish)
    comm.Bcast(buf.spec, root=int(src))
    finish()
    return tensor


def barrier() -> None:
    """Blocks until every rank has reached it."""
    comm = _comm()
    if comm is not None:
        comm.Barrier()


def _allgather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (small picklable values: shapes, names), in rank order."""
    comm = _comm()
    if comm is None:
        return [obj]
    return comm.allgather(obj)


def _broadcast_object(obj: Any, src: int = 0) -> Any:
    comm = _comm()
    if comm is None:
        return obj
    return comm.bcast(obj, root=src)


def _test_requests(requests: List[Any]) -> None:
    """Drives MPI's progress engine on requests in flight (MPICH progresses non-blocking
    collectives only inside MPI calls)."""
    if requests and _state.MPI is not None:
        _state.MPI.Request.Testall(requests)


def _iallreduce_array(arr: np.ndarray) -> Any:
    """Starts a sum all-reduce of a contiguous NumPy array in place; returns the request."""
    return _comm().Iallreduce(_state.MPI.IN_PLACE, arr, op=_state.MPI.SUM)


def _wait_all(requests: List[Any]) -> None:
    if requests:
        _state.MPI.Request.Waitall(requests)


def _shapes_signature(named: List[Tuple[str, Tensor]]) -> List[Tuple[str, Tuple[int, ...], str]]:
    return [(name, tuple(int(d) for d in t.shape), str(t.dtype)) for name, t in named]
