"""KL-regularised (soft) optimal values and policies, computed in log-space and certified."""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from mdpalign.checks import check_positive
from mdpalign.mdp import TabularMDP
from mdpalign.solve._rounding import SAFETY, TRANSCENDENTAL_ULPS, U, round_up, shifted_backup
from mdpalign.solve.backups import q_values
from mdpalign.solve.certificates import iterate_discounted, steps_kappa, warn_floor
from mdpalign.solve.checks import check_max_iter, check_mdp, check_tol
from mdpalign.solve.linear import _evaluate_from, evaluation_system, solve_linear
from mdpalign.solve.properness import is_proper, proper_greedy_policy
from mdpalign.solve.results import ConvergenceError, SoftSolution, SolverError, UnboundedMDPError

__all__ = ["soft_value_iteration", "soft_backup", "log_reference", "soft_policy_value", "soft_loop_gains"]

#: Relative error of numpy's float64 exp / expm1 / log / log1p (F4 of mdpalign.solve._rounding).
_K = 2 * TRANSCENDENTAL_ULPS * U


def _reference(mdp: TabularMDP, ref_policy=None) -> tuple[np.ndarray, np.ndarray]:
    """``(pi_ref, log pi_ref)`` as (S, A), each row normalised; uniform if None.

    The problem is defined with the *exactly* normalised reference ``ref / sum(ref)`` (rows given are accepted
    within 1e-8 of summing to 1); the float normalisation here is one more rounding, counted by the certificate.
    """
    S, A = mdp.n_states, mdp.n_actions
    if ref_policy is None:
        return np.full((S, A), 1.0 / A), np.full((S, A), -np.log(A))
    ref = np.asarray(ref_policy, dtype=np.float64)
    if ref.shape != (S, A):
        raise SolverError(f"ref_policy must have shape ({S}, {A}) (probabilities per state); got {ref.shape}")
    if not np.all(np.isfinite(ref)) or np.any(ref < 0):
        raise SolverError("ref_policy has negative or non-finite probabilities at (state, action) "
                          f"{np.argwhere(~(ref >= 0) | ~np.isfinite(ref))[:5].tolist()}")
    empty = ~(ref > 0).any(axis=1)
    if empty.any():
        raise SolverError(f"ref_policy puts no mass on any action at states {np.flatnonzero(empty)[:10].tolist()}; "
                          "the KL-regularised problem is undefined there")
    off = np.abs(ref.sum(axis=1) - 1.0)
    if np.any(off > 1e-8):
        s = int(np.argmax(off))
        raise SolverError(f"ref_policy row for state {s} sums to {ref[s].sum():.12g}, not 1")
    ref = ref / ref.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return ref, np.log(ref)


def log_reference(mdp: TabularMDP, ref_policy=None) -> np.ndarray:
    """``log pi_ref`` as (S, A) (rows normalised), ``-inf`` where the reference puts no mass; uniform if None."""
    return _reference(mdp, ref_policy)[1]


def _lse(X: np.ndarray, ref: np.ndarray, log_ref: np.ndarray, beta: float, E_X: np.ndarray | None = None,
         policy: bool = False):
    """``TX = beta log sum_a pi_ref(a) exp(X_a / beta)`` per row, accurate for tiny and huge ``X / beta``.

    With ``m = max X`` over the reference's support and ``z = (X - m)/beta <= 0``: ``s = sum pi_ref expm1(z)``
    (no cancellation: every term is <= 0) and ``TX = m + beta log1p(s)`` when ``s > -1/2``, which keeps full
    relative precision when all ``X`` are nearly equal (large beta: ``beta log t`` would amplify a rounding of
    ``t`` by beta); otherwise ``TX = m + beta log t`` with ``t = sum pi_ref exp(z) <= 1/2``. Both use
    ``sum pi_ref = 1`` exactly, which defines the reference.

    Rounding (given ``E_X``): ``z`` is off by ``2.01 u |z|`` (F1), which moves ``exp(z)`` and ``expm1(z)`` by
    ``2.01 u |z| e^z`` (their derivative is ``e^z <= 1``); the transcendental functions err by ``K`` relative
    (F4); the normalised ``pi_ref`` and the sum of ``n`` same-sign terms by ``(2n + 6) u`` relative. Hence
    ``|s^ - s| <= (K + (2n+6) u)|s^| + 2.05 u w`` with ``w = sum pi_ref |z| e^z``, and the error of ``L =
    log1p(s)`` is at most ``K |L| + 2.05 |s^ - s|`` (``1 + s >= 1/2``); of ``L = log t`` at most ``K |L| +
    1.01 |t^ - t| / t^``. Then ``TX = m + beta L`` adds ``u (|beta L| + |TX|)``. The inputs' own errors ``E_X``
    enter with the softmax weights (comment in the code), so ``E_T = e^{2 theta} sum_a pi_a E_X + SAFETY (beta
    err_L + u (|beta L| + |TX|))``, ``theta = max E_X / beta``.

    With ``policy``, also returns ``log pi = log pi_ref + (X - TX)/beta`` and ``theta``, a bound on its error
    against the exact soft-greedy policy of the exact ``X`` (the differences ``X - TX`` err by
    ``E_X + E_T``; ``log pi_ref`` by ``K |log pi_ref| + (n + 2) u``; two more roundings).
    """
    support = ref > 0
    x = np.where(support, X, -np.inf)
    m = x.max(axis=1)
    with np.errstate(invalid="ignore", under="ignore", divide="ignore"):
        z = (x - m[:, None]) / beta
        e = np.exp(z)
        s = np.where(support, ref * np.expm1(z), 0.0).sum(axis=1)
        t = (ref * e).sum(axis=1)
        near = s > -0.5
        L = np.where(near, np.log1p(np.where(near, s, 0.0)), np.log(np.where(near, 1.0, t)))
    TX = m + beta * L
    if E_X is None and not policy:
        return TX
    n = support.sum(axis=1)
    w = np.where(support, ref * np.where(support, -z, 0.0) * e, 0.0).sum(axis=1)
    rel = _K + (2 * n + 6) * U
    err_s = rel * np.abs(s) + 2.05 * U * w
    err_near = _K * np.abs(L) + 2.05 * err_s
    err_far = _K * np.abs(L) + 1.01 * (rel * t + 2.05 * U * w + n * 2.0 ** -1074) / np.where(near, 1.0, t)
    err_L = np.where(near, err_near, err_far)
    E_lse = SAFETY * (beta * err_L + U * (np.abs(beta * L) + np.abs(TX)))
    E_T = E_lse
    if E_X is not None:
        # lse(X) - lse(X^) = sum_a pi_a(xi) (X_a - X^_a) at some xi within E of X^ (mean value), and
        # pi_a(xi) <= pi^_a exp(2 theta), theta = max E / beta: the inputs' errors count with the softmax weights
        # (an action that cannot matter does not), or with weight 1 when theta is not small
        E_sup = np.where(support, E_X, 0.0)
        theta = E_sup.max(axis=1) / beta
        weights = np.where(support, ref * e, 0.0) / t[:, None]
        weighted = np.exp(2 * theta) * (1 + 1e-12) * (weights * E_sup).sum(axis=1)
        E_T = E_T + np.where(theta <= 0.3, np.minimum(weighted, E_sup.max(axis=1)), E_sup.max(axis=1))
    if not policy:
        return TX, E_T
    with np.errstate(invalid="ignore"):
        gap = np.where(support, (X - TX[:, None]) / beta, -np.inf)
        log_pi = np.where(support, log_ref + gap, -np.inf)
        E_Xs = 0.0 if E_X is None else E_X
        theta = SAFETY * ((E_Xs + E_T[:, None]) / beta + 2.02 * U * np.abs(np.where(support, gap, 0.0))
                          + _K * np.abs(np.where(support, log_ref, 0.0)) + (n[:, None] + 2) * U
                          + U * np.abs(np.where(support, log_pi, 0.0)))
    return TX, E_T, log_pi, np.where(support, theta, 0.0)


def soft_backup(mdp: TabularMDP, values: np.ndarray, beta: float, log_ref: np.ndarray):
    """``(T_beta V, Q, log pi)``: ``V' = beta logsumexp(log pi_ref + Q / beta)``, ``Q = R + gamma P V``.

    Terminal states keep value 0. The soft policy ``log pi = log pi_ref + (Q - V')/beta`` is
    returned normalised.
    """
    ref = np.exp(log_ref)
    q = q_values(mdp, values)
    V, _, log_pi, _ = _lse(q, ref, log_ref, beta, policy=True)
    V[mdp.terminal] = 0.0
    return V, q, log_pi


def soft_policy_value(mdp: TabularMDP, log_pi: np.ndarray, beta: float, log_ref: np.ndarray,
                      return_system: bool = False):
    """Soft value of a stochastic policy: ``E[sum_t gamma^t (r_t - beta KL(pi(s_t) || pi_ref(s_t)))]``.

    Linear solve ``(I - gamma P_pi) V = r_pi - beta KL_pi`` on the non-terminal states (needs a
    proper policy at gamma = 1).
    """
    pi = np.exp(log_pi)
    with np.errstate(invalid="ignore"):
        kl_terms = np.where(pi > 0, pi * (log_pi - log_ref), 0.0)
    kl = kl_terms.sum(axis=1)
    P_pi, r_pi = mdp.policy_transitions(pi / pi.sum(axis=1, keepdims=True))
    r = r_pi - beta * kl
    r[mdp.terminal] = 0.0
    V = _evaluate_from(mdp, P_pi, r, "direct")
    return (V, P_pi, r) if return_system else V


# ----------------------------------------------------------------------------- gamma = 1: boundedness
def _end_components(mdp: TabularMDP, allowed: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Maximal end components of the non-terminal part: ``[(states, actions (S, A) bool)]``.

    A set C with actions that never leave C and whose graph is strongly connected: exactly the sets a policy
    can stay in forever (de Alfaro 1997). Classical fixed point: drop actions leaving the surviving states or
    their strongly connected component, drop states left without actions, repeat.
    """
    S, A = mdp.n_states, mdp.n_actions
    coo = sp.coo_matrix(mdp.transition_matrix)
    keep = coo.data > 0
    r, col = coo.row[keep], coo.col[keep]
    src = r // A
    allowed = allowed & ~mdp.terminal[:, None]
    while True:
        alive = allowed.any(axis=1)
        live_rows = allowed.ravel()[r]
        graph = sp.csr_matrix((np.ones(int(live_rows.sum())), (src[live_rows], col[live_rows])), shape=(S, S))
        _, comp = connected_components(graph, directed=True, connection="strong")
        leaves = ~alive[col] | (comp[col] != comp[src])
        bad_rows = np.bincount(r[leaves], minlength=S * A).reshape(S, A) > 0
        new = allowed & ~bad_rows
        if np.array_equal(new, allowed):
            break
        allowed = new
    out = []
    alive = allowed.any(axis=1)
    for label in np.unique(comp[alive]):
        states = np.flatnonzero(alive & (comp == label))
        acts = np.zeros((S, A), dtype=bool)
        acts[states] = allowed[states]
        out.append((states, acts))
    return out


def soft_loop_gains(mdp: TabularMDP, beta: float, ref_policy=None, max_sweeps: int = 20_000
                    ) -> list[tuple[np.ndarray, float, float]]:
    """For each set of states a policy can stay in forever: ``(states, lo, hi)`` bracketing its *soft gain*.

    The soft gain of an end component C is ``g = sup_sigma`` of the long-run average of ``r - beta KL(sigma ||
    pi_ref)`` over policies using only actions that keep it in C (KL against the full reference, so leaving
    mass unused costs ``-log pi_ref(kept actions)``). It solves ``g + h = T_C h`` with ``T_C h(s) = beta log
    sum_{a kept} pi_ref(a|s) exp((R(s,a) + P_a h)/beta)``; for any ``h``, ``min(T_C h - h) <= g <=
    max(T_C h - h)`` (``T_C`` is monotone and commutes with constants, and ``g = lim T_C^n h / n``), iterated with
    the aperiodicity transform ``h <- (h + T_C h)/2``. At gamma = 1 the soft values are finite iff every gain is
    negative (with a proper reference): a positive gain lets a policy linger in C as long as it likes.

    Note: ``Z = exp(V/beta)`` satisfies the linear equation ``Z = M Z + b`` (``M = sum_a pi_ref e^{R/beta} P_a``)
    only for deterministic transitions; with stochastic ones ``V`` sits inside the expectation
    (``Z(s) = sum_a pi_ref e^{R/beta} prod_s' Z(s')^{P(s'|s,a)}``), so the Perron root of ``M`` being < 1 is
    sufficient for finite values (Jensen) but not necessary.
    """
    beta = check_positive(beta, "beta", error=SolverError)
    ref, log_ref = _reference(mdp, ref_policy)
    A = mdp.n_actions
    flat = sp.csr_matrix(mdp.transition_matrix)
    out = []
    for states, acts in _end_components(mdp, ref > 0):
        kept = np.where(acts, ref, 0.0)[states]
        mass = kept.sum(axis=1, keepdims=True)
        log_mass = beta * np.log(mass[:, 0])
        # the component's rows and columns only (kept actions never leave it; the others carry no weight)
        sub = flat[(states[:, None] * A + np.arange(A)[None, :]).ravel()][:, states]
        R = mdp.R[states]
        h = np.zeros(states.size)
        lo, hi = -np.inf, np.inf
        for _ in range(max_sweeps):
            Th = log_mass + _lse(R + (sub @ h).reshape(states.size, A), kept / mass, log_ref[states], beta)
            diff = Th - h
            lo, hi = float(diff.min()), float(diff.max())
            scale = max(1.0, float(np.max(np.abs(Th))))
            if lo > 0 or hi < 0 or hi - lo <= 1e-12 * scale:
                break
            h = 0.5 * (h + Th)
            h -= h[0]
        out.append((states, lo, hi))
    return out


def _check_bounded(mdp: TabularMDP, beta: float, ref_policy) -> None:
    for states, lo, hi in soft_loop_gains(mdp, beta, ref_policy):
        where = f"states {states[:10].tolist()}" + (f" (and {states.size - 10} more)" if states.size > 10 else "")
        if lo > 0 or (hi >= 0 and hi - lo <= 1e-12 * max(1.0, abs(hi))):
            borderline = "" if lo > 0 else " (on the boundary: the average is 0 to within rounding)"
            raise UnboundedMDPError(
                f"gamma = 1 and the KL-regularised values are unbounded at beta={beta:g}: a policy can stay forever "
                f"in {where}, using only actions that keep it there, and earn on average {lo:.3g} per step after the "
                f"KL penalty (reward minus beta * KL(pi || pi_ref)){borderline}. The reward of that loop outweighs "
                "the KL price of staying in it, so lingering longer always pays; values are finite only when every "
                "such loop has a negative average (the price grows with beta). Use gamma < 1, or make the loop costly."
            )
        if lo <= 0 <= hi:
            raise ConvergenceError(f"could not decide whether the soft values are bounded at gamma = 1: the average "
                                   f"soft reward of the loop in {where} lies in [{lo:.3g}, {hi:.3g}]")


# ----------------------------------------------------------------------------- gamma = 1: certificate
def soft_ssp_bound(mdp: TabularMDP, V: np.ndarray, beta: float, ref: np.ndarray, log_ref: np.ndarray) -> float:
    """Certified ``max |V - V*_beta|`` at gamma = 1 (module docstring of ``mdpalign.solve.certificates``, gamma = 1).

    ``sigma`` is the exact soft-greedy policy of ``V``, ``pi^`` its computed version, within ``Theta`` in L1
    (``|log sigma - log pi^| <= theta + K`` per action). ``w`` solves ``(I - P_pi^) w = 1``; ``kappa`` from
    :func:`~mdpalign.solve.certificates.steps_kappa` for ``pi^``, minus ``Theta max_a P_a w``, bounds
    ``(I - P_sigma) w`` from below. Lower side ``max(w)/kappa max(-d, 0)`` with ``d = T_beta V - V``
    (``T^sigma V = T_beta V``); upper side ``t max(w)`` for ``U = V + t w``, ``t = 2 max(d, 0) / kappa``, valid when
    ``max(d, 0) (rs max w)^2 <= 2 beta kappa^2`` (Hoeffding), else inf.
    """
    nonterm = ~mdp.terminal
    if not nonterm.any():
        return 0.0
    X, E_X = shifted_backup(mdp, 0.0, V, normalised=True)
    TX, E_T, log_pi, theta = _lse(X, ref, log_ref, beta, E_X, policy=True)
    d = TX - V
    E_d = E_T + SAFETY * U * (np.abs(TX) + np.abs(V) + np.abs(d))
    pi_hat = np.exp(log_pi)
    Theta = (pi_hat * np.expm1(theta + 1.01 * _K)).sum(axis=1)
    P_pi, _ = mdp.policy_transitions(pi_hat / pi_hat.sum(axis=1, keepdims=True))
    w = np.zeros(mdp.n_states)
    w[nonterm] = solve_linear(evaluation_system(mdp, P_pi), np.ones(int(nonterm.sum())), "direct")
    w = np.maximum(w, 0.0)
    if not np.all(np.isfinite(w)):
        return float("inf")
    rs_max = 1.0 + 4 * U  # normalised rows (and the product's rounding)
    w_max = Fraction(float(np.max(w))) * Fraction(rs_max)
    kappa = Fraction(steps_kappa(mdp, pi_hat, w)) - Fraction(1.01) * Fraction(float(np.max(Theta[nonterm]))) * w_max
    if not kappa > 0:
        return float("inf")
    d_hi = float(np.max((d + E_d)[nonterm]))
    d_lo = float(np.min((d - E_d)[nonterm]))
    d_hi = max(Fraction(0), Fraction(d_hi) + Fraction(U) * abs(Fraction(d_hi)))
    d_lo = max(Fraction(0), -(Fraction(d_lo) - Fraction(U) * abs(Fraction(d_lo))))
    steps = Fraction(float(np.max(w))) / kappa
    lower = steps * d_lo
    if d_hi * w_max ** 2 * Fraction(1.01) > 2 * Fraction(beta) * kappa ** 2:
        return float("inf")
    upper = 2 * d_hi / kappa * Fraction(float(np.max(w)))
    return round_up(max(lower, upper) * (1 + 16 * Fraction(U)))


# ----------------------------------------------------------------------------- the solver
def soft_value_iteration(mdp: TabularMDP, beta: float, ref_policy=None, tol: float = 1e-10,
                         max_iter: int = 100_000) -> SoftSolution:
    """Optimum of ``E[sum_t gamma^t (r_t - beta KL(pi(.|s_t) || pi_ref(.|s_t)))]``, in log-space.

    Soft Bellman equation (Ziebart 2010; Rafailov et al. 2024 "From r to Q*")::

        Q(s,a)  = R(s,a) + gamma sum_s' P(s'|s,a) V(s')
        V(s)    = beta log sum_a pi_ref(a|s) exp(Q(s,a)/beta)
        pi*(a|s) = pi_ref(a|s) exp((Q(s,a) - V(s)) / beta)

    ``pi_ref`` is uniform by default (rows are normalised exactly; zeros are allowed, those actions are
    excluded and log 0 = -inf never enters an exp, but a state whose reference has no mass is an error).
    Always a logsumexp, so beta down to 1e-4 (and below) neither overflows nor underflows to NaN.
    beta -> 0 gives the hard optimum: with a uniform reference ``-beta log|A| / (1-gamma) <= V_beta - V* <= 0``
    (the soft value of any policy is its plain value minus a non-negative KL term, and the optimal
    deterministic policy pays exactly ``beta log|A|`` per step against a uniform reference); beta -> infinity
    the reference policy's value.

    ``gamma < 1``: the soft operator is monotone, a gamma-contraction and shifts by at most
    ``gamma c`` under ``V + c``, so MacQueen's bounds hold exactly as for value iteration, certified with the
    rounding of the log-sum-exp included (:func:`~mdpalign.solve.certificates.iterate_discounted`); we stop at
    half-width ``<= tol`` (or at float64's floor, with a :class:`~mdpalign.solve.CertificateFloorWarning`) and
    return the midpoint and that half-width.

    ``gamma = 1``: first the soft values must be finite: they are iff every set of states a policy can stay in
    forever has a negative average soft reward (:func:`soft_loop_gains`), else
    :class:`~mdpalign.solve.UnboundedMDPError` names the loop. Then soft *policy* iteration (evaluate the
    current stochastic policy's soft value by a linear solve, improve it to ``softmax(log pi_ref + Q/beta)``;
    Newton's method on the soft Bellman equation), starting from ``pi_ref`` itself, which must be proper (its
    support reaches termination from every state; checked). Every iterate has the reference's support and so
    is proper, and the values increase monotonically. It stops when the certificate is ``<= tol``, or at the
    float64 floor (the change stops falling near convergence; warning), and raises
    :class:`~mdpalign.solve.ConvergenceError` after ``max_iter`` iterations. The values are the soft value of a
    proper policy; ``error_bound`` comes from :func:`soft_ssp_bound`.

    ``policy`` is the argmax of ``policy_probs`` (ties toward termination at gamma = 1; note that
    at gamma = 1 the greedy policy of a soft optimum can be improper even though the soft
    policy is not).
    """
    start = time.perf_counter()
    check_mdp(mdp)
    beta = check_positive(beta, "beta", error=SolverError)
    tol = check_tol(tol)
    max_iter = check_max_iter(max_iter)
    ref, log_ref = _reference(mdp, ref_policy)

    def finish(V, bound, iters):
        return _soft_solution(mdp, V, bound, iters, ref, log_ref, beta, time.perf_counter() - start)

    if mdp.gamma < 1.0:
        def reduce(X, E_X=None):
            return _lse(X, ref, log_ref, beta, E_X)

        cert, k = iterate_discounted(mdp, reduce, tol, max_iter, np.zeros(mdp.n_states), "soft_value_iteration")
        return finish(cert.values, cert.bound, k)
    return _soft_policy_iteration_ssp(mdp, beta, ref_policy, ref, log_ref, tol, max_iter, finish)


def _soft_solution(mdp: TabularMDP, V: np.ndarray, bound: float, iters: int, ref: np.ndarray, log_ref: np.ndarray,
                   beta: float, seconds: float) -> SoftSolution:
    """The soft-optimal Q, policy probabilities and greedy policy of the values ``V``."""
    q = q_values(mdp, V)
    _, _, log_pi, _ = _lse(q, ref, log_ref, beta, policy=True)
    if mdp.gamma == 1.0:
        policy, _ = proper_greedy_policy(mdp, log_pi, tie_tol=1e-12)
    else:
        policy = log_pi.argmax(axis=1).astype(np.int64)
    return SoftSolution(V, q, policy, bound, iters, "soft_value_iteration", seconds,
                        policy_probs=np.exp(log_pi), log_policy=log_pi, beta=beta)


def _soft_policy_iteration_ssp(mdp: TabularMDP, beta: float, ref_policy, ref: np.ndarray, log_ref: np.ndarray,
                               tol: float, max_iter: int, finish) -> SoftSolution:
    """``gamma = 1``: soft policy iteration from the (proper) reference, certified by :func:`soft_ssp_bound`."""
    gamma = mdp.gamma
    if not is_proper(mdp, ref):
        raise SolverError("at gamma = 1 the reference policy must be proper (its support must reach a terminal "
                          "state from every state); otherwise the KL-regularised values are undefined")
    _check_bounded(mdp, beta, ref_policy)
    nonterm = ~mdp.terminal
    pi, beta_kl = ref, np.zeros(mdp.n_states)
    prev, stalls, flat = np.inf, 0, 0
    for it in range(1, max_iter + 1):
        # soft value of pi: r_pi - beta KL(pi || pi_ref), with beta KL = sum_a pi (Q - V') taken from the backup
        # that produced pi (no cancellation of beta * (log pi - log pi_ref) at large beta)
        P_pi, r_pi = mdp.policy_transitions(pi / pi.sum(axis=1, keepdims=True))
        r = np.where(nonterm, r_pi - beta_kl, 0.0)
        try:
            V = _evaluate_from(mdp, P_pi, r, "direct")
        except (sla.LinAlgError, RuntimeError) as exc:
            raise ConvergenceError(f"soft policy iteration at gamma = 1, beta={beta:g}: the evaluation became "
                                   f"singular ({exc}); the soft-optimal policy is numerically improper") from exc
        if not np.all(np.isfinite(V)):
            raise ConvergenceError(f"soft policy iteration at gamma = 1, beta={beta:g}: non-finite values; the "
                                   "soft-optimal policy is numerically improper")
        X = shifted_backup(mdp, 0.0, V, with_error=False)
        TX, _, new_log_pi, _ = _lse(X, ref, log_ref, beta, policy=True)
        change = float(np.max(np.abs(TX - V)[nonterm], initial=0.0))
        flat = flat + 1 if change >= 0.5 * prev else 0
        near = change <= 1e-7 * max(1.0, float(np.max(np.abs(V))))
        if near or flat >= 20:
            bound = soft_ssp_bound(mdp, V, beta, ref, log_ref)
            if bound <= tol:
                return finish(V, bound, it)
            flat = 0
            stalls += bool(near and change >= 0.25 * prev)
            if stalls >= 2:  # Newton's quadratic phase is over: the change is rounding noise
                warn_floor("soft_value_iteration", bound, tol, bound, V, gamma,
                           "; soft policy iteration stopped improving at rounding noise")
                return finish(V, bound, it)
        prev = change
        pi = np.exp(new_log_pi)
        beta_kl = np.where(ref > 0, pi * (X - TX[:, None]), 0.0).sum(axis=1) / pi.sum(axis=1)
    raise ConvergenceError(f"soft policy iteration did not converge within {max_iter} iterations at gamma = 1 "
                           f"(last change {prev:.3g})")
