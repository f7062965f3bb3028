"""float32 transcendental elementwise ops (gelu, gelu-tanh, exp, tanh, sigmoid) vs PyTorch.

    PYTHONPATH=build/dev-NAME/site python benchmarks/elementwise.py [--threads 2,1] [--rounds 7]
                                                                    [--shape 16,64,512]

Both libraries run in the same process at the same thread count, alternating (see
_common.race), and the median over rounds is reported for
  fwd  the op alone (no graph),
  fb   the op on a leaf that requires grad, then backward of a fixed gradient.
ratio = torch_time / nablagrad_time (> 1: we are faster). The machine may be shared: the load
average is printed on top.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import nablagrad as ng
import nablagrad.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import cpu_model, race, try_import_torch  # noqa: E402


OPS = {
    "gelu": (lambda x: F.gelu(x), lambda t, x: t.nn.functional.gelu(x)),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    "exp": (lambda x: x.exp(), lambda t, x: t.exp(x)),
    "tanh": (lambda x: F.tanh(x), lambda t, x: t.tanh(x)),
    "sigmoid": (lambda x: F.sigmoid(x), lambda t, x: t.sigmoid(x)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,1", help="thread counts to measure")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shape", default="16,64,512")
    ap.add_argument("--ops", default=",".join(OPS))
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch = try_import_torch()
    rng = np.random.default_rng(0)
    xn = rng.standard_normal(shape).astype(np.float32) * 2
    gn = rng.standard_normal(shape).astype(np.float32)
    print(f"# {cpu_model()}; load average {os.getloadavg()[0]:.2f}; simd {ng._core._simd_level()}; "
          f"torch {torch.__version__ if torch is not None else 'absent'}; shape {shape} float32; "
          f"rounds {args.rounds}; medians in ms")
    print(f"{'op':<10} {'thr':>3} {'ours fwd':>9} {'torch fwd':>9} {'ratio':>6} {'ours fb':>9} {'torch fb':>9} {'ratio':>6}")
    for threads in (int(t) for t in args.threads.split(",")):
        ng.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        for name in args.ops.split(","):
            ours, theirs = OPS[name]
            x, g = ng.from_numpy(xn), ng.from_numpy(gn)

            def ours_fb(x=x, g=g, ours=ours) -> None:
                leaf = x.detach()
                leaf.requires_grad = True
                ours(leaf).backward(g)

            contenders = {"ours_fwd": (lambda x=x, ours=ours: ours(x)), "ours_fb": ours_fb}
            if torch is not None:
                tx, tg = torch.from_numpy(xn), torch.from_numpy(gn)

                def torch_fwd(tx=tx, theirs=theirs) -> None:
                    with torch.no_grad():
                        theirs(torch, tx)

                def torch_fb(tx=tx, tg=tg, theirs=theirs) -> None:
                    leaf = tx.detach().requires_grad_()
                    theirs(torch, leaf).backward(tg)

                contenders.update({"torch_fwd": torch_fwd, "torch_fb": torch_fb})
            res = race(contenders, rounds=args.rounds, min_time=0.05, settle=0.05)
            tf, tb = res.get("torch_fwd"), res.get("torch_fb")
            rf = f"{tf / res['ours_fwd']:6.2f}" if tf else "     -"
            rb = f"{tb / res['ours_fb']:6.2f}" if tb else "     -"
            print(f"{name:<10} {threads:>3} {res['ours_fwd'] * 1e3:9.3f} {(tf or 0) * 1e3:9.3f} {rf} "
                  f"{res['ours_fb'] * 1e3:9.3f} {(tb or 0) * 1e3:9.3f} {rb}", flush=True)


if __name__ == "__main__":
    main()
