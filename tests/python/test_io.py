"""ng.save / ng.load (safetensors files): round trips, interop with the safetensors package,
rejection of damaged files, atomic writes, checkpoints of models and optimizers, and a model
saved in Python and run by the C++ example examples/cpp/load_and_predict.cpp."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

import nablagrad as ng
from nablagrad.io import STRUCTURE_KEY

ROOT = Path(__file__).resolve().parents[2]


def _same(a, b) -> bool:
    return (isinstance(a, ng.Tensor) and isinstance(b, ng.Tensor) and a.dtype == b.dtype and a.shape == b.shape
            and np.array_equal(np.asarray(a.detach()), np.asarray(b.detach())))


def _assert_same_structure(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, ng.Tensor):
        assert _same(a, b)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            _assert_same_structure(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_structure(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_flat_state_dict_round_trip(tmp_path):
    ng.manual_seed(0)
    sd = {"fc.weight": ng.randn(3, 4), "fc.bias": ng.randn(3, dtype=ng.float64),
          "bn.num_batches_tracked": ng.tensor(7), "mask": ng.tensor([[True, False]]),
          "idx": ng.tensor([-(2**62), 0, 5]), "empty": ng.zeros(0, 3)}
    p = tmp_path / "sd.safetensors"
    ng.save(sd, p)
    back = ng.load(str(p))
    _assert_same_structure(sd, back)
    assert back["bn.num_batches_tracked"].shape == () and back["bn.num_batches_tracked"].dtype == ng.int64
    assert back["mask"].dtype == ng.bool
    # The file is a plain safetensors file for other readers, under the same names.
    theirs = stnp.load_file(str(p))
    assert set(theirs) == set(sd)
    for k, t in sd.items():
        np.testing.assert_array_equal(theirs[k], np.asarray(t))
        assert theirs[k].dtype == np.asarray(t).dtype and theirs[k].shape == t.shape
    # Loaded tensors are independent, writable, and do not require grad.
    back["fc.weight"].numpy()[0, 0] = 123.0
    assert float(sd["fc.weight"][0, 0].item()) != 123.0


def test_nested_checkpoint_exact_values(tmp_path):
    ng.manual_seed(1)
    obj = {
        "model": {"0.weight": ng.randn(2, 2), "0.bias": ng.randn(2)},
        "epoch": 3,
        "big": 2**80,
        "neg": -17,
        "lr": 0.1,
        "floats": [1.0 / 3.0, -0.0, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf"), float("nan")],
        "flags": [True, False],
        "name": "caf\u00e9 \"quoted\"\n",
        "nothing": None,
        "tuple": (1, 2.5, "x"),
        "nested": [[{"t": ng.ones(1)}], []],
        3: "int key",
        "empty": {},
    }
    p = tmp_path / "ck.safetensors"
    ng.save(obj, p)
    back = ng.load(p)
    _assert_same_structure(obj, back)
    assert math.copysign(1.0, back["floats"][1]) == -1.0
    assert isinstance(back["epoch"], int) and isinstance(back["lr"], float) and back["flags"][0] is True
    names = set(stnp.load_file(str(p)))
    assert names == {"model.0.weight", "model.0.bias", "nested.0.0.t"}


def test_top_level_list_and_numpy_values(tmp_path):
    p = tmp_path / "l.safetensors"
    ng.save([np.arange(3, dtype=np.int64), np.float32(2.5), np.int32(4), np.bool_(True)], p)
    back = ng.load(p)
    assert _same(back[0], ng.tensor([0, 1, 2]))
    assert back[1:] == [2.5, 4, True]


def test_reads_files_of_other_tools(tmp_path):
    p = tmp_path / "other.safetensors"
    arrays = {"a": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
              "b": np.array(5, dtype=np.int64), "c": np.array([1, 2], dtype=np.int32),
              "h": np.array([0.5, 2.0], dtype=np.float16), "m": np.array([True, False])}
    stnp.save_file(arrays, str(p), metadata={"format": "pt"})
    back = ng.load(p)
    assert isinstance(back, dict) and set(back) == set(arrays)
    np.testing.assert_array_equal(np.asarray(back["a"]), arrays["a"])
    assert back["b"].shape == () and back["b"].item() == 5
    assert back["c"].dtype == ng.int64
    np.testing.assert_array_equal(np.asarray(back["c"]), [1, 2])
    assert back["h"].dtype == ng.float32
    np.testing.assert_array_equal(np.asarray(back["h"]), [0.5, 2.0])
    assert back["m"].dtype == ng.bool


def test_unsupported_values_and_names(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="model.opt"):
        ng.save({"model": {"opt": object()}}, p)
    with pytest.raises(TypeError, match="keys must be"):
        ng.save({(1, 2): 3}, p)
    with pytest.raises(TypeError, match="float16"):
        ng.save({"h": np.zeros(2, np.float16)}, p)
    with pytest.raises(TypeError):
        ng.save(ng.zeros(2), p)
    # Dotted keys that collide with a nested path are refused instead of silently merged.
    with pytest.raises(ValueError, match="same name"):
        ng.save({"a.b": ng.zeros(1), "a": {"b": ng.ones(1)}}, p)
    with pytest.raises(ValueError, match="reserved"):
        ng.save({"__metadata__": ng.zeros(1)}, p)
    assert not p.exists() and os.listdir(tmp_path) == []  # nothing written, no temp files left
    with pytest.raises(FileNotFoundError):
        ng.load(tmp_path / "missing.safetensors")


def _with_header(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("case", [
    "garbage", "empty", "short", "huge_len", "len_past_end", "bad_json", "offsets_outside", "byte_count",
    "dtype", "overlap", "not_object", "structure_not_json", "structure_missing_tensor",
    "structure_garbage", "extra_tensor",
])
def test_damaged_files_raise_value_error(tmp_path, case):
    p = tmp_path / "bad.safetensors"
    data8 = bytes(8)
    if case == "garbage":
        raw = struct.pack("<Q", 40) + b"\xff" * 40
    elif case == "empty":
        raw = b""
    elif case == "short":
        raw = b"\x05\x00\x00"
    elif case == "huge_len":
        raw = struct.pack("<Q", 2**62) + b"{}"
    elif case == "len_past_end":
        raw = struct.pack("<Q", 1000) + b"{}"
    elif case == "bad_json":
        raw = struct.pack("<Q", 4) + b"{\"a\""
    elif case == "offsets_outside":
        raw = _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data8)
    elif case == "byte_count":
        raw = _with_header({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, data8)
    elif case == "dtype":
        raw = _with_header({"x": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, data8)
    elif case == "overlap":
        raw = _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, data8)
    elif case == "not_object":
        raw = struct.pack("<Q", 2) + b"[]"
    elif case == "structure_not_json":
        raw = stnp.save({"x": np.zeros(2, np.float32)}, metadata={STRUCTURE_KEY: "{not json"})
    elif case == "structure_missing_tensor":
        st = json.dumps({"version": 1, "root": {"dict": [["a", {"tensor": "zzz"}]]}})
        raw = stnp.save({"x": np.zeros(2, np.float32)}, metadata={STRUCTURE_KEY: st})
    elif case == "structure_garbage":
        st = json.dumps({"version": 1, "root": {"exec": "import os"}})
        raw = stnp.save({"x": np.zeros(2, np.float32)}, metadata={STRUCTURE_KEY: st})
    elif case == "extra_tensor":
        st = json.dumps({"version": 1, "root": {"dict": []}})
        raw = stnp.save({"x": np.zeros(2, np.float32)}, metadata={STRUCTURE_KEY: st})
    p.write_bytes(raw)
    with pytest.raises(ValueError, match="bad.safetensors"):
        ng.load(p)


def test_truncated_files_at_every_cut_point(tmp_path):
    ng.manual_seed(2)
    good = tmp_path / "good.safetensors"
    ng.save({"model": {"w": ng.randn(4, 5), "b": ng.randn(5)}, "epoch": 2}, good)
    raw = good.read_bytes()
    cut_file = tmp_path / "cut.safetensors"
    cuts = sorted(set(list(range(0, 80)) + list(range(80, len(raw), 7)) + [len(raw) - 1]))
    for cut in cuts:
        cut_file.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="cut.safetensors"):
            ng.load(cut_file)
    # Random byte flips: a ValueError or (when the flip hits tensor data) a clean load.
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = bytearray(raw)
        for pos in rng.integers(0, len(b), size=3):
            b[pos] = int(rng.integers(0, 256))
        cut_file.write_bytes(bytes(b))
        try:
            ng.load(cut_file)
        except ValueError:
            pass
    assert ng.load(good)["epoch"] == 2  # the good file is untouched


def test_atomic_overwrite_keeps_mode_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.safetensors"
    ng.save({"a": ng.zeros(2)}, p)
    os.chmod(p, 0o640)
    ng.save({"a": ng.ones(2)}, p)
    assert ng.load(p)["a"].sum().item() == 2.0
    assert (os.stat(p).st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_failed_save_removes_temp_and_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.safetensors"
    ng.save({"a": ng.zeros(2)}, p)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        ng.save({"a": ng.ones(2)}, p)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert ng.load(p)["a"].sum().item() == 0.0


_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import nablagrad as ng
    import nablagrad.io as nio
    real_fdopen = os.fdopen

    class Slow:
        def __init__(self, f): self.f = f
        def write(self, b):
            time.sleep(0.02)
            return self.f.write(b)
        def __getattr__(self, k): return getattr(self.f, k)
        def __enter__(self): return self
        def __exit__(self, *a): return self.f.__exit__(*a)

    nio.os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
    orig = nio._write_atomic
    nio._write_atomic = lambda p, d: orig(p, d, chunk=1 << 20)
    big = np.full((16 * 1024 * 1024,), 7.0, dtype=np.float32)  # 64 MB
    print("start", flush=True)
    ng.save({"model": {"w": ng.from_numpy(big)}, "epoch": 99}, sys.argv[1])
    print("finished", flush=True)
""")


def test_sigkill_mid_write_leaves_previous_file_intact(tmp_path):
    p = tmp_path / "ckpt.safetensors"
    ng.save({"model": {"w": ng.arange(10, dtype=ng.float32)}, "epoch": 1}, p)
    before = p.read_bytes()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(ng.__file__).parent.parent)] + sys.path)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(p)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        partial = None
        while time.monotonic() < deadline and partial is None:
            assert child.poll() is None, child.stderr.read().decode()
            for name in os.listdir(tmp_path):
                if name.endswith(".tmp") and (tmp_path / name).stat().st_size > (4 << 20):
                    partial = tmp_path / name
            time.sleep(0.01)
        assert partial is not None, "the child never started writing its temp file"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert partial.stat().st_size < 64 << 20  # killed mid-write
    assert p.read_bytes() == before
    back = ng.load(p)
    assert back["epoch"] == 1 and _same(back["model"]["w"], ng.arange(10, dtype=ng.float32))
    # The leftover temp file is itself a damaged file: loading it is a clean ValueError.
    with pytest.raises(ValueError):
        ng.load(partial)


def test_model_state_dict_round_trip_same_outputs(tmp_path):
    nn = ng.nn
    ng.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 4))
    x = ng.randn(6, 5, 5, 2)
    model.train()
    model(x)  # running stats and num_batches_tracked move
    model.eval()
    y = model(x)
    ng.save(model.state_dict(), tmp_path / "m.safetensors")
    ng.manual_seed(99)
    other = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 5 * 5, 4))
    other.eval()
    assert not np.array_equal(np.asarray(other(x).detach()), np.asarray(y.detach()))
    other.load_state_dict(ng.load(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(np.asarray(other(x).detach()), np.asarray(y.detach()))
    assert other.state_dict()["1.num_batches_tracked"].item() == 1


def _train_steps(model, opt, x, target, n):
    F = ng.functional
    for _ in range(n):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
    return loss


def test_resume_training_from_checkpoint(tmp_path):
    nn = ng.nn
    ng.manual_seed(4)
    x, target = ng.randn(16, 3), ng.randn(16, 2)

    def make():
        m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        return m, ng.optim.Adam(m.parameters(), lr=0.01)

    model, opt = make()
    _train_steps(model, opt, x, target, 3)
    ng.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, tmp_path / "ck.safetensors")
    _train_steps(model, opt, x, target, 4)
    expected = model.state_dict()

    ng.manual_seed(123)
    model2, opt2 = make()
    ck = ng.load(tmp_path / "ck.safetensors")
    assert ck["epoch"] == 3
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optim"])
    _train_steps(model2, opt2, x, target, 4)
    for k, v in model2.state_dict().items():
        np.testing.assert_allclose(np.asarray(v), np.asarray(expected[k]), rtol=0, atol=1e-6)


def test_scheduler_state_round_trips(tmp_path):
    sched_mod = getattr(ng.optim, "lr_scheduler", None)
    if sched_mod is None:
        pytest.skip("ng.optim.lr_scheduler not available")
    p = ng.zeros(2, requires_grad=True)
    opt = ng.optim.SGD([p], lr=0.5, momentum=0.9)
    sched = sched_mod.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        p.grad = ng.ones(2)
        opt.step()
        sched.step()
    ng.save({"optim": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.safetensors")
    back = ng.load(tmp_path / "s.safetensors")
    _assert_same_structure(sched.state_dict(), back["sched"])
    _assert_same_structure(opt.state_dict(), back["optim"])


def _compiler():
    return shutil.which("g++") or shutil.which("c++")


def test_cpp_loads_python_model(tmp_path):
    """A model trained and saved in Python runs in C++ (examples/cpp/load_and_predict.cpp) with the
    same outputs, and the C++ program's output file loads back in Python."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    nn = ng.nn
    ng.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    x = ng.rand(10, 8, 8, 1)
    target = ng.randn(10, 3)
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    _train_steps(model, opt, x, target, 5)
    model.eval()
    y = np.asarray(model(x).detach())
    ng.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 5}, tmp_path / "model.safetensors")
    ng.save({"x": x}, tmp_path / "inputs.safetensors")
    exe = tmp_path / "load_and_predict"
    build = subprocess.run([cxx, "-std=c++17", "-O2", "-pthread", "-I", str(ROOT / "cpp" / "include"),
                            str(ROOT / "examples" / "cpp" / "load_and_predict.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-5000:]
    run = subprocess.run([str(exe), str(tmp_path / "model.safetensors"), str(tmp_path / "inputs.safetensors"),
                          str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = np.array([[float(v) for v in line.split()] for line in run.stdout.strip().splitlines()])
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, rtol=1e-6, atol=1e-6)
    back = ng.load(tmp_path / "out.safetensors")  # written by C++: a foreign file, loads flat
    np.testing.assert_allclose(np.asarray(back["y"]), y, rtol=1e-6, atol=1e-6)
    # A checkpoint of a different model is refused by the strict C++ loader.
    ng.save({"model": {"0.weight": ng.zeros(1)}}, tmp_path / "wrong.safetensors")
    bad = subprocess.run([str(exe), str(tmp_path / "wrong.safetensors"), str(tmp_path / "inputs.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "load_state_dict" in bad.stderr
