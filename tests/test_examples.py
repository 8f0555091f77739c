"""Run every script in examples/ with tiny sizes and check what it prints and writes.

The scripts run as subprocesses with the softrank this test session imported (its
parent directory goes first on PYTHONPATH).  Each test skips when an example
dependency (scikit-learn, SciPy, matplotlib, tqdm, torch) it needs is missing:
``pip install -e ".[examples]"``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import softrank

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ not present")


def _env():
    env = dict(os.environ)
    pkg_parent = str(Path(softrank.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _launch(args, cwd, timeout=240):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _check_exit(args, proc):
    assert proc.returncode == 0, (
        f"{args} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _run(args, cwd, timeout=240):
    return _check_exit(args, _launch(args, cwd, timeout))


def _result(stdout):
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", line[-1])}


def _need(*modules):
    for m in modules:
        pytest.importorskip(m)


def _assert_png(path):
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert len(data) > 10_000 and data.startswith(PNG_MAGIC)


# Run as __main__ with --help, then list which heavy modules the script imported.
_HELP_PROBE = """
import runpy, sys
path = sys.argv[1]
sys.argv = [path, "--help"]
try:
    runpy.run_path(path, run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = ("torch", "sklearn", "scipy", "matplotlib", "softrank", "numpy")
print("IMPORTED:", sorted(m for m in heavy if m in sys.modules))
"""


def test_help_of_every_example_answers_without_importing_torch(tmp_path):
    """--help parses the arguments before any heavy import: no torch, scikit-learn, SciPy,
    matplotlib, NumPy or softrank, so it answers in a fraction of a second."""
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert {s.name for s in scripts} >= {"spearman_regression.py", "numpy_spearman.py",
                                         "ddp_spearman.py", "plot_soft_ops.py",
                                         "quantile_regression.py"}
    for script in scripts:
        out = _run(["-c", _HELP_PROBE, script], cwd=tmp_path)
        assert "usage:" in out and "--" in out, out
        assert "IMPORTED: []" in out, f"{script.name} --help imported {out.splitlines()[-1]}"
        if script.name == "ddp_spearman.py":  # item 7 of issue 18: not "--no-check (default: True)"
            assert "--check, --no-check" in out, out


@pytest.mark.slow
def test_spearman_regression_default_task(tmp_path):
    """The default task with fewer epochs: the soft Spearman loss beats MSE on held-out
    Spearman (30 epochs, seeds 0-4: 0.93 vs 0.58 on average; after 10 epochs on seed 0
    about 0.90 vs 0.71).  The PNG goes where --out says, relative to the working directory,
    and its absolute path is printed."""
    _need("scipy", "matplotlib", "tqdm", "torch")
    out = _run([EXAMPLES / "spearman_regression.py", "--seed", "0", "--epochs", "10",
                "--no-progress", "--with-rank-mse", "--out", "plots/regression.png"],
               cwd=tmp_path)
    assert out.rstrip().splitlines()[-1].startswith("RESULT "), out
    res = _result(out)
    assert res["soft_spearman"] > 0.85, out
    assert res["soft_spearman"] > res["mse"] + 0.1, out
    assert re.search(r"MSE on ranks +0\.\d+", out), out
    png = (tmp_path / "plots" / "regression.png").resolve()
    wrote = re.search(r"^wrote (.+)$", out, re.M)
    assert wrote and Path(wrote.group(1)).is_absolute(), out
    assert Path(wrote.group(1)).resolve() == png, out
    _assert_png(png)


def test_numpy_spearman_without_torch(tmp_path):
    _need("sklearn")
    out = _run([EXAMPLES / "numpy_spearman.py", "--steps", "60", "--check-grad",
                "--log-every", "0"], cwd=tmp_path)
    assert "data: sklearn diabetes" in out, out
    err = float(re.search(r"gradient check: max relative error ([-\d.e+]+)", out).group(1))
    assert err < 1e-5, out
    res = _result(out)
    assert res["soft_spearman"] > 0.55, out
    assert abs(res["soft_spearman"] - res["least_squares"]) < 0.1, out
    assert "torch imported: False" in out


# Runs a script as __main__ as if scikit-learn, SciPy and torch were not installed
# (None in sys.modules makes their import raise ImportError): a NumPy-only install.
_NUMPY_ONLY = """
import runpy, sys
for name in ("sklearn", "scipy", "torch"):
    sys.modules[name] = None
path = sys.argv[1]
sys.argv = [path, *sys.argv[2:]]
runpy.run_path(path, run_name="__main__")
"""


def test_numpy_spearman_numpy_only_install(tmp_path):
    """Without scikit-learn (and SciPy) the NumPy example falls back to synthetic data and
    says so; asking for the diabetes data explains what is missing."""
    script = EXAMPLES / "numpy_spearman.py"
    out = _run(["-c", _NUMPY_ONLY, script, "--steps", "60", "--check-grad",
                "--log-every", "0"], cwd=tmp_path)
    assert "scikit-learn is not installed" in out and "data: synthetic" in out, out
    err = float(re.search(r"gradient check: max relative error ([-\d.e+]+)", out).group(1))
    assert err < 1e-5, out
    res = _result(out)
    assert res["soft_spearman"] > 0.9 and res["least_squares"] > 0.8, out
    assert "torch imported: False" in out

    args = ["-c", _NUMPY_ONLY, script, "--data", "diabetes"]
    proc = _launch(args, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "needs scikit-learn" in proc.stderr and "--data synthetic" in proc.stderr, (
        proc.stderr[-2000:])


def _gloo_teardown_abort(proc):
    """True if a worker aborted in torch's teardown after the script had finished and passed.

    With torch 2.13, once a DistributedDataParallel has been built its gloo process group and
    gloo's worker threads outlive destroy_process_group (a reference torch keeps; a bare gloo
    group without DDP does stop them). Rarely (2 runs in about 200 on this 2-core machine type,
    one of them in CI) a worker then aborts at exit with "terminate called without an active
    exception", after the check has passed and the group was destroyed. Only that failure is
    retried, and only once.
    """
    return ("DDP_CHECK PASSED" in proc.stdout
            and "terminate called without an active exception" in proc.stderr)


@pytest.mark.slow
def test_ddp_spearman_two_gloo_processes(tmp_path):
    _need("sklearn", "torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # --standalone: torchrun picks a free port for its rendezvous itself.
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            EXAMPLES / "ddp_spearman.py", "--steps", "15", "--global-batch", "64",
            "--log-every", "0"]
    proc = _launch(args, tmp_path, timeout=300)
    if proc.returncode != 0 and _gloo_teardown_abort(proc):
        proc = _launch(args, tmp_path, timeout=300)  # once: see _gloo_teardown_abort
    out = _check_exit(args, proc)
    assert "world size 2 (gloo)" in out, out
    assert "DDP_CHECK PASSED world_size=2" in out, out
    m = re.search(r"max \|loss diff\| = ([-\d.e+]+), max grad diff / max \|grad\| = "
                  r"([-\d.e+]+)", out)
    assert m and float(m.group(1)) < 1e-4 and float(m.group(2)) < 1e-4, out


def test_plot_soft_ops(tmp_path):
    _need("matplotlib")
    png = tmp_path / "ops.png"
    out = _run([EXAMPLES / "plot_soft_ops.py", "--num", "25", "--out", png], cwd=tmp_path)
    assert f"wrote {png}" in out
    _assert_png(png)


def test_readme_figure_is_committed():
    fig = ROOT / "docs" / "soft_ops.png"
    if not (ROOT / "docs").is_dir():
        pytest.skip("docs/ not present")
    _assert_png(fig)


def test_quantile_regression_default_task(tmp_path):
    """The default task (60 % one-sided clutter): the soft 0.3-quantile of the absolute
    residuals recovers the curve while MSE and the absolute error follow the clutter
    (seed 0: RMS distance to the curve about 0.06 vs 2.2 and 2.0).  The default sizes
    are kept: shorter runs of this nonconvex objective can settle in the clutter."""
    _need("matplotlib", "torch")
    out = _run([EXAMPLES / "quantile_regression.py", "--seed", "0", "--no-progress",
                "--out", "plots/quantile.png"], cwd=tmp_path)
    assert out.rstrip().splitlines()[-1].startswith("RESULT "), out
    res = _result(out)
    assert res["soft_quantile"] < 0.2, out
    assert res["mse"] > 1.0 and res["absolute_error"] > 1.0, out
    wrote = re.search(r"^wrote (.+)$", out, re.M)
    assert wrote and Path(wrote.group(1)).resolve() == (tmp_path / "plots" / "quantile.png"), out
    _assert_png(tmp_path / "plots" / "quantile.png")
