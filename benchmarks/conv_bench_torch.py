"""PyTorch (channels_last, float32) counterpart of benchmarks/conv_bench.cpp.

Times conv2d forward, and forward + backward (input, weight and bias gradients), median of
several repeats, at 1 and 2 threads.   python benchmarks/conv_bench_torch.py [repeats]
"""
import sys
import time

import torch

SHAPES = [  # N, H, W, C -> Q, F, S, P
    (64, 28, 28, 1, 32, 3, 1, 1),
    (32, 32, 32, 64, 64, 3, 1, 1),
    (8, 56, 56, 64, 64, 3, 1, 1),
    (16, 32, 32, 32, 64, 3, 2, 1),
    (8, 64, 64, 3, 32, 7, 2, 3),
]


def median_ms(repeats, fn):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    torch.manual_seed(0)
    print(f"{'shape (N,H,W,C->Q,F,S,P)':28s} thr {'fwd ms':>10s} {'fwd GF/s':>9s} "
          f"{'fwd+bwd ms':>12s} {'f+b GF/s':>9s}")
    for n, h, w, c, q, f, s, p in SHAPES:
        x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last).requires_grad_(True)
        weight = torch.randn(q, c, f, f).to(memory_format=torch.channels_last).requires_grad_(True)
        bias = torch.randn(q, requires_grad=True)
        ho = (h + 2 * p - f) // s + 1
        wo = (w + 2 * p - f) // s + 1
        dy = torch.randn(n, q, ho, wo).to(memory_format=torch.channels_last)
        flops = 2.0 * n * ho * wo * q * f * f * c

        def fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(x, weight, bias, stride=s, padding=p)

        def fwd_bwd():
            y = torch.nn.functional.conv2d(x, weight, bias, stride=s, padding=p)
            x.grad = weight.grad = bias.grad = None
            y.backward(dy)

        for threads in (1, 2):
            torch.set_num_threads(threads)
            tf = median_ms(repeats, fwd)
            ta = median_ms(repeats, fwd_bwd)
            name = f"({n},{h},{w},{c}->{q},{f},{s},{p})"
            print(f"{name:28s} {threads:3d} {tf:10.3f} {flops / tf * 1e-6:9.1f} "
                  f"{ta:12.3f} {3 * flops / ta * 1e-6:9.1f}")


if __name__ == "__main__":
    main()
