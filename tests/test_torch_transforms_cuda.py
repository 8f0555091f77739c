"""tests/test_torch_transforms.py and the transform tests of tests/test_new_ops.py on CUDA
tensors: torch.compile, torch.func, opcheck, gradcheck through the CUDA back end.

Each test runs the CPU test's own body with its inputs made on the GPU (``_rows`` of
test_torch_transforms returns CUDA tensors; test_new_ops' tests run under
``torch.device("cuda")``).  Skipped without CuPy and a CUDA GPU.
"""
import pytest

torch = pytest.importorskip("torch")

import test_new_ops as new_ops  # noqa: E402
import test_torch_transforms as transforms  # noqa: E402


def _gpu() -> bool:
    try:
        import cupy

        return torch.cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not _gpu(), reason="needs CuPy and a CUDA GPU")]
OPS = pytest.mark.parametrize("op", ["rank", "sort"])
REGS = pytest.mark.parametrize("regularization", ["l2", "kl"])


@pytest.fixture
def on_cuda(monkeypatch):
    rows = transforms._rows
    monkeypatch.setattr(transforms, "_rows", lambda *a, **k: rows(*a, **k).cuda())


@OPS
@REGS
@pytest.mark.parametrize("dim,descending,dynamic", [(-1, False, False), (0, True, True)])
def test_compile_fullgraph_matches_eager_cuda(on_cuda, op, regularization, dim, descending,
                                              dynamic):
    transforms.test_compile_fullgraph_matches_eager(op, regularization, dim, descending, dynamic)


@OPS
@REGS
def test_opcheck_custom_ops_cuda(on_cuda, op, regularization):
    transforms.test_opcheck_custom_ops(op, regularization)


def test_custom_op_double_backward_matches_eager_cuda(on_cuda):
    transforms.test_custom_op_double_backward_matches_eager()


@OPS
@REGS
def test_torch_func_transforms_match_autograd_cuda(on_cuda, op, regularization):
    transforms.test_torch_func_transforms_match_autograd(op, regularization)


@OPS
@REGS
def test_vmap_nested_and_non_leading_cuda(on_cuda, op, regularization):
    transforms.test_vmap_nested_and_non_leading(op, regularization)


@OPS
@REGS
@pytest.mark.parametrize("strength", [0.1, 10.0])
def test_gradgradcheck_cuda(on_cuda, op, regularization, strength):
    transforms.test_gradgradcheck(op, regularization, strength, True)


@OPS
@REGS
def test_forward_mode_dual_tensors_cuda(on_cuda, op, regularization):
    transforms.test_forward_mode_dual_tensors(op, regularization)


@OPS
@REGS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_function_equals_transform_function_cuda(on_cuda, op, regularization, dtype):
    transforms.test_eager_function_equals_transform_function(op, regularization, dtype)


@pytest.mark.parametrize("op", ["topk", "project_kl", "quantile"])
def test_compile_vmap_jacrev_jvp_cuda(op):
    with torch.device("cuda"):
        new_ops.test_compile_vmap_jacrev_jvp(op)


def test_compile_with_learnable_strengths_and_targets_cuda():
    with torch.device("cuda"):
        new_ops.test_compile_with_learnable_strengths_and_targets()
