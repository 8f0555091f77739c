// softrank/cuda/pav.cuh -- per-block formulas of the decreasing isotonic problems (docs/CONTRACT.md).
//
// Notation as in docs/CONTRACT.md: z = sign * x, s_j = z[perm[j]] non-increasing, rho_j = n - j,
// a block B = [a, a + c) of sorted positions.  Every block keeps ONE accumulator `acc` (type Acc,
// double in v1) at its start position:
//   L2 (rank and sort): acc = sum_B s
//   rank/kl:            acc = logsumexp_B(s / eps)          (so L_B = eps * acc)
//   sort/kl:            acc = logsumexp_B(s)
// Pooling adds (L2) or log-add-exps (KL) two accumulators: never a subtraction of sums.
// The rho operand is never stored: its block sums are closed forms of (a, c, n).
// Merge rule: adjacent blocks are pooled while value(previous) <= value(current).
#pragma once
#include "prelude.cuh"

namespace softrank {

enum { OP_RANK = 0, OP_SORT = 1 };
enum { REG_L2 = 0, REG_KL = 1 };

// log(sum_{k<c} exp(-k / eps)) = log(expm1(-c/eps) / expm1(-1/eps)), exact 0 for c == 1.
template <typename A> SR_HD A sr_log_ramp_sum(long long c, A eps) {
  if (c == 1) return A(0);
  return sr_log(sr_expm1(-A(c) / eps) / sr_expm1(A(-1) / eps));
}

template <int OP, int REG, typename A>
struct Pav {
  // accumulator of the singleton block holding s_j
  static SR_HD A init(A s, A eps) {
    if (OP == OP_RANK && REG == REG_KL) return s / eps;
    return s;
  }
  static SR_HD A pool(A left, A right) {
    if (REG == REG_L2) return left + right;
    return sr_log_add_exp(left, right);
  }
  // block value v_B (docs/CONTRACT.md), a = first position, c = length
  static SR_HD A value(A acc, long long a, long long c, long long n, A eps) {
    const A mean_rho = A(n - a) - A(c - 1) * A(0.5);
    if (OP == OP_RANK && REG == REG_L2) return acc / A(c) - eps * mean_rho;
    if (OP == OP_SORT && REG == REG_L2) return mean_rho / eps - acc / A(c);
    if (OP == OP_RANK && REG == REG_KL) {
      const A r = A(c) * mean_rho;  // R_B = sum_B rho = c*(n-a) - c*(c-1)/2
      return eps * acc - eps * sr_log(r);
    }
    // sort/kl: logsumexp_B(rho / eps) - logsumexp_B(s)
    return A(n - a) / eps + sr_log_ramp_sum<A>(c, eps) - acc;
  }
  // output at sorted position j (before the sign/scatter of the caller)
  static SR_HD A output(A s, A acc, long long j, long long a, long long c, long long n, A eps,
                        int sign) {
    const A mean_rho = A(n - a) - A(c - 1) * A(0.5);
    if (OP == OP_RANK && REG == REG_L2) return (s - acc / A(c)) / eps + mean_rho;
    if (OP == OP_RANK && REG == REG_KL) return sr_exp(s / eps - acc) * (A(c) * mean_rho);
    if (OP == OP_SORT && REG == REG_L2)
      return A(sign) * (acc / A(c) + (A(a - j) + A(c - 1) * A(0.5)) / eps);
    // sort/kl: rho_j/eps - v_B with the rho terms combined exactly: (a - j)/eps - log(ramp)
    return A(sign) * (A(a - j) / eps - sr_log_ramp_sum<A>(c, eps) + acc);
  }
};

}  // namespace softrank
