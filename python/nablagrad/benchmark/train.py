"""Training epoch time of the demo's three models (python -m nablagrad.demo) vs the same models
in PyTorch: same data, batch size, Adam hyper-parameters and threads, the same initial weights.

    python -m nablagrad.benchmark.train [--models cnn,lstm,transformer] [--rounds 5] [--threads N]
    python benchmarks/train.py ...           (the same, from a checkout)

The models are nablagrad.demo's LeNet (NHWC), LSTMClassifier and TransformerClassifier; their
PyTorch twins below have the same layers in the same order, and start from nablagrad's weights
(converted to PyTorch's layouts: NCHW kernels, the flatten order of the first Linear, the
packed in_proj of attention), which is checked by comparing the two models' outputs before
timing. An epoch is the demo's: the 1,437 training digits of the 80/20 split, batch 32 (45
steps), forward, cross-entropy, backward, Adam step; the batches of each epoch are drawn in
advance and fed to both libraries alike (NumPy slices wrapped without copying). The CNN's
PyTorch twin runs in NCHW and, unless --quick, also in channels_last; the faster is the
reference. The contenders alternate one epoch each per round (who goes first alternates too),
after an untimed warm-up epoch and a short pause before each epoch; the figure is the median.
Targets (issue 9): CNN at least 2x PyTorch, LSTM and transformer at least 1x.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad.demo.__main__ import DEFAULTS, MODELS, build_model, split_digits

from ._common import alternate, machine_line, try_import_torch
from ._report import Config, Row

TARGETS = {"cnn": 2.0, "lstm": 1.0, "transformer": 1.0}


# ----------------------------------------------------------------------------- PyTorch twins
def torch_twin(torch: Any, name: str, model: ng.nn.Module, channels_last: bool = False) -> Any:
    """The PyTorch version of the demo's `name` model, holding `model`'s weights."""
    nn = torch.nn

    def t(a: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(np.array(a, dtype=np.float32)))

    if name == "cnn":
        c1 = model.features[0].weight.shape[0]
        c2 = model.features[2].weight.shape[0]
        hidden = model.classifier[0].weight.shape[0]

        class LeNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
                self.classifier = nn.Sequential(nn.Linear(4 * c2, hidden), nn.ReLU(), nn.Dropout(0.2),
                                                nn.Linear(hidden, 10))

            def forward(self, x: Any) -> Any:
                return self.classifier(self.features(x))

        tm = LeNet()
        with torch.no_grad():
            for src, dst in ((model.features[0], tm.features[0]), (model.features[2], tm.features[3])):
                dst.weight.copy_(t(np.asarray(src.weight).transpose(0, 3, 1, 2)))  # (Q,FH,FW,C) -> (Q,C,FH,FW)
                dst.bias.copy_(t(src.bias))
            # ours flattens (H, W, C) = (2, 2, c2), PyTorch (C, H, W)
            w1 = np.asarray(model.classifier[0].weight).reshape(hidden, 2, 2, c2).transpose(0, 3, 1, 2)
            tm.classifier[0].weight.copy_(t(w1.reshape(hidden, 4 * c2)))
            tm.classifier[0].bias.copy_(t(model.classifier[0].bias))
            tm.classifier[3].weight.copy_(t(model.classifier[2].weight))
            tm.classifier[3].bias.copy_(t(model.classifier[2].bias))
        return tm.to(memory_format=torch.channels_last) if channels_last else tm

    if name == "lstm":
        hidden = model.head.weight.shape[1]

        class LSTMClassifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(8, hidden, batch_first=True)
                self.head = nn.Linear(hidden, 10)

            def forward(self, x: Any) -> Any:
                out, _ = self.lstm(x.reshape(x.shape[0], 8, 8))
                return self.head(out[:, -1])

        tm = LSTMClassifier()
        with torch.no_grad():
            for (_, p), q in zip(model.named_parameters(), tm.parameters()):
                q.copy_(t(p))
        return tm

    if name == "transformer":
        dim = model.embed.weight.shape[0]
        heads = model.blocks[0].attn.num_heads
        depth = len(model.blocks)

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm1 = nn.LayerNorm(dim)
                self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
                self.norm2 = nn.LayerNorm(dim)
                self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

            def forward(self, x: Any) -> Any:
                h = self.norm1(x)
                a, _ = self.attn(h, h, h, need_weights=False)
                x = x + a
                return x + self.mlp(self.norm2(x))

        class TransformerClassifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Linear(8, dim)
                self.pos = nn.Parameter(torch.zeros(8, dim))
                self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
                self.norm = nn.LayerNorm(dim)
                self.head = nn.Linear(dim, 10)

            def forward(self, x: Any) -> Any:
                tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos
                return self.head(self.norm(self.blocks(tokens)).mean(dim=1))

        tm = TransformerClassifier()

        def lin(src: Any, dst: Any) -> None:
            dst.weight.copy_(t(src.weight))
            dst.bias.copy_(t(src.bias))

        with torch.no_grad():
            lin(model.embed, tm.embed)
            tm.pos.copy_(t(model.pos))
            for ours, theirs in zip(model.blocks, tm.blocks):
                lin(ours.norm1, theirs.norm1)
                lin(ours.norm2, theirs.norm2)
                a = ours.attn
                theirs.attn.in_proj_weight.copy_(t(np.concatenate(
                    [np.asarray(a.q_proj.weight), np.asarray(a.k_proj.weight), np.asarray(a.v_proj.weight)])))
                theirs.attn.in_proj_bias.copy_(t(np.concatenate(
                    [np.asarray(a.q_proj.bias), np.asarray(a.k_proj.bias), np.asarray(a.v_proj.bias)])))
                lin(a.out_proj, theirs.attn.out_proj)
                lin(ours.mlp[0], theirs.mlp[0])
                lin(ours.mlp[1], theirs.mlp[2])
            lin(model.norm, tm.norm)
            lin(model.head, tm.head)
        return tm

    raise ValueError(f"unknown model {name!r}")


def check_twins(torch: Any, name: str, model: ng.nn.Module, tm: Any, x: np.ndarray) -> float:
    """Largest |difference| of the two models' eval-mode logits on x (they must agree)."""
    model.eval()
    tm.eval()
    with ng.no_grad():
        ours = np.asarray(model(ng.from_numpy(np.ascontiguousarray(x))))
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x))
        if name == "cnn":
            xt = xt.permute(0, 3, 1, 2)
        theirs = tm(xt).numpy()
    model.train()
    tm.train()
    return float(np.max(np.abs(ours - theirs)))


# ----------------------------------------------------------------------------- epochs
def make_batches(n: int, batch_size: int, epochs: int, seed: int, steps: Optional[int]) -> List[List[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        idx = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
        out.append(idx[:steps] if steps else idx)
    return out


def measure_model(name: str, cfg: Config, rounds: int, steps: Optional[int] = None,
                  channels_last: bool = True, seed: int = 0) -> Dict[str, Any]:
    """Median epoch seconds of `name` for nablagrad and the PyTorch twin(s), with the twins'
    agreement and the mean losses of the last epoch."""
    torch = cfg.torch
    hp = DEFAULTS[name]
    bs, lr = int(hp["batch_size"]), float(hp["lr"])
    x_train, y_train, _, _ = split_digits(seed)
    batches = make_batches(len(y_train), bs, rounds + 1, seed, steps)
    ng.set_num_threads(cfg.threads)
    ng.manual_seed(seed)
    model = build_model(name)
    model.train()
    opt = ng.optim.Adam(model.parameters(), lr=lr)
    losses: Dict[str, float] = {}

    def epoch_ours(e: int) -> None:
        total = 0.0
        for idx in batches[e]:
            xb, yb = ng.from_numpy(x_train[idx]), ng.from_numpy(y_train[idx])
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses["nablagrad"] = total / len(batches[e])

    contenders: Dict[str, Callable[[int], object]] = {"nablagrad": epoch_ours}
    agreement = None
    if torch is not None:
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(seed)
        layouts = [False, True] if (name == "cnn" and channels_last) else [False]
        for cl in layouts:
            tm = torch_twin(torch, name, model, channels_last=cl)
            if agreement is None:
                agreement = check_twins(torch, name, model, tm, x_train[:64])
            topt = torch.optim.Adam(tm.parameters(), lr=lr)
            key = "torch channels_last" if cl else "torch"

            def epoch_torch(e: int, tm: Any = tm, topt: Any = topt, key: str = key, cl: bool = cl) -> None:
                total = 0.0
                for idx in batches[e]:
                    xb = torch.from_numpy(x_train[idx])
                    if name == "cnn":
                        xb = xb.permute(0, 3, 1, 2)  # NHWC data as an NCHW view
                        if not cl:
                            xb = xb.contiguous()
                    yb = torch.from_numpy(y_train[idx])
                    loss = torch.nn.functional.cross_entropy(tm(xb), yb)
                    topt.zero_grad()
                    loss.backward()
                    topt.step()
                    total += loss.item()
                losses[key] = total / len(batches[e])

            contenders[key] = epoch_torch
        if agreement is not None and agreement > 1e-3:
            raise AssertionError(f"{name}: the PyTorch twin's logits differ from nablagrad's by {agreement:g}")
    med, samples = alternate(contenders, rounds, settle=0.05 if cfg.smoke else 0.3)
    return {"median": med, "samples": samples, "agreement": agreement, "losses": losses,
            "steps": len(batches[0]), "batch_size": bs, "lr": lr, "images": sum(len(i) for i in batches[0])}


def run(cfg: Config, models: Sequence[str] = MODELS) -> List[Row]:
    rounds = 1 if cfg.smoke else 3 if cfg.quick else 5
    steps = 2 if cfg.smoke else 15 if cfg.quick else None
    rows = []
    for name in models:
        r = measure_model(name, cfg, rounds, steps=steps, channels_last=not cfg.quick and not cfg.smoke)
        med = r["median"]
        full_steps = -(-len(split_digits(0)[1]) // r["batch_size"])
        scale = full_steps / r["steps"]  # a partial epoch (--quick) is scaled to a whole one
        ours = med["nablagrad"] * scale
        torch_keys = [k for k in med if k.startswith("torch")]
        note = f"batch {r['batch_size']}, Adam lr {r['lr']:g}, target {TARGETS[name]:g}x"
        if scale != 1:
            note += f"; {r['steps']} of {full_steps} steps, scaled"
        if torch_keys:
            best = min(torch_keys, key=lambda k: med[k])
            if len(torch_keys) > 1:
                note += f"; ref = {best.replace('torch', 'PyTorch')} (faster layout)"
            rows.append(Row("train", f"{name} epoch", ours, "PyTorch", med[best] * scale, note))
        else:
            rows.append(Row("train", f"{name} epoch", ours, note=note))
        cfg.log(f"  train {name}: epoch {ours:.3f} s" +
                (f", PyTorch {min(med[k] for k in torch_keys) * scale:.3f} s" if torch_keys else ""))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nablagrad.benchmark.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: cnn,lstm,transformer")
    ap.add_argument("--rounds", type=int, default=5, help="timed epochs per contender (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both libraries")
    ap.add_argument("--quick", action="store_true", help="15 steps per epoch, 3 rounds, NCHW only")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    torch = try_import_torch()
    cfg = Config(threads=args.threads, quick=args.quick, torch=torch, verbose=False)
    print(machine_line(args.threads, torch))
    rounds = 3 if args.quick else args.rounds
    print(f"{'model':<12} {'contender':<22} {'epoch s':>8} {'min s':>7} {'loss':>7} {'ratio':>7} {'target':>7}")
    for name in models:
        r = measure_model(name, cfg, rounds, steps=15 if args.quick else None, channels_last=not args.quick)
        med, samples = r["median"], r["samples"]
        torch_keys = [k for k in med if k.startswith("torch")]
        best = min(torch_keys, key=lambda k: med[k]) if torch_keys else None
        for k in med:
            ratio = f"{med[best] / med[k]:.2f}x" if best and k == "nablagrad" else ""
            target = f">= {TARGETS[name]:g}x" if k == "nablagrad" and best else ""
            print(f"{name:<12} {k:<22} {med[k]:8.3f} {min(samples[k]):7.3f} {r['losses'][k]:7.4f} {ratio:>7} "
                  f"{target:>7}", flush=True)
        extra = f"; twins agree to {r['agreement']:.1e}" if r["agreement"] is not None else ""
        print(f"{'':<12} ({r['steps']} steps of batch {r['batch_size']}, Adam lr {r['lr']:g}, "
              f"{rounds} rounds{extra})")


if __name__ == "__main__":
    main()
