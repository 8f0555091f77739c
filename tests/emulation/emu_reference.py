"""Straightforward NumPy implementation of docs/CONTRACT.md (sequential PAV, float64).

Used by the emulation tests when the Cython back end (softrank._cpu_backend) is not importable, and
as a second opinion when it is.
"""

from __future__ import annotations

import numpy as np


def _value(op, reg, acc, a, c, n, eps):
    mean_rho = (n - a) - (c - 1) / 2.0
    if op == "rank" and reg == "l2":
        return acc / c - eps * mean_rho
    if op == "sort" and reg == "l2":
        return mean_rho / eps - acc / c
    if op == "rank":
        return eps * acc - eps * np.log(c * mean_rho)
    rho = np.arange(n - a, n - a - c, -1, dtype=np.float64) / eps
    m = rho.max()
    return m + np.log(np.exp(rho - m).sum()) - acc


def _pool(reg, a, b):
    return a + b if reg == "l2" else np.logaddexp(a, b)


def forward(op, regularization, x, eps, sign, out, perm, blocks):
    rows, n = x.shape
    for r in range(rows):
        z = sign * x[r].astype(np.float64)
        if not np.all(np.isfinite(z)):
            out[r] = np.nan
            perm[r] = np.arange(n)
            blocks[r] = -1
            continue
        p = np.argsort(-z, kind="stable")
        s = z[p]
        stack = []  # [start, count, acc]
        for j in range(n):
            acc = s[j] / eps if (op == "rank" and regularization == "kl") else s[j]
            stack.append([j, 1, acc])
            while len(stack) > 1:
                a0, c0, v0 = stack[-2]
                a1, c1, v1 = stack[-1]
                if _value(op, regularization, v0, a0, c0, n, eps) <= _value(
                        op, regularization, v1, a1, c1, n, eps):
                    stack[-2] = [a0, c0 + c1, _pool(regularization, v0, v1)]
                    stack.pop()
                else:
                    break
        res = np.empty(n)
        bl = np.empty(n, np.int64)
        for a, c, acc in stack:
            j = np.arange(a, a + c)
            bl[a:a + c] = a
            mean_rho = (n - a) - (c - 1) / 2.0
            if op == "rank" and regularization == "l2":
                res[a:a + c] = (s[j] - acc / c) / eps + mean_rho
            elif op == "rank":
                res[a:a + c] = np.exp(s[j] / eps - acc) * (c * mean_rho)
            elif regularization == "l2":
                res[a:a + c] = sign * (acc / c + (a - j + (c - 1) / 2.0) / eps)
            else:
                v = _value(op, regularization, acc, a, c, n, eps)
                res[a:a + c] = sign * ((n - j) / eps - v)
        if op == "rank":
            out[r, p] = res
        else:
            out[r] = res
        perm[r] = p
        blocks[r] = bl


def backward(op, regularization, g, perm, blocks, aux, eps, sign, grad):
    rows, n = g.shape
    for r in range(rows):
        if blocks[r, 0] < 0:
            grad[r] = np.nan
            continue
        p = perm[r]
        bl = blocks[r]
        res = np.empty(n)
        starts = np.flatnonzero(bl == np.arange(n))
        ends = np.append(starts[1:], n)
        for a, e in zip(starts, ends):
            c = e - a
            idx = p[a:e]
            if op == "rank" and regularization == "l2":
                gp = g[r, idx].astype(np.float64)
                res[idx] = sign / eps * (gp - gp.mean())
            elif op == "rank":
                gp = g[r, idx].astype(np.float64)
                rr = aux[r, idx].astype(np.float64)
                rb = c * (n - a) - c * (c - 1) / 2.0
                res[idx] = sign / eps * rr * (gp - (gp * rr).sum() / rb)
            elif regularization == "l2":
                res[idx] = g[r, a:e].astype(np.float64).mean()
            else:
                s = sign * aux[r, idx].astype(np.float64)
                w = np.exp(s - s[0])
                res[idx] = w / w.sum() * g[r, a:e].astype(np.float64).sum()
        grad[r] = res
