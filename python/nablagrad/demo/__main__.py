"""Train a CNN, an LSTM or a small transformer on the shipped 8x8 digits.

    python -m nablagrad.demo [--model cnn|lstm|transformer] [--epochs N] [--threads T]
                             [--out DIR] [--resume PATH] [--seed S] [--distributed]
    mpiexec -n 2 python -m nablagrad.demo --distributed      # data parallel over 2 processes

The 1,797 digits are split 80/20 (train / held-out test) by a permutation drawn from --seed;
training is Adam on cross-entropy with a cosine-decayed learning rate.
Each epoch shuffles the training set with a generator seeded from (seed, epoch), and dropout
draws from nablagrad's generator reseeded the same way, so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have. Writes OUT/digits_<model>.safetensors
(model and Adam state, epoch, history; ``ng.load`` reads it back) and OUT/digits_<model>.png
(loss and accuracy per epoch and a grid of misclassified test digits).
With --distributed (under mpiexec), every rank trains a DistributedDataParallel replica on its
shard of each epoch (--batch-size samples per rank); rank 0 alone prints and writes the files,
which are the same as a single-process run's (the plain model's weights).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import nablagrad as ng
import nablagrad.functional as F
from nablagrad import nn
from nablagrad.datasets import load_digits

MODELS = ("cnn", "lstm", "transformer")
# Per model: epochs, batch size, Adam learning rate (tuned for >= 97% / 95% / 95% held-out).
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "cnn": {"epochs": 15, "batch_size": 32, "lr": 3e-3},
    "lstm": {"epochs": 30, "batch_size": 32, "lr": 5e-3},
    "transformer": {"epochs": 15, "batch_size": 32, "lr": 3e-3},
}
TITLES = {"cnn": "LeNet-style CNN", "lstm": "LSTM (rows as 8 steps)",
          "transformer": "transformer encoder (rows as tokens)"}
TEST_FRACTION = 0.2


# ----------------------------------------------------------------------------- features
def _need(owner: Any, name: str, what: str) -> Any:
    """``owner.name``, or a clear error saying which nablagrad feature this option needs."""
    obj = getattr(owner, name, None)
    if obj is None:
        raise RuntimeError(f"{what} needs {owner.__name__}.{name}, which this build of nablagrad does not have")
    return obj


# ----------------------------------------------------------------------------- models
class LeNet(nn.Module):
    """LeNet-style CNN on NHWC (N, 8, 8, 1) images."""

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, activation="relu"), nn.MaxPool2d(2),   # (N, 4, 4, c1)
            nn.Conv2d(c1, c2, 3, padding=1, activation="relu"), nn.MaxPool2d(2),  # (N, 2, 2, c2)
            nn.Flatten())                                                          # (N, 4 * c2)
        self.classifier = nn.Sequential(
            nn.Linear(4 * c2, hidden, activation="relu"), nn.Dropout(0.2), nn.Linear(hidden, 10))

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        return self.classifier(self.features(x))


class LSTMClassifier(nn.Module):
    """Each image as a sequence of 8 rows (steps) of 8 pixels; the last hidden state -> 10 logits."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.lstm = _need(nn, "LSTM", "--model lstm")(8, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        out, _ = self.lstm(x.reshape(x.shape[0], 8, 8))  # (N, T=8, H)
        return self.head(out[:, -1])


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _need(nn, "MultiheadAttention", "--model transformer")(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim, activation="gelu"), nn.Linear(2 * dim, dim))

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        return x + self.mlp(self.norm2(x))


class TransformerClassifier(nn.Module):
    """The 8 image rows as tokens (8 pixels each), a learned position embedding, ``depth``
    encoder blocks, mean over tokens -> 10 logits."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 1) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        with ng.no_grad():
            self.pos = nn.Parameter(ng.randn(8, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: ng.Tensor) -> ng.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos  # (N, 8, dim)
        return self.head(self.norm(self.blocks(tokens)).mean(axis=1))


def build_model(name: str) -> nn.Module:
    if name == "cnn":
        return LeNet()
    if name == "lstm":
        return LSTMClassifier()
    if name == "transformer":
        return TransformerClassifier()
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# ----------------------------------------------------------------------------- data
def split_digits(seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): a deterministic 80/20 split drawn from ``seed``."""
    images, labels = load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return (np.ascontiguousarray(images[train]), np.ascontiguousarray(labels[train]),
            np.ascontiguousarray(images[test]), np.ascontiguousarray(labels[test]))


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (1-based): ``base`` decayed to 2% along a half cosine."""
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(epochs, 1))))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted labels, in eval mode and without recording a graph."""
    was_training = model.training
    model.eval()
    preds = []
    with ng.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(ng.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
            preds.append(np.asarray(logits).argmax(axis=1))
    model.train(was_training)
    return np.concatenate(preds)


# ----------------------------------------------------------------------------- plot
def save_figure(path: str, model_name: str, history: Dict[str, List[float]], x_test: np.ndarray,
                y_test: np.ndarray, pred: np.ndarray, seconds: float) -> bool:
    """Loss/accuracy curves and up to 16 misclassified test digits; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    acc = float(np.mean(pred == y_test))
    wrong = np.flatnonzero(pred != y_test)
    shown = wrong[:16]
    rows = 2 if len(shown) > 8 else 1
    fig = plt.figure(figsize=(12, 6.6 + 1.8 * rows), layout="constrained")
    subfigs: Any = fig.subfigures(2, 1, height_ratios=[4.6, 0.3 + 1.8 * rows])
    top, bottom = subfigs
    top.suptitle(f"nablagrad digits demo: {TITLES[model_name]}\n"
                 f"held-out accuracy {100 * acc:.1f}% ({int(np.sum(pred == y_test))}/{len(y_test)}) after "
                 f"{len(epochs)} epochs, {seconds:.1f} s of training", fontsize=13, fontweight="bold")
    ax_loss, ax_acc = top.subplots(1, 2)
    ax_loss.plot(epochs, history["train_loss"], "o-", color="tab:blue", label="train loss")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (log scale)")
    ax_loss.set_title("training loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(epochs, 100 * np.asarray(history["train_acc"]), "o-", color="tab:gray", label="train accuracy")
    ax_acc.plot(epochs, 100 * np.asarray(history["test_acc"]), "o-", color="tab:green",
                label="held-out test accuracy")
    lo = min(80.0, 100 * min(history["test_acc"] + history["train_acc"]) - 2)
    ax_acc.set_ylim(max(lo, 0.0), 100.5)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.annotate(f"{100 * history['test_acc'][-1]:.1f}%", (epochs[-1], 100 * history["test_acc"][-1]),
                    textcoords="offset points", xytext=(0, -16), ha="center", color="tab:green")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    bottom.suptitle(f"misclassified held-out digits ({len(shown)} of {len(wrong)} shown)", fontsize=12)
    cells = bottom.subplots(rows, 8, squeeze=False)
    for k, ax in enumerate(cells.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < len(shown):
            i = shown[k]
            ax.imshow(x_test[i, :, :, 0], cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_title(f"pred {pred[i]} / true {y_test[i]}", color="tab:red", fontsize=11)
        else:
            ax.axis("off")
    if len(wrong) == 0:
        bottom.text(0.5, 0.5, "none: every test digit is classified correctly", ha="center", va="center",
                    fontsize=13)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main
class _Progress:
    """A tqdm bar over all training steps when tqdm is installed and stderr is a terminal,
    else nothing; per-epoch summary lines go through ``write`` either way."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True)

    def update(self, n: int, postfix: Dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        elif self.enabled:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m nablagrad.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, default=None,
                    help="cnn (default), lstm or transformer (with --resume: the checkpoint's)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="total number of epochs (default per model: " +
                    ", ".join(f"{m} {d['epochs']}" for m, d in DEFAULTS.items()) +
                    "); with --resume, training continues up to this epoch")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (default per model)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: nablagrad's)")
    ap.add_argument("--out", default="demo-output", help="output folder (default: ./demo-output)")
    ap.add_argument("--resume", metavar="PATH", default=None,
                    help="continue from a checkpoint written by this demo (model, optimizer, epoch)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the split, init and shuffling (default 0)")
    ap.add_argument("--distributed", action="store_true",
                    help="data parallel over the ranks of an MPI launch (mpiexec -n 2 python -m nablagrad.demo "
                    "--distributed); --batch-size is per rank; rank 0 prints and writes")
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.batch_size is not None and args.batch_size <= 0:
        ap.error("--batch-size must be positive")
    if args.threads is not None and args.threads <= 0:
        ap.error("--threads must be positive")
    return args


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs the demo; returns a summary (model, accuracy, epochs, seconds, paths)."""
    args = parse_args(argv)
    ckpt: Optional[Dict[str, Any]] = None
    if args.resume is not None:
        try:
            ckpt = ng.load(args.resume)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot resume: {e}") from None
        keys = {"model", "optim", "epoch", "model_name", "seed", "batch_size", "history"}
        if not isinstance(ckpt, dict) or not keys <= set(ckpt):
            raise SystemExit(f"error: {args.resume} is not a checkpoint written by nablagrad.demo")
        if args.model is not None and args.model != ckpt["model_name"]:
            raise SystemExit(f"error: {args.resume} holds a {ckpt['model_name']} model, not {args.model}")
        if args.seed is not None and args.seed != ckpt["seed"]:
            raise SystemExit(f"error: {args.resume} was trained with --seed {ckpt['seed']} (its train/test "
                             f"split depends on it), not {args.seed}")
    model_name = ckpt["model_name"] if ckpt is not None else (args.model or "cnn")
    defaults = DEFAULTS[model_name]
    seed = ckpt["seed"] if ckpt is not None else (0 if args.seed is None else args.seed)
    epochs = defaults["epochs"] if args.epochs is None else args.epochs
    batch_size = args.batch_size or (ckpt["batch_size"] if ckpt is not None else defaults["batch_size"])
    lr = args.lr if args.lr is not None else defaults["lr"]
    if args.threads is not None:
        ng.set_num_threads(args.threads)
    rank, world = 0, 1
    if args.distributed:
        ng.distributed.init()
        rank, world = ng.distributed.get_rank(), ng.distributed.get_world_size()

    def say(line: str) -> None:  # rank 0 alone speaks
        if rank == 0:
            print(line, flush=True)

    x_train, y_train, x_test, y_test = split_digits(seed)
    ng.manual_seed(seed)
    model = build_model(model_name)
    opt = ng.optim.Adam(model.parameters(), lr=lr)
    start_epoch = 0
    history: Dict[str, List[float]] = {"train_loss": [], "train_acc": [], "test_acc": [], "seconds": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        if args.lr is None and "lr" in ckpt:
            lr = float(ckpt["lr"])
        start_epoch = int(ckpt["epoch"])
        history = {k: [float(v) for v in ckpt["history"][k]] for k in history}
    n_params = sum(int(p.numel()) for p in model.parameters())
    say(f"digits: {len(y_train)} train / {len(y_test)} held-out test images {x_train.shape[1:]} (NHWC); "
        f"model {model_name} ({n_params:,} parameters); {ng.get_num_threads()} threads" +
        (f"; data parallel over {world} ranks of {batch_size} samples" if args.distributed else ""))
    if ckpt is not None:
        say(f"resumed from {args.resume} at epoch {start_epoch}")
    if start_epoch >= epochs:
        say(f"the checkpoint is at epoch {start_epoch} >= --epochs {epochs}: nothing to train")

    train_set = ng.data.TensorDataset(x_train, y_train)
    steps = math.ceil(math.ceil(len(y_train) / world) / batch_size)
    progress = _Progress(total=max(epochs, start_epoch) * steps, initial=start_epoch * steps, desc=model_name,
                         enabled=rank == 0)
    trained = model  # what the optimizer steps and the checkpoint stores: the plain model
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(trained)
    model.train()
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            # dropout draws: reproducible across --resume (and different on each rank)
            ng.manual_seed(_epoch_seed(seed, epoch) if world == 1 else _epoch_seed(seed * 1000 + rank, epoch))
            for group in opt.param_groups:  # cosine decay of the learning rate over the epochs
                group["lr"] = cosine_lr(lr, epoch, epochs)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            loader = ng.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                        seed=_epoch_seed(seed, epoch), distributed=args.distributed)
            for xb, yb in loader:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n = int(yb.shape[0])
                loss_sum += float(loss.item()) * n
                correct += int(np.sum(np.asarray(logits.detach()).argmax(axis=1) == np.asarray(yb)))
                seen += n
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(1, {"epoch": f"{epoch}/{epochs}", "loss": f"{loss_sum / seen:.4f}",
                                    "acc": f"{correct / seen:.3f}", "samples/s": f"{rate:.0f}"})
            if world > 1:  # the epoch's totals over all ranks
                totals = ng.tensor(np.array([loss_sum, correct, seen], dtype=np.float64))
                summed = np.asarray(ng.distributed.all_reduce(totals))
                loss_sum, correct, seen = float(summed[0]), int(summed[1]), int(summed[2])
            seconds = time.perf_counter() - t0
            test_acc = float(np.mean(predict(trained, x_test) == y_test))
            history["train_loss"].append(loss_sum / seen)
            history["train_acc"].append(correct / seen)
            history["test_acc"].append(test_acc)
            history["seconds"].append(seconds)
            progress.write(f"epoch {epoch:3d}/{epochs}  loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}"
                           f"  test acc {test_acc:.4f}  {seen / seconds:,.0f} samples/s")
    finally:
        progress.close()

    pred = predict(trained, x_test)
    acc = float(np.mean(pred == y_test))
    train_seconds = float(sum(history["seconds"]))
    done = max(epochs, start_epoch)
    model = trained
    if rank != 0:  # rank 0 alone writes the files
        return {"model": model_name, "accuracy": acc, "epochs": done, "seconds": train_seconds,
                "weights": None, "figure": None, "rank": rank}
    os.makedirs(args.out, exist_ok=True)
    weights = os.path.join(args.out, f"digits_{model_name}.safetensors")
    figure = os.path.join(args.out, f"digits_{model_name}.png")
    ng.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": done, "model_name": model_name,
             "seed": seed, "batch_size": batch_size, "lr": lr, "history": history}, weights)
    wrote_png = save_figure(figure, model_name, history, x_test, y_test, pred, train_seconds)
    print(f"test accuracy: {acc:.4f} ({int(np.sum(pred == y_test))}/{len(y_test)}) after "
          f"{done} epoch{'s' if done != 1 else ''} ({train_seconds:.1f} s of training)")
    print(f"wrote weights: {os.path.abspath(weights)}")
    if wrote_png:
        print(f"wrote figure:  {os.path.abspath(figure)}")
    else:
        print("no figure: matplotlib is not installed (pip install \"nablagrad[demo]\")")
    return {"model": model_name, "accuracy": acc, "epochs": done, "seconds": train_seconds,
            "weights": weights, "figure": figure if wrote_png else None}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``nablagrad-demo``)."""
    try:
        run(argv)
    except RuntimeError as e:
        if "needs nablagrad." in str(e):
            raise SystemExit(f"error: {e}") from None
        raise


if __name__ == "__main__":
    main()
