"""Run under `mpiexec -n 2 ... failure.py MODE`: rank 1 raises while rank 0 is blocked in a
collective; the job must end at once (MPI_Abort from the excepthook), showing the message.
MODE "toplevel": the exception reaches the top level directly; "backward": it is raised by a
grad-ready hook inside DistributedDataParallel's backward."""

import sys

import nablagrad as ng
import nablagrad.distributed as dist
import nablagrad.functional as F
from nablagrad import nn

mode = sys.argv[1]
ng.set_num_threads(1)
dist.init()
rank = dist.get_rank()
model = nn.parallel.DistributedDataParallel(nn.Linear(4, 3))
if mode == "toplevel":
    if rank == 1:
        raise ValueError("rank 1 failed on purpose")
    dist.all_reduce(ng.ones(10))  # rank 1 never joins: only the abort ends this
elif mode == "backward":
    if rank == 1:
        def boom(p):
            raise ValueError("rank 1 failed on purpose inside backward")
        model.module.weight.register_post_accumulate_grad_hook(boom)
    F.mse_loss(model(ng.ones((2, 4))), ng.zeros((2, 3))).backward()
    dist.all_reduce(ng.ones(10))
print("unreachable: rank", rank, "finished", flush=True)
