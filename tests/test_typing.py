"""The public API's annotations, checked by mypy on a small user script.

The test writes two scripts a user could write: one that calls every public function
(torch and NumPy inputs) correctly, and must type-check under ``--strict``, with
``reveal_type`` showing that outputs keep the input's type; and one whose lines marked
``# BAD`` misuse the API, each of which mypy must report (so annotations that are
missing, or ``Any``, or wrong, fail the test).
"""
import os
import re
import site
import subprocess
import sys
import textwrap

import pytest

import softrank

pytestmark = pytest.mark.slow  # mypy's first (cold-cache) run over torch's stubs: ~20-60 s

GOOD = '''
from typing import Callable

import numpy as np
import torch

import softrank


def main() -> None:
    t = torch.linspace(0.0, 1.0, 10).reshape(2, 5)
    a = np.linspace(0.0, 1.0, 10).reshape(2, 5)

    r_t: torch.Tensor = softrank.soft_rank(t)
    s_t: torch.Tensor = softrank.soft_sort(t, "kl", 0.5, dim=0, descending=True)
    r_a: np.ndarray = softrank.soft_rank(a, regularization_strength=np.float32(0.1))
    s_l: np.ndarray = softrank.soft_sort([3.0, 1.0, 2.0], "l2", 1)

    out_t, pullback_t = softrank.soft_rank_vjp(t, dim=-1)
    g_t: torch.Tensor = pullback_t(torch.ones_like(out_t))
    out_a, pullback_a = softrank.soft_sort_vjp(a, "kl")
    g_a: np.ndarray = pullback_a(np.ones_like(out_a))
    f: Callable[[np.ndarray], np.ndarray] = softrank.soft_rank_vjp(a)[1]

    rho_t: torch.Tensor = softrank.spearmanr(t, t, regularization_strength=0.3)
    rho_mixed: torch.Tensor = softrank.spearmanr(a, t)
    rho_a = softrank.spearmanr(a, a, dim=0, regularization="kl")
    pr_t: torch.Tensor = softrank.pearsonr(t, a)
    pr_f: float = float(softrank.pearsonr(a[0], a[1]))

    loss_fn = softrank.SpearmanLoss(dim=-1, regularization="l2", regularization_strength=0.3,
                                    reduction="none")
    loss: torch.Tensor = loss_fn.forward(t, t)
    module: torch.nn.Module = loss_fn

    k_t: torch.Tensor = softrank.soft_topk(t, 2, regularization_strength=torch.ones(2))
    k_a: np.ndarray = softrank.soft_topk(a, 2, largest=False)
    q_t: torch.Tensor = softrank.soft_quantile(t, [0.25, 0.75], "kl", keepdim=True)
    q_a: np.ndarray = softrank.soft_quantile(a, 0.5, regularization_strength=[0.5, 1.0])
    p_t: torch.Tensor = softrank.project_permutahedron(t, torch.arange(5.0), "l2", 0.5)
    p_a: np.ndarray = softrank.project_permutahedron(a, [1.0, 2.0, 3.0, 4.0, 5.0], dim=-1)
    out_k, pullback_k = softrank.soft_topk_vjp(a, 1)
    g_k: np.ndarray = pullback_k(np.ones_like(out_k))
    out_q, pullback_q = softrank.soft_quantile_vjp(t, 0.5)
    g_q: torch.Tensor = pullback_q(torch.ones_like(out_q))

    reveal_type(softrank.soft_rank(t))  # REVEAL tensor
    reveal_type(softrank.soft_sort(a))  # REVEAL array
    reveal_type(softrank.soft_rank([1, 2]))  # REVEAL array
    reveal_type(softrank.soft_sort_vjp(t))  # REVEAL tensor_vjp
    reveal_type(softrank.soft_rank_vjp(a))  # REVEAL array_vjp
    reveal_type(softrank.spearmanr(t, t))  # REVEAL tensor
    reveal_type(rho_a)  # REVEAL array_or_scalar
    reveal_type(softrank.pearsonr(a, a))  # REVEAL array_or_scalar
    reveal_type(loss_fn.forward(t, a))  # REVEAL tensor
'''

BAD = '''
import numpy as np
import torch

import softrank


def main() -> None:
    t = torch.ones(3)
    a = np.ones(3)
    r1: torch.Tensor = softrank.soft_rank(a)  # BAD: NumPy in, NumPy out
    r2: np.ndarray = softrank.soft_sort(t)  # BAD: torch in, torch out
    out, pullback = softrank.soft_rank_vjp(t)
    g: np.ndarray = pullback(t)  # BAD: the torch pullback returns a tensor
    softrank.soft_rank(a, "l1")  # BAD: regularization is "l2" or "kl"
    softrank.soft_sort(a, dim="0")  # BAD: dim is an int
    softrank.soft_sort(a, "l2", "1.0")  # BAD: the strength is a number
    softrank.soft_rank(a, "l2", 1.0, -1)  # BAD: dim is keyword-only
    rho: np.ndarray = softrank.spearmanr(t, a)  # BAD: a tensor makes the result a tensor
    p: torch.Tensor = softrank.pearsonr(a, a)  # BAD: arrays give arrays
    softrank.spearmanr(a, a, regularization_strength=None)  # BAD: None is no strength
    softrank.SpearmanLoss(reduction="avg")  # BAD: not a reduction
    softrank.SpearmanLoss(0)  # BAD: the options are keyword-only
    softrank.soft_ranks(a)  # BAD: no such function
    softrank.soft_topk(a, 2, "kl")  # BAD: top-k is l2 only
    softrank.soft_topk(a, 2.5)  # BAD: k is an int
    softrank.soft_quantile(a, "0.5")  # BAD: q is a number or numbers
    km: torch.Tensor = softrank.soft_topk(a, 1)  # BAD: arrays give arrays
'''


_TENSOR = r"torch\._tensor\.Tensor"
_ARRAY = r"numpy\.ndarray\[.*numpy\.floating\[Any\]\]\]"
#: What reveal_type must show, by the marker after ``# REVEAL``.
_REVEALED = {
    "tensor": _TENSOR,
    "array": _ARRAY,
    "array_or_scalar": rf"{_ARRAY} \| numpy\.floating\[Any\]",
    "tensor_vjp": rf"tuple\[{_TENSOR}, def \(.*\) -> {_TENSOR}\]",
    "array_vjp": rf"tuple\[{_ARRAY}, def \(.*\) -> {_ARRAY}\]",
}


def _mypy_env():
    """mypy finds numpy and torch in this interpreter's site-packages; softrank too when it is
    installed there (py.typed), else (an editable install, whose import hook mypy cannot
    follow) through MYPYPATH.  mypy refuses site-packages in MYPYPATH."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(softrank.__file__)))
    site_dirs = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    if root not in site_dirs:
        env["MYPYPATH"] = root
    env.pop("PYTHONPATH", None)  # the scripts must see the same softrank as this test
    return env


def _run_mypy(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (it is in the `test` extra: pip install mypy)")
    (tmp_path / "good_usage.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad_usage.py").write_text(textwrap.dedent(BAD))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
           "--no-error-summary", "--show-error-codes", "--hide-error-context",
           "--cache-dir", str(tmp_path / "mypy_cache"), "good_usage.py", "bad_usage.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_mypy_env(), capture_output=True, text=True,
                          timeout=240)
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        pytest.fail(f"mypy did not run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    by_file = {"good_usage.py": {}, "bad_usage.py": {}}
    for line in proc.stdout.splitlines():
        m = re.match(r"(\w+\.py):(\d+): (error|note): (.*)", line)
        assert m, f"unexpected mypy output line: {line!r}\n{proc.stdout}"
        by_file[m[1]].setdefault(int(m[2]), []).append((m[3], m[4]))
    return by_file, proc.stdout


def _lines(source, marker):
    return {i: line for i, line in enumerate(textwrap.dedent(source).splitlines(), 1)
            if marker in line}


def test_public_api_annotations_with_mypy(tmp_path):
    by_file, output = _run_mypy(tmp_path)

    # Correct use type-checks under --strict (an unannotated function would be an error).
    good = by_file["good_usage.py"]
    errors = {i: m for i, msgs in good.items() for kind, m in msgs if kind == "error"}
    assert not errors, f"correct use of the API fails to type-check:\n{output}"

    # Outputs keep the input's type.
    for i, line in _lines(GOOD, "# REVEAL").items():
        notes = [m for kind, m in good.get(i, []) if m.startswith("Revealed type is")]
        assert len(notes) == 1, f"line {i} ({line.strip()}) revealed nothing:\n{output}"
        revealed = re.fullmatch(r'Revealed type is "(.*)"', notes[0])[1]
        kind = line.rsplit("# REVEAL ", 1)[1].strip()
        assert re.fullmatch(_REVEALED[kind], revealed), f"line {i}, {kind}: {revealed}"
        if kind.startswith("array"):
            assert "torch" not in revealed, f"line {i}: {revealed}"

    # Every misuse is reported, on its own line, and nothing else is.
    bad = by_file["bad_usage.py"]
    reported = {i for i, msgs in bad.items() if any(kind == "error" for kind, _ in msgs)}
    expected = set(_lines(BAD, "# BAD"))
    missed = {i: textwrap.dedent(BAD).splitlines()[i - 1].strip() for i in expected - reported}
    assert not missed, f"mypy accepted misuse of the API: {missed}\n{output}"
    assert reported == expected, f"unexpected errors on lines {reported - expected}:\n{output}"


def test_py_typed_ships_next_to_the_package():
    assert os.path.isfile(os.path.join(os.path.dirname(softrank.__file__), "py.typed"))


def test_annotations_do_not_import_torch():
    # The annotations name torch and NumPy types only for type checkers.
    code = ("import sys, inspect, softrank, softrank._spearman; "
            "assert 'torch' not in sys.modules and 'cupy' not in sys.modules, 'imported'; "
            "print(list(inspect.signature(softrank.soft_rank).parameters))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(["values", "regularization", "regularization_strength",
                                       "dim", "descending"])
