"""Data-parallel training with a Spearman loss over the *global* batch.

A rank correlation does not decompose over shards: the Spearman correlation of a batch
is not the mean of the correlations of its halves.  So each process computes its
predictions for its shard, the predictions are gathered from all processes with a
*differentiable* all-gather (``GatherPredictions`` below, a ten-line autograd Function),
and every process evaluates ``softrank.SpearmanLoss`` on the whole global batch.

Why the gradients come out right: every process computes the same global loss L.  The
backward of the all-gather sums, over processes, the gradient each of them sends to a
shard, so process k receives W * dL/d(pred_k) for its own shard (W = world size);
DistributedDataParallel then averages the parameter gradients over the W processes,
which gives exactly dL/dtheta, the gradient of a single process that sees the whole
batch.  The script checks this: with ``--check`` (the default; ``--no-check`` turns
it off) rank 0 also trains a plain single-process copy of the model on the same global
batches and compares the loss and every gradient at every step.

    torchrun --nproc_per_node=2 examples/ddp_spearman.py                  # CPU, gloo
    torchrun --nproc_per_node=2 examples/ddp_spearman.py --device cuda    # GPUs, nccl

Run without torchrun it uses a single process (world size 1).
"""

import time

_T0 = time.perf_counter()  # wall time includes the imports

import argparse
import copy
import os
import socket
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="DistributedDataParallel training with softrank.SpearmanLoss computed "
        "over the global batch (differentiable all-gather), checked against a "
        "single-process run.  Launch with: torchrun --nproc_per_node=2 "
        "examples/ddp_spearman.py",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=200, help="optimisation steps")
    p.add_argument("--global-batch", type=int, default=128,
                   help="global batch size (divisible by the world size)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--hidden", type=int, default=16, help="hidden units of the MLP")
    p.add_argument("--regularization", choices=("l2", "kl"), default="l2",
                   help="soft-rank regularization")
    p.add_argument("--strength", type=float, default=0.05,
                   help="soft-rank regularization strength (targets are standardised)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the model and the data")
    p.add_argument("--seed", type=int, default=0, help="seed for the init and the batches")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu uses the gloo backend, cuda uses nccl (one GPU per process)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the loss and the gradients with a single-process run at "
                   "every step (--no-check skips it)")
    p.add_argument("--rtol", type=float, default=None,
                   help="tolerance of the check: on the loss, and on the gradients "
                   "relative to the largest gradient entry; None: 1e-4 for float32, "
                   "1e-9 for float64")
    p.add_argument("--log-every", type=int, default=50, help="print every N steps (0: never)")
    return p.parse_args(argv)


if __name__ == "__main__":
    # Parsed before torch is imported, so that --help answers at once.
    _ARGS = parse_args()

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import softrank


class GatherPredictions(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each process the *summed* gradient.

    Forward: concatenate the equally sized shards of all processes, in rank order.
    Backward: sum the cotangents of all processes (all-reduce) and return this
    process's slice, i.e. a reduce-scatter.  (torch.distributed.nn.functional.all_gather
    does the same but is deprecated; an all-reduce works on every backend.)
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(args):
    backend = "nccl" if args.device == "cuda" else "gloo"
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return rank, world, device


def load_data(dtype, device):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
    mx, sx, my, sy = X_tr.mean(0), X_tr.std(0), y_tr.mean(), y_tr.std()

    def t(a):
        return torch.as_tensor(a, dtype=dtype, device=device)

    return t((X_tr - mx) / sx), t((y_tr - my) / sy), t((X_te - mx) / sx), t((y_te - my) / sy)


def make_model(n_features, hidden, seed, dtype, device):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
        torch.nn.Flatten(0),
    ).to(device=device, dtype=dtype)


def main(args):
    rank, world, device = setup(args)
    dtype = getattr(torch, args.dtype)
    rtol = args.rtol if args.rtol is not None else (1e-4 if dtype == torch.float32 else 1e-9)
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not divisible by the "
                         f"world size {world}")
    shard = args.global_batch // world

    X_tr, y_tr, X_te, y_te = load_data(dtype, device)
    model = make_model(X_tr.shape[1], args.hidden, args.seed, dtype, device)
    reference = copy.deepcopy(model) if (args.check and rank == 0) else None
    ddp = DistributedDataParallel(model)
    loss_fn = softrank.SpearmanLoss(regularization=args.regularization,
                                    regularization_strength=args.strength)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=args.lr) if reference else None
    if rank == 0:
        print(f"world size {world} ({dist.get_backend()}), global batch "
              f"{args.global_batch} = {world} x {shard}, {args.dtype}, device {device}",
              flush=True)

    gen = torch.Generator().manual_seed(args.seed)  # identical global batches everywhere
    n = X_tr.shape[0]
    max_loss_err = max_grad_err = 0.0
    for step in range(1, args.steps + 1):
        idx = torch.randperm(n, generator=gen)[: args.global_batch].to(device)
        mine = idx[rank * shard:(rank + 1) * shard]

        local_pred = ddp(X_tr[mine])
        # Differentiable all-gather: the concatenation is in rank order, i.e. idx order.
        global_pred = GatherPredictions.apply(local_pred)
        loss = loss_fn(global_pred, y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the parameter gradients here

        if reference is not None:
            ref_loss = loss_fn(reference(X_tr[idx]), y_tr[idx])
            ref_opt.zero_grad(set_to_none=True)
            ref_loss.backward()
            max_loss_err = max(max_loss_err, abs(loss.item() - ref_loss.item()))
            pairs = list(zip(ddp.module.parameters(), reference.parameters()))
            scale = max(q.grad.abs().max().item() for _, q in pairs) + 1e-30
            diff = max((p.grad - q.grad).abs().max().item() for p, q in pairs)
            max_grad_err = max(max_grad_err, diff / scale)
            ref_opt.step()
        opt.step()
        if rank == 0 and args.log_every and (step % args.log_every == 0 or step == 1):
            print(f"step {step:4d}  global-batch loss {loss.item():.4f}", flush=True)

    ok = True
    if rank == 0:
        with torch.no_grad():
            pred = ddp.module(X_te).cpu().numpy()
        from scipy.stats import spearmanr

        rho = float(spearmanr(pred, y_te.cpu().numpy()).statistic)
        print(f"held-out Spearman (scipy): {rho:.4f}")
        if reference is not None:
            ok = max_loss_err <= rtol and max_grad_err <= rtol
            print(f"check vs single process over {args.steps} steps: "
                  f"max |loss diff| = {max_loss_err:.3e}, "
                  f"max grad diff / max |grad| = {max_grad_err:.3e} (rtol {rtol:g})")
            print(f"DDP_CHECK {'PASSED' if ok else 'FAILED'} world_size={world}")
        print(f"wall time: {time.perf_counter() - _T0:.1f} s")
    dist.barrier()
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main(_ARGS)
