// softrank/cuda/pav.cuh -- per-block formulas of the decreasing isotonic problems (docs/CONTRACT.md).
//
// Notation as in docs/CONTRACT.md: z = sign * x, s_j = z[perm[j]] non-increasing, rho_j = n - j,
// a block B = [a, a + c) of sorted positions.  Every block keeps ONE state at its start
// position (type Pav::State).  The rank and project modes keep it relative to the block's first
// (largest) element s_a, as the CPU back end (softrank/csrc/pav.h): nothing overflows for any
// eps > 0 (s/eps may) and a tied block's state is exact (0 or c, where sums of copies of 1e300
// round and the rounding over a tiny eps is inf):
//   rank/l2:            d = sum_B (s_j - s_a)                     (State = A)
//   rank/kl:            S = sum_B exp((s_j - s_a) / eps), in [1, c]
//   project/l2, /kl:    (d or S, sum_B t)                          (State = SrPair<A>)
//   sort/l2:            acc = sum_B s  (absolute)
//   sort/kl:            acc = logsumexp_B(s)  (absolute)
// The relative modes read s_a (and, when pooling, the right run's first element and length)
// from the sorted values: the helpers take positions and a value accessor sv(j) = s_j (join,
// val; output takes s_a); the sort modes ignore them.
// Pooling adds (L2, target sums), log-add-exps (sort/kl) or rescales and adds (rank/kl) two
// states: never a subtraction of sums.
// The rho operand is never stored: its block sums are closed forms of (a, c, n).  The project
// modes' target t (sorted decreasingly, like rho) has no closed form, so its block sum is the
// second half of the state.
// Merge rule: adjacent blocks are pooled while value(previous) <= value(current).
//
// Tiny strengths (issue 16, item 6; the CPU's rules, softrank/csrc/pav.h softrank_row_kind):
// every row is classified once by sr_row_kind from its extremes s_0, s_{n-1}:
//   SR_SOLVE_HARD_SORT  sort rows with n/eps > 2**1000 and a range below 1/(4 eps): no two
//                       elements can pool, the PAV is skipped, the output is the hard sort;
//   SR_SOLVE_SCALED     l2 rows with values above 2**1000 (absolute sums would overflow), and
//                       sort/l2 rows with n/eps > 2**1000: solved on s * 2**-64 with the
//                       strength scaled to match (exact: rank(x, eps) = rank(x/k, eps/k),
//                       sort(x, eps) = k sort(x/k, k eps)); rank/l2 keeps its strength below
//                       2**-958, where eps / 2**64 would lose its bits;
//   SR_SOLVE_EPS_UNITS  sort/kl rows with n/eps > 2**1000 and a wider range: block values in
//                       units of eps, (n - a) + eps ramp - eps acc, all finite.  The PAV
//                       helpers pass one strength through, so this kind reaches Pav as the
//                       negated strength (sr_solve_eps): only sort/kl and SR_SOLVE_HALVES
//                       read its sign.
//   SR_SOLVE_HALVES     rank/l2 and project/l2 rows with values above 2**1000 and eps below
//                       2**-958: solved unscaled (as on the CPU), with the block state kept as
//                       m = mean_B(s_j/2 - s_a/2), finite for every run of blocks (the bridge
//                       search pools runs far wider than any final block, whose d would
//                       overflow); reaches Pav as the negated strength too.
#pragma once
#include "prelude.cuh"

namespace softrank {

enum { OP_RANK = 0, OP_SORT = 1, OP_PROJECT = 2 };
enum { REG_L2 = 0, REG_KL = 1 };

enum { SR_SOLVE_PLAIN = 0, SR_SOLVE_SCALED = 1, SR_SOLVE_HARD_SORT = 2, SR_SOLVE_EPS_UNITS = 3,
       SR_SOLVE_HALVES = 4 };

#define SR_HUGE 1.0715086071862673e301          // 2**1000
#define SR_HUGE_SCALE 18446744073709551616.0    // 2**64
#define SR_TINY_RANK_EPS 4.1045368012983762e-289  // 2**-958: eps / 2**64 would be subnormal

// How a finite row is solved (header), from its largest and smallest s (hi = s_0, lo = s_{n-1}).
// Normal strengths and magnitudes are PLAIN.  Adjacent sort blocks pool only if their means
// differ by at least 1/eps, and no two means differ by more than the range (softrank/csrc/pav.h).
template <int OP, int REG>
SR_HD int sr_row_kind(double hi, double lo, long long n, double eps) {
  if (OP == OP_SORT && !(double(n) / eps <= SR_HUGE)) {
    if (((0.5 * hi) - (0.5 * lo)) * eps < 0.25) return SR_SOLVE_HARD_SORT;
    return REG == REG_L2 ? SR_SOLVE_SCALED : SR_SOLVE_EPS_UNITS;
  }
  if (REG == REG_L2 && (hi > -lo ? hi : -lo) > SR_HUGE) {
    if (OP != OP_SORT && eps < SR_TINY_RANK_EPS) return SR_SOLVE_HALVES;
    return SR_SOLVE_SCALED;
  }
  return SR_SOLVE_PLAIN;
}

// The solve of one row: s enters the PAV as s * in_scale, the strength as eps, outputs leave
// multiplied by out_scale; hard: every element its own block.
struct SrSolve {
  double in_scale;
  double out_scale;
  double eps;
  bool hard;
};

template <int OP, int REG>
SR_HD SrSolve sr_solve_of(double hi, double lo, long long n, double eps) {
  const int kind = sr_row_kind<OP, REG>(hi, lo, n, eps);
  SrSolve r = {1.0, 1.0, eps, kind == SR_SOLVE_HARD_SORT};
  if (kind == SR_SOLVE_SCALED) {
    r.in_scale = 1.0 / SR_HUGE_SCALE;
    if (OP == OP_SORT) {
      r.eps = eps * SR_HUGE_SCALE;
      r.out_scale = SR_HUGE_SCALE;
    } else {
      r.eps = eps / SR_HUGE_SCALE;
    }
  } else if (kind == SR_SOLVE_EPS_UNITS || kind == SR_SOLVE_HALVES) {
    r.eps = -eps;
  }
  return r;
}

// log(sum_{k<c} exp(-k / eps)) = log(expm1(-c/eps) / expm1(-1/eps)), exact 0 for c == 1.
template <typename A> SR_HD A sr_log_ramp_sum(long long c, A eps) {
  if (c == 1) return A(0);
  return sr_log(sr_expm1(-A(c) / eps) / sr_expm1(A(-1) / eps));
}

// The project modes' block state: s = the rank modes' accumulator, t = sum_B t.
template <typename A>
struct SrPair {
  A s;
  A t;
};

template <int OP, typename A> struct SrState { typedef A type; };
template <typename A> struct SrState<OP_PROJECT, A> { typedef SrPair<A> type; };

template <int OP, int REG, typename A>
struct Pav {
  typedef typename SrState<OP, A>::type State;
  static constexpr bool HAS_TARGET = OP == OP_PROJECT;

  // the sum-of-s or log-sum-exp part of a state
  static SR_HD A acc_of(const A& st) { return st; }
  static SR_HD A acc_of(const SrPair<A>& st) { return st.s; }
  // mean_B(rho) (closed form) or mean_B(t) (the state's second half over c)
  static SR_HD A weight_mean(const A&, long long a, long long c, long long n) {
    return A(n - a) - A(c - 1) * A(0.5);
  }
  static SR_HD A weight_mean(const SrPair<A>& st, long long, long long c, long long) {
    return st.t / A(c);
  }
  // sum_B rho = c*(n-a) - c*(c-1)/2 (R_B) or sum_B t (T_B)
  static SR_HD A weight_sum(const A&, long long a, long long c, long long n) {
    return A(c) * (A(n - a) - A(c - 1) * A(0.5));
  }
  static SR_HD A weight_sum(const SrPair<A>& st, long long, long long, long long) {
    return st.t;
  }
  static SR_HD void make(A& st, A acc, A) { st = acc; }
  static SR_HD void make(SrPair<A>& st, A acc, A t) {
    st.s = acc;
    st.t = t;
  }
  static SR_HD A add(A l, A r) { return REG == REG_L2 ? l + r : sr_log_add_exp(l, r); }

  // the state is relative to the block's first element (rank and project modes)
  static constexpr bool RELATIVE = OP != OP_SORT;

  // state of the singleton block holding s_j (t_j: the target at position j, project only)
  static SR_HD State init(A s, A t, A) {
    State st;
    make(st, RELATIVE ? (REG == REG_L2 ? A(0) : A(1)) : s, t);
    return st;
  }
  // relative pooling: shift = s_b - s_a <= 0 (right head minus left head; halved for
  // SR_SOLVE_HALVES, eps < 0), cl, cr = the lengths
  static SR_HD A rel_add(A l, A r, A shift, long long cl, long long cr, A eps) {
    if (REG == REG_L2 && eps < A(0)) return l + (A(cr) / A(cl + cr)) * ((r + shift) - l);
    return REG == REG_L2 ? (l + r) + A(cr) * shift : l + r * sr_exp(shift / eps);
  }
  static SR_HD A pool_acc(A left, A right, A shift, long long cl, long long cr, A eps) {
    return RELATIVE ? rel_add(left, right, shift, cl, cr, eps) : add(left, right);
  }
  static SR_HD SrPair<A> pool_acc(const SrPair<A>& left, const SrPair<A>& right, A shift,
                                  long long cl, long long cr, A eps) {
    SrPair<A> st;
    st.s = rel_add(left.s, right.s, shift, cl, cr, eps);
    st.t = left.t + right.t;
    return st;
  }
  // the pool of the adjacent runs [a, b) (left) and [b, b + cr) (right)
  template <class SV>
  static SR_HD State join(const State& left, const State& right, long long a, long long b,
                          long long cr, A eps, SV sv) {
    A shift = A(0);
    if (RELATIVE)
      shift = REG == REG_L2 && eps < A(0) ? A(0.5) * sv(b) - A(0.5) * sv(a) : sv(b) - sv(a);
    return pool_acc(left, right, shift, b - a, cr, eps);
  }
  // block value v_B (docs/CONTRACT.md), a = first position, c = length, sa = s_a
  static SR_HD A value(const State& st, long long a, long long c, long long n, A eps, A sa) {
    const A acc = acc_of(st);
    if (OP == OP_SORT && REG == REG_L2) return (A(n - a) - A(c - 1) * A(0.5)) / eps - acc / A(c);
    if (OP == OP_SORT && eps < A(0)) {  // sort/kl in units of eps (SR_SOLVE_EPS_UNITS)
      const A e = -eps;
      return (A(n - a) + e * sr_log_ramp_sum<A>(c, e)) - e * acc;
    }
    if (OP == OP_SORT) {  // sort/kl: logsumexp_B(rho / eps) - logsumexp_B(s)
      return A(n - a) / eps + sr_log_ramp_sum<A>(c, eps) - acc;
    }
    if (REG == REG_L2 && eps < A(0))  // SR_SOLVE_HALVES: acc = mean_B(s/2 - s_a/2)
      return A(2) * (A(0.5) * sa + acc) + eps * weight_mean(st, a, c, n);
    if (REG == REG_L2) return (sa + acc / A(c)) - eps * weight_mean(st, a, c, n);
    return sa + eps * sr_log(acc / weight_sum(st, a, c, n));
  }
  template <class SV>
  static SR_HD A val(const State& st, long long a, long long c, long long n, A eps, SV sv) {
    return value(st, a, c, n, eps, RELATIVE ? sv(a) : A(0));
  }
  // output at sorted position j (before the sign/scatter of the caller), sa = s_a
  static SR_HD A output(A s, const State& st, long long j, long long a, long long c, long long n,
                        A eps, int sign, A sa) {
    const A acc = acc_of(st);
    if (OP == OP_SORT && REG == REG_L2)
      return A(sign) * (acc / A(c) + (A(a - j) + A(c - 1) * A(0.5)) / eps);
    if (OP == OP_SORT && eps < A(0)) {  // (j - a)/eps alone may overflow where the output does not
      const A e = -eps;
      if (c == 1) return A(sign) * acc;  // exactly s: acc * e may underflow
      return A(sign) * (((acc - sr_log_ramp_sum<A>(c, e)) * e - A(j - a)) / e);
    }
    if (OP == OP_SORT) {
      // sort/kl: rho_j/eps - v_B with the rho terms combined exactly: (a - j)/eps - log(ramp)
      return A(sign) * (A(a - j) / eps - sr_log_ramp_sum<A>(c, eps) + acc);
    }
    if (REG == REG_L2 && eps < A(0))
      return ((s - sa) - A(2) * acc) / -eps + weight_mean(st, a, c, n);
    if (REG == REG_L2) return ((s - sa) - acc / A(c)) / eps + weight_mean(st, a, c, n);
    return sr_exp((s - sa) / eps) / acc * weight_sum(st, a, c, n);
  }
};

}  // namespace softrank
