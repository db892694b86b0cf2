"""Independent answer keys for the solvers' certificates: exact rational and 50-digit decimal arithmetic.

Nothing here calls mdpalign.solve. ``V*`` is the optimum of the MDP as the solvers define it (module docstring of
``mdpalign.solve.certificates``): at gamma < 1 the stored float64 ``P``, ``R``, ``gamma`` read as exact rationals; at
gamma = 1 each row of ``P`` divided by its exact sum, the optimum taken over proper policies.
"""
from __future__ import annotations

import itertools
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

from mdpalign import TabularMDP


def fraction_solve(M: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination in exact rationals; ``ZeroDivisionError`` if ``M`` is singular."""
    n = len(b)
    rows = [row[:] + [b[i]] for i, row in enumerate(M)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if rows[r][col] != 0), None)
        if pivot is None:
            raise ZeroDivisionError("singular system")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        p = rows[col][col]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col] / p
                rows[r] = [x - f * y for x, y in zip(rows[r], rows[col])]
    return [rows[i][n] / rows[i][i] for i in range(n)]


def exact_model(mdp):
    """``(P, R, gamma)`` as nested lists of Fractions (rows normalised exactly at gamma = 1)."""
    P = mdp.dense_P()
    S, A = mdp.n_states, mdp.n_actions
    Pf = [[[Fraction(float(x)) for x in P[s, a]] for a in range(A)] for s in range(S)]
    if mdp.gamma == 1.0:
        Pf = [[[x / sum(row) for x in row] for row in Ps] for Ps in Pf]
    Rf = [[Fraction(float(x)) for x in mdp.R[s]] for s in range(S)]
    return Pf, Rf, Fraction(mdp.gamma)


def exact_policy_value(mdp, policy, model=None) -> list[Fraction]:
    """``V^pi`` of a deterministic policy, exactly; ``ZeroDivisionError`` if singular (improper at gamma = 1)."""
    Pf, Rf, g = model or exact_model(mdp)
    N = [s for s in range(mdp.n_states) if not mdp.terminal[s]]
    M = [[(1 if i == j else 0) - g * Pf[s][policy[s]][t] for j, t in enumerate(N)] for i, s in enumerate(N)]
    v = fraction_solve(M, [Rf[s][policy[s]] for s in N])
    out = [Fraction(0)] * mdp.n_states
    for s, x in zip(N, v):
        out[s] = x
    return out


def exact_optimum(mdp) -> list[Fraction]:
    """``V*`` by enumerating every deterministic policy (``A^S`` of them; tiny MDPs only) and taking the
    state-wise maximum of the exact values of those whose system is nonsingular (at gamma = 1 an improper policy
    has a closed class of non-terminal states, on which ``I - P`` is singular). A deterministic policy attains
    the optimum in every state simultaneously, so the maximum is ``V*``."""
    model = exact_model(mdp)
    best = None
    for policy in itertools.product(range(mdp.n_actions), repeat=mdp.n_states):
        try:
            v = exact_policy_value(mdp, policy, model)
        except ZeroDivisionError:
            continue
        best = v if best is None else [max(x, y) for x, y in zip(best, v)]
    return best


def exact_optimum_by_improvement(mdp, policy) -> list[Fraction]:
    """``V*`` by policy iteration in exact rationals from a (proper, at gamma = 1) policy: switch to strictly
    better actions until none exists; then ``T V^pi = V^pi`` exactly, so ``V^pi`` is a super-solution and bounds
    every (proper) policy's value. Much faster than :func:`exact_optimum` (cross-checked against it)."""
    Pf, Rf, g = model = exact_model(mdp)
    policy = [int(a) for a in policy]
    S, A = mdp.n_states, mdp.n_actions
    while True:
        V = exact_policy_value(mdp, policy, model)
        changed = False
        for s in range(S):
            if mdp.terminal[s]:
                continue
            q = [Rf[s][a] + g * sum(p * v for p, v in zip(Pf[s][a], V)) for a in range(A)]
            best = max(range(A), key=lambda a: q[a])
            if q[best] > q[policy[s]]:
                policy[s], changed = best, True
        if not changed:
            return V


def exact_finite_horizon(mdp, H: int) -> list[list[Fraction]]:
    """Backward induction in exact rationals: ``[V_0, ..., V_H]`` (stored rows, also at gamma = 1)."""
    P = mdp.dense_P()
    S, A = mdp.n_states, mdp.n_actions
    Pf = [[[Fraction(float(x)) for x in P[s, a]] for a in range(A)] for s in range(S)]
    Rf = [[Fraction(float(x)) for x in mdp.R[s]] for s in range(S)]
    g = Fraction(mdp.gamma)
    values = [[Fraction(0)] * S]
    for _ in range(H):
        nxt = values[0]
        values.insert(0, [Fraction(0) if mdp.terminal[s] else
                          max(Rf[s][a] + g * sum(p * v for p, v in zip(Pf[s][a], nxt)) for a in range(A))
                          for s in range(S)])
    return values


def max_error(values, exact) -> Fraction | Decimal:
    """``max_s |values[s] - exact[s]|`` with the float values read exactly."""
    if isinstance(exact[0], Decimal):
        return max(abs(Decimal(float(v)) - w) for v, w in zip(values, exact))
    return max(abs(Fraction(float(v)) - w) for v, w in zip(values, exact))


def soft_optimum(mdp, beta: float, ref=None, digits: int = 50) -> tuple[list[Decimal], Decimal]:
    """The KL-regularised optimum in ``digits``-digit decimal arithmetic (exp and ln correctly rounded), and a
    bound on its own error.

    Soft policy iteration (evaluate the soft value of a stochastic policy by a linear solve, improve to the
    soft-greedy policy; quadratic convergence) from the reference, until the change is below ``10^-(digits-8)``.
    The reference is normalised exactly (uniform ``1/A`` by default). Error bound: with ``d = T V - V``, at
    gamma < 1 ``max|d| / (1 - gamma')`` (contraction, ``gamma' = gamma * max row sum``); at gamma = 1 (rows
    normalised) ``10 * steps * max|d|`` with ``steps`` the expected number of steps to termination under the
    final policy (valid for the all-proper MDPs it is used on). Both plus a ``10^-(digits-10) max|V|`` allowance
    for the decimal rounding itself.
    """
    with localcontext() as ctx:
        ctx.prec = digits
        P = mdp.dense_P()
        S, A = mdp.n_states, mdp.n_actions
        term = mdp.terminal
        g, b = Decimal(mdp.gamma), Decimal(beta)
        Pd = [[[Decimal(float(x)) for x in P[s, a]] for a in range(A)] for s in range(S)]
        if mdp.gamma == 1.0:
            Pd = [[[x / sum(row) for x in row] for row in Ps] for Ps in Pd]
        Rd = [[Decimal(float(x)) for x in mdp.R[s]] for s in range(S)]
        if ref is None:
            rho = [[Decimal(1) / A] * A for _ in range(S)]
        else:
            rho = [[Decimal(float(x)) for x in ref[s]] for s in range(S)]
            rho = [[x / sum(r) for x in r] for r in rho]
        N = [s for s in range(S) if not term[s]]

        def solve(M, rhs):
            n = len(rhs)
            rows = [row[:] + [rhs[i]] for i, row in enumerate(M)]
            for c in range(n):
                p = max(range(c, n), key=lambda r: abs(rows[r][c]))
                rows[c], rows[p] = rows[p], rows[c]
                for r in range(n):
                    if r != c and rows[r][c] != 0:
                        f = rows[r][c] / rows[c][c]
                        rows[r] = [x - f * y for x, y in zip(rows[r], rows[c])]
            return [rows[i][n] / rows[i][i] for i in range(n)]

        def backup(V):
            TV, pi = [Decimal(0)] * S, [None] * S
            for s in N:
                q = [Rd[s][a] + g * sum(p * v for p, v in zip(Pd[s][a], V)) for a in range(A)]
                support = [a for a in range(A) if rho[s][a] > 0]
                m = max(q[a] for a in support)
                TV[s] = m + b * sum(rho[s][a] * ((q[a] - m) / b).exp() for a in support).ln()
                pi[s] = [rho[s][a] * ((q[a] - TV[s]) / b).exp() if rho[s][a] > 0 else Decimal(0) for a in range(A)]
            return TV, pi

        def evaluate(pi, rewards=True):
            M, rhs = [], []
            for s in N:
                Pp = [sum(pi[s][a] * Pd[s][a][t] for a in range(A)) for t in range(S)]
                M.append([(1 if s == t else 0) - g * Pp[t] for t in N])
                if rewards:
                    kl = sum(pi[s][a] * (pi[s][a] / rho[s][a]).ln() for a in range(A) if pi[s][a] > 0)
                    rhs.append(sum(pi[s][a] * Rd[s][a] for a in range(A)) - b * kl)
                else:
                    rhs.append(Decimal(1))
            out = [Decimal(0)] * S
            for s, x in zip(N, solve(M, rhs)):
                out[s] = x
            return out

        pi = [[rho[s][a] for a in range(A)] for s in range(S)]
        V = evaluate(pi)
        tiny = Decimal(10) ** -(digits - 8)
        for _ in range(200):
            _, pi = backup(V)
            new = evaluate(pi)
            done = max(abs(x - y) for x, y in zip(new, V)) <= tiny * (1 + max(abs(x) for x in V))
            V = new
            if done:
                break
        TV, pi = backup(V)
        d = max(abs(TV[s] - V[s]) for s in N)
        allowance = Decimal(10) ** -(digits - 10) * (1 + max(abs(x) for x in V))
        if mdp.gamma < 1.0:
            gp = g * max(Decimal(1), max(sum(Pd[s][a]) for s in N for a in range(A)))
            radius = d / (1 - gp) + allowance
        else:
            radius = 10 * max(evaluate(pi, rewards=False)) * d + allowance
        return V, radius


def random_small_mdp(rng: np.random.Generator, S: int, A: int, gamma: float, scale: float, sparse: bool,
                     terminal: bool, density: float = 1.0, leak: bool = False):
    """A tiny random MDP: rows ``U(0,1)`` (a ``1 - density`` share zeroed, at least one entry kept), normalised in
    float64; rewards ``U(0, scale)``; optionally the last state terminal (rows of the others keep some mass
    on it only if drawn, or with ``leak`` at least 1/21 of it). At gamma = 1 the last state is terminal and
    leaks are on, so every policy is proper."""
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < density)
    P[..., 0] += (P.sum(axis=2) == 0)
    term = np.zeros(S, dtype=bool)
    if terminal or gamma == 1.0:
        term[-1] = True
        if leak or gamma == 1.0:
            P[..., -1] += 0.05 * P.sum(axis=2)
    P /= P.sum(axis=2, keepdims=True)
    R = rng.random((S, A)) * scale
    for t in np.flatnonzero(term):
        P[t] = 0.0
        P[t, :, t] = 1.0
    R[term] = 0.0
    flat = sp.csr_matrix(P.reshape(S * A, S)) if sparse else P
    return TabularMDP(flat, R, gamma, terminal=term)


def unbounded_soft_mdp():
    """Issue 9 item 2's reproduction: gamma = 1, {0, 1} can be closed (a0 in 0, a1 in 1) with rewards 1 and 2; every
    policy is proper for the hard problem's optimum, but the soft values are unbounded."""
    P = np.zeros((3, 2, 3))
    P[0, 0] = [.2, .8, 0]
    P[0, 1] = [0, .3, .7]
    P[1, 0] = [.5, 0, .5]
    P[1, 1] = [.1, .9, 0]
    P[2, :, 2] = 1
    R = np.array([[1., 0], [.5, 2], [0, 0]])
    return TabularMDP(P, R, 1.0, terminal=[False, False, True])
