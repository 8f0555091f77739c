"""The one place softrank reads torch internals, each behind a public-API fallback.

needs_transform_route() tells whether a torch.func transform (vmap, grad, jvp, ...) or
forward-mode AD is active. softrank/_torch.py then takes its setup_context Function, which
supports both; otherwise it takes the classic Function, whose public apply is cheaper on short
rows (docs/PERFORMANCE.md). The query is private torch API. Without it the fallback answers True
for every call: always the setup_context Function and the differentiable backward, which are
correct in every context, only slower (tests/test_torch_transforms.py runs the suite's eager
checks on it).
"""
import torch


def always():
    """The public fallback: take the route that is correct under every transform."""
    return True


def _private_query():
    functorch_active = torch._C._are_functorch_transforms_active
    forward_ad = torch.autograd.forward_ad
    forward_ad._current_level  # noqa: B018  (raises AttributeError if torch removed it)

    def needs_transform_route():
        return functorch_active() or forward_ad._current_level >= 0

    return needs_transform_route


try:
    needs_transform_route = _private_query()
except AttributeError:  # a torch without these internals
    needs_transform_route = always
