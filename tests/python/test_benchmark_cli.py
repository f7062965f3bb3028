"""python -m nablagrad.benchmark: the table, the Markdown section and the PNG, with and without
PyTorch (--smoke: tiny sizes, one round, a second or two), and the training benchmark's PyTorch
twins of the demo models (same architecture and weights: same outputs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nablagrad as ng
from nablagrad.benchmark import _common
from nablagrad.benchmark.__main__ import main
from nablagrad.benchmark._report import Row, markdown, text_table

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def test_cli_without_torch_writes_table_markdown_and_png(tmp_path):
    md, png = tmp_path / "results.md", tmp_path / "ratios.png"
    proc = subprocess.run(
        [sys.executable, "-m", "nablagrad.benchmark", "--smoke", "--only", "overhead,matmul", "--threads", "1",
         "--no-torch", "--markdown", str(md), "--png", str(png)],
        capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "CPU:" in out and "SIMD level:" in out and "PyTorch: absent" in out, out
    assert "10-element add" in out and "float32 64x64" in out
    assert "NumPy" in out  # without torch the overhead add is compared with NumPy
    assert "mul+add+sum+backward" in out
    text = md.read_text()
    assert text.startswith("## `python -m nablagrad.benchmark` (smoke, 1 threads)")
    assert "| overhead | 10-element add |" in text and "--no-torch" in text
    if _has_matplotlib():
        assert proc.returncode == 0, proc.stderr
        assert png.read_bytes()[:8] == PNG_MAGIC
    else:
        assert proc.returncode == 1 and "matplotlib" in proc.stderr


def test_cli_with_torch_compares_with_pytorch(tmp_path, capsys):
    pytest.importorskip("torch")
    md = tmp_path / "results.md"
    md.write_text("# Benchmark results\n")
    threads = ng.get_num_threads()
    try:
        assert main(["--smoke", "--only", "overhead", "--threads", "1", "--markdown", str(md)]) == 0
    finally:
        ng.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "PyTorch: absent" not in out
    rows = [line for line in out.splitlines() if line.startswith("overhead ")]
    assert len(rows) == 2 and all("PyTorch" in r for r in rows), out
    text = md.read_text()
    assert text.startswith("# Benchmark results\n\n## ")  # appended, the old content kept
    assert text.count("| overhead |") == 2 and "geometric mean" in text


def test_env_var_simulates_missing_torch(monkeypatch):
    monkeypatch.setenv(_common.NO_TORCH_ENV, "1")
    assert _common.try_import_torch() is None


def test_bad_group_is_an_argument_error():
    with pytest.raises(SystemExit) as e:
        main(["--only", "nonsense"])
    assert e.value.code == 2


def test_report_formats_rows_without_reference():
    rows = [Row("g", "with ref", 0.002, "PyTorch", 0.004), Row("g", "alone", 3e-6)]
    assert rows[0].ratio == pytest.approx(2.0) and rows[1].ratio is None
    table = text_table(rows)
    assert "2.00x" in table and "3.00 us" in table and "2.00 ms" in table
    md = markdown(rows, "title", "today", "machine", "cmd")
    assert "| g | alone | 3.00 us | - | - | - |" in md
    assert "geometric mean 2.00x PyTorch over 1 figure(s)" in md


def test_benchmark_scripts_share_the_package_helpers():
    spec = importlib.util.spec_from_file_location("_bench_common_under_test", ROOT / "benchmarks" / "_common.py")
    if spec is None or spec.loader is None or not (ROOT / "benchmarks" / "_common.py").exists():
        pytest.skip("no benchmarks/ folder (installed package)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.race is _common.race and mod.cpu_model is _common.cpu_model
    assert mod.warm_up is _common.warm_up


def test_warm_up_calls_for_the_time_asked_and_at_least_once():
    calls = []
    _common.warm_up(lambda: calls.append(time.perf_counter()), seconds=0.0)
    assert len(calls) == 1  # no time asked: still one call
    calls.clear()
    t0 = time.perf_counter()
    _common.warm_up(lambda: calls.append(time.perf_counter()), seconds=0.02)
    t1 = time.perf_counter()
    # It returns only once the time has passed, having called fn repeatedly until then (the
    # last call starts just before the deadline, so its own timestamp may be a hair short).
    assert t1 - t0 >= 0.02 and len(calls) > 1 and calls[-1] <= t1


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_torch_twins_of_the_demo_models_match(name):
    torch = pytest.importorskip("torch")
    from nablagrad.benchmark.train import check_twins, torch_twin
    from nablagrad.demo.__main__ import build_model, split_digits

    ng.manual_seed(0)
    model = build_model(name)
    ours = sum(int(p.numel()) for p in model.parameters())
    for cl in ([False, True] if name == "cnn" else [False]):
        tm = torch_twin(torch, name, model, channels_last=cl)
        assert sum(p.numel() for p in tm.parameters()) == ours
        x = split_digits(0)[0][:16]
        assert check_twins(torch, name, model, tm, x) < 1e-4
        # and the gradients agree too (dropout off: eval mode)
        model.eval()
        tm.eval()
        xb = np.ascontiguousarray(x)
        labels = np.arange(16) % 10
        loss = ng.functional.cross_entropy(model(ng.from_numpy(xb)), ng.from_numpy(labels))
        model.zero_grad()
        loss.backward()
        xt = torch.from_numpy(xb)
        if name == "cnn":
            xt = xt.permute(0, 3, 1, 2)
        tl = torch.nn.functional.cross_entropy(tm(xt), torch.from_numpy(labels))
        tm.zero_grad()
        tl.backward()
        assert abs(loss.item() - tl.item()) < 1e-5
        # total |gradient| (attention's q/k/v are one packed tensor in PyTorch, three here)
        g_ours = sum(float(np.abs(np.asarray(p.grad)).sum()) for p in model.parameters())
        g_theirs = sum(float(p.grad.abs().sum()) for p in tm.parameters())
        assert g_ours == pytest.approx(g_theirs, rel=1e-4)
        model.train()
