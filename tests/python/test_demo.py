"""End to end: the digits demo (``python -m nablagrad.demo``) trains each model, writes weights
that ng.load reads back and a PNG, and --resume continues exactly where a run stopped."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nablagrad as ng
from nablagrad import nn
from nablagrad.datasets import load_digits
from nablagrad.demo import __main__ as demo

ROOT = Path(__file__).resolve().parents[2]
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(path: Path):  # type: ignore[no-untyped-def]
    return ng.load(str(path))


def test_load_digits_shapes_and_ranges() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(set(y.tolist())) == list(range(10))


def test_split_is_deterministic_and_disjoint() -> None:
    a = demo.split_digits(3)
    b = demo.split_digits(3)
    c = demo.split_digits(4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0].shape == (1438, 8, 8, 1) and a[2].shape == (359, 8, 8, 1)
    assert not np.array_equal(a[3], c[3])
    # train and test are disjoint: every image of the dataset appears exactly once
    x, _ = load_digits()
    assert len(a[0]) + len(a[2]) == len(x)


def test_demo_cli_trains_cnn(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nablagrad.demo", "--epochs", "3", "--threads", "2",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    m = re.search(r"test accuracy: ([0-9.]+) \((\d+)/359\)", res.stdout)
    assert m, res.stdout
    acc = float(m.group(1))
    assert acc > 0.9, res.stdout
    weights = out / "digits_cnn.safetensors"
    assert f"wrote weights: {weights.resolve()}" in res.stdout
    # the checkpoint loads with ng.load and its model gives the printed accuracy
    ckpt = _load(weights)
    assert ckpt["epoch"] == 3 and ckpt["model_name"] == "cnn" and len(ckpt["history"]["test_acc"]) == 3
    model = demo.build_model("cnn")
    model.load_state_dict(ckpt["model"])
    _, _, x_test, y_test = demo.split_digits(0)
    assert int(np.sum(demo.predict(model, x_test) == y_test)) == int(m.group(2))
    if HAVE_MPL:
        png = out / "digits_cnn.png"
        assert f"wrote figure:  {png.resolve()}" in res.stdout
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000
    else:
        assert "no figure: matplotlib is not installed" in res.stdout


@pytest.mark.parametrize("model, epochs", [("lstm", 4), ("transformer", 3)])
def test_demo_short_runs_of_sequence_models(tmp_path: Path, model: str, epochs: int) -> None:
    r = demo.run(["--model", model, "--epochs", str(epochs), "--threads", "2", "--out", str(tmp_path)])
    assert r["model"] == model and r["epochs"] == epochs
    assert r["accuracy"] > 0.5, r
    ckpt = _load(tmp_path / f"digits_{model}.safetensors")
    fresh = demo.build_model(model)
    assert set(ckpt["model"]) == set(fresh.state_dict())
    assert (r["figure"] is not None) == HAVE_MPL
    if HAVE_MPL:
        assert (tmp_path / f"digits_{model}.png").read_bytes()[:8] == PNG_MAGIC


def test_demo_resume_continues_exactly(tmp_path: Path) -> None:
    first = demo.run(["--epochs", "1", "--seed", "5", "--out", str(tmp_path / "a")])
    assert first["epochs"] == 1
    resumed = demo.run(["--resume", str(tmp_path / "a" / "digits_cnn.safetensors"), "--epochs", "2",
                        "--out", str(tmp_path / "b")])
    straight = demo.run(["--epochs", "2", "--seed", "5", "--out", str(tmp_path / "c")])
    assert resumed["epochs"] == straight["epochs"] == 2
    a = _load(tmp_path / "b" / "digits_cnn.safetensors")
    b = _load(tmp_path / "c" / "digits_cnn.safetensors")
    assert a["epoch"] == 2 and len(a["history"]["train_loss"]) == 2
    assert a["history"]["train_loss"][0] == b["history"]["train_loss"][0]
    for name, t in b["model"].items():  # model and optimizer restored: the same weights, bitwise
        np.testing.assert_array_equal(np.asarray(a["model"][name]), np.asarray(t), err_msg=name)
    assert resumed["accuracy"] == straight["accuracy"]


def test_demo_resume_rejects_a_different_model_or_seed(tmp_path: Path) -> None:
    demo.run(["--model", "lstm", "--epochs", "1", "--out", str(tmp_path)])
    ckpt = str(tmp_path / "digits_lstm.safetensors")
    with pytest.raises(SystemExit, match="holds a lstm model, not cnn"):
        demo.run(["--resume", ckpt, "--model", "cnn"])
    with pytest.raises(SystemExit, match="trained with --seed 0"):
        demo.run(["--resume", ckpt, "--seed", "1"])


def test_demo_names_a_missing_feature(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(nn, "MultiheadAttention", raising=False)
    with pytest.raises(SystemExit, match=r"--model transformer needs nablagrad\.nn\.MultiheadAttention"):
        demo.main(["--model", "transformer", "--epochs", "1", "--out", str(tmp_path)])


def test_example_script_still_runs() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits.py"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert re.search(r"test accuracy: ([0-9.]+)", res.stdout), res.stdout
