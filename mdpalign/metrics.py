"""How far a learned policy is from a target: the IFT paper's parameter MSE and well-posed,
policy-level distances computed exactly on a :class:`~mdpalign.mdp.TabularMDP`.

All functions are pure, take numpy arrays (torch tensors are accepted and converted), compute in
float64 and return Python floats. Policies are ``(S, A)`` row-stochastic matrices (a
deterministic ``(S,)`` int policy is accepted wherever a policy is evaluated).

Conventions
-----------
* Occupancy: ``occ_pi(s) = sum_t gamma^t P(s_t = s)`` from ``mdp.initial`` (unnormalised; it sums
  to ``1 / (1 - gamma)``). The *visitation* ``d_pi`` is ``occ_pi`` restricted to non-terminal
  states and normalised to sum to 1: at a terminal (absorbing) state the action has no effect,
  so no divergence is charged there.
* KL(p || q) = sum_a p_a log(p_a / q_a) with 0 log 0 = 0, and +inf where q_a = 0 < p_a.

Why parameter MSE is reported but not trusted: adding c(s) to every logit of state s leaves the
policy unchanged but moves the parameters (see ``tests/test_metrics.py``), and with a
near-deterministic target the loss keeps pushing logits outward, so the MSE to any fixed
``theta*`` can grow while the policy gets better.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from mdpalign.checks import check_positive, to_numpy
from mdpalign.errors import MdpalignError
from mdpalign.mdp import InvalidMDPError, TabularMDP
from mdpalign.solve import evaluate, occupancy, soft_value_iteration, state_success_probabilities

__all__ = [
    "MetricError",
    "parameter_mse",
    "state_kl",
    "visitation",
    "visitation_kl",
    "visitation_tv",
    "trajectory_kl",
    "value_gap",
    "success_probability",
    "soft_value",
    "soft_value_gap",
    "start_value",
]


class MetricError(MdpalignError, ValueError):
    """A metric was asked for with inputs that do not fit (shapes, missing keys, bad weights)."""


# --------------------------------------------------------------------------- helpers
def _policy(mdp: TabularMDP, policy, name: str) -> np.ndarray:
    """``(S, A)`` float64 policy matrix (validated by the MDP)."""
    arr = policy.detach().cpu().numpy() if hasattr(policy, "detach") else np.asarray(policy)
    try:
        return mdp.policy_as_matrix(arr)
    except ValueError as exc:
        raise MetricError(f"{name}: {exc}") from None


def state_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise ``KL(p[s] || q[s]) = sum_a p log(p / q)`` for ``(S, A)`` matrices.

    Exact zero where ``p == q`` row-wise; ``+inf`` where ``q`` puts no mass on ``p``'s support.
    """
    p = to_numpy(p)
    q = to_numpy(q)
    if p.shape != q.shape:
        raise MetricError(f"state_kl: shapes differ: p {p.shape} vs q {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    terms = np.where((p > 0) & (q <= 0), np.inf, terms)
    return terms.sum(axis=-1)


# --------------------------------------------------------------------------- parameters
def _flatten_params(params, name: str) -> tuple[list[str], list[np.ndarray]]:
    if isinstance(params, Mapping):
        keys = list(params.keys())
        return keys, [to_numpy(params[k]) for k in keys]
    if hasattr(params, "state_dict") and callable(params.state_dict):
        sd = params.state_dict()
        keys = list(sd.keys())
        return keys, [to_numpy(sd[k]) for k in keys]
    if hasattr(params, "shape"):
        return ["0"], [to_numpy(params)]
    if isinstance(params, Iterable):
        arrs = [to_numpy(p) for p in params]
        return [str(i) for i in range(len(arrs))], arrs
    raise MetricError(f"{name}: expected a module, a state dict or a sequence of arrays; got {type(params).__name__}")


def parameter_mse(params, ref_params) -> float:
    """The IFT paper's metric (arXiv 2405.11870, sec. 5.3): mean squared parameter difference.

    MSE = (1/N) * sum_i (theta_i - theta*_i)^2 over all N scalar parameters, flattened.

    ``params``/``ref_params``: ``nn.Module``s, state dicts (matched by key) or sequences of
    arrays (matched by position). Not invariant to per-state logit shifts or to any other
    re-parameterisation that leaves the policy unchanged.
    """
    k1, a1 = _flatten_params(params, "params")
    k2, a2 = _flatten_params(ref_params, "ref_params")
    if isinstance(params, Mapping) or hasattr(params, "state_dict"):
        if set(k1) != set(k2):
            raise MetricError(f"parameter_mse: parameter names differ: {sorted(set(k1) ^ set(k2))}")
        lookup = dict(zip(k2, a2))
        a2 = [lookup[k] for k in k1]
    if len(a1) != len(a2):
        raise MetricError(f"parameter_mse: {len(a1)} parameter tensors vs {len(a2)} reference tensors")
    for k, x, y in zip(k1, a1, a2):
        if x.shape != y.shape:
            raise MetricError(f"parameter_mse: parameter {k!r} has shape {x.shape}, reference has {y.shape}")
    n = sum(x.size for x in a1)
    if n == 0:
        raise MetricError("parameter_mse: no parameters")
    return float(sum(np.sum((x - y) ** 2) for x, y in zip(a1, a2)) / n)


# --------------------------------------------------------------------------- visitation
def visitation(mdp: TabularMDP, policy) -> np.ndarray:
    """Normalised discounted state visitation of ``policy`` from ``mdp.initial`` on non-terminal states.

    d(s) = occ(s) / sum_{s' non-terminal} occ(s') for non-terminal s, 0 on terminal states,
    occ(s) = sum_t gamma^t P(s_t = s) (exact, via :func:`mdpalign.solve.occupancy`).
    """
    pi = _policy(mdp, policy, "policy")
    occ = _state_occupancy(mdp, pi)
    occ = np.where(mdp.terminal, 0.0, occ)
    total = occ.sum()
    if not total > 0:
        raise MetricError("visitation: the policy never visits a non-terminal state (all start states terminal?)")
    return occ / total


def _weights(mdp: TabularMDP, pi_star: np.ndarray, pi: np.ndarray, weights) -> np.ndarray:
    if isinstance(weights, str):
        if weights == "pi_star":
            return visitation(mdp, pi_star)
        if weights == "pi":
            return visitation(mdp, pi)
        if weights == "uniform":
            w = (~mdp.terminal).astype(np.float64)
            return w / w.sum()
        raise MetricError(f"weights must be 'pi_star', 'pi', 'uniform' or an (S,) array; got {weights!r}")
    w = to_numpy(weights)
    if w.shape != (mdp.n_states,):
        raise MetricError(f"weights must have shape ({mdp.n_states},); got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or not w.sum() > 0:
        raise MetricError("weights must be finite, non-negative and not all zero")
    return w / w.sum()


def visitation_kl(mdp: TabularMDP, pi_star, pi, weights="pi_star") -> float:
    """Visitation-weighted KL: sum_s d(s) KL(pi*(.|s) || pi(.|s)).

    d = :func:`visitation` of ``pi_star`` by default (``"pi"``: of ``pi``; ``"uniform"``: uniform
    over non-terminal states; or explicit ``(S,)`` weights, normalised). Zero iff ``pi`` equals
    ``pi_star`` on every state with d(s) > 0.
    """
    p = _policy(mdp, pi_star, "pi_star")
    q = _policy(mdp, pi, "pi")
    d = _weights(mdp, p, q, weights)
    kl = state_kl(p, q)
    on = d > 0
    return float(np.sum(d[on] * kl[on]))


def visitation_tv(mdp: TabularMDP, pi_star, pi, weights="pi_star") -> float:
    """Visitation-weighted total variation: sum_s d(s) * (1/2) sum_a |pi*(a|s) - pi(a|s)| (in [0, 1])."""
    p = _policy(mdp, pi_star, "pi_star")
    q = _policy(mdp, pi, "pi")
    d = _weights(mdp, p, q, weights)
    return float(np.sum(d * 0.5 * np.abs(p - q).sum(axis=1)))


def trajectory_kl(mdp: TabularMDP, pi_star, pi, horizon: int | None = None) -> float:
    """KL between the trajectory distributions of ``pi_star`` and ``pi`` (same dynamics, same start).

    The dynamics cancel in the likelihood ratio, leaving
    KL(P_{pi*} || P_pi) = sum_{t < H} E_{s ~ P_{pi*}(s_t)}[KL(pi*(.|s) || pi(.|s))]
    (undiscounted). ``horizon=None`` sums until termination, which requires ``pi_star`` to
    terminate with probability 1 (otherwise a :class:`MetricError`); no KL is charged at
    terminal states.
    """
    p = _policy(mdp, pi_star, "pi_star")
    q = _policy(mdp, pi, "pi")
    kl = np.where(mdp.terminal, 0.0, state_kl(p, q))
    if horizon is not None:
        if int(horizon) != horizon or horizon < 0:
            raise MetricError(f"horizon must be a non-negative integer; got {horizon!r}")
        occ = _state_occupancy(mdp.with_gamma(1.0) if mdp.gamma != 1.0 else mdp, p, horizon=int(horizon))
    else:
        occ = _expected_visits_until_termination(mdp, p)
    on = occ > 0
    return float(np.sum(occ[on] * kl[on]))


# --------------------------------------------------------------------------- values
def start_value(mdp: TabularMDP, policy) -> float:
    """J(pi) = sum_s initial(s) V^pi(s), exact (via :func:`mdpalign.solve.evaluate`)."""
    pi = _policy(mdp, policy, "policy")
    return float(mdp.initial @ _values(mdp, pi))


def value_gap(mdp: TabularMDP, pi_star_or_values, pi) -> float:
    """J(pi*) - J(pi), exact.

    ``pi_star_or_values``: a policy (``(S, A)`` matrix or ``(S,)`` int array) or the optimal
    values ``V*`` as an ``(S,)`` float array (then J(pi*) = initial @ V*). Non-negative when
    the first argument is the (hard) optimum.
    """
    ref = pi_star_or_values.detach().cpu().numpy() if hasattr(pi_star_or_values, "detach") else np.asarray(
        pi_star_or_values
    )
    if ref.shape == (mdp.n_states,) and np.issubdtype(ref.dtype, np.floating):
        j_star = float(mdp.initial @ ref.astype(np.float64))
    else:
        j_star = start_value(mdp, ref)
    return j_star - start_value(mdp, pi)


def success_probability(mdp: TabularMDP, policy, goal_states, horizon: int | None = None) -> float:
    """Probability, from ``mdp.initial``, of ever entering ``goal_states`` (within ``horizon`` steps if given)."""
    pi = _policy(mdp, policy, "policy")
    goals = np.atleast_1d(np.asarray(goal_states, dtype=np.int64))
    if goals.size == 0 or goals.min() < 0 or goals.max() >= mdp.n_states:
        raise MetricError(f"goal_states must be non-empty state indices in [0, {mdp.n_states}); got {goals.tolist()}")
    return float(mdp.initial @ _success(mdp, pi, goals, horizon))


def _checked_ref(mdp: TabularMDP, ref) -> np.ndarray:
    if ref is None:
        return np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    return _policy(mdp, ref, "ref")


def soft_value(mdp: TabularMDP, beta: float, ref, pi) -> np.ndarray:
    """KL-regularised value of ``pi``: V^pi_beta = E_pi[sum_t gamma^t (r_t - beta KL(pi(.|s_t) || ref(.|s_t)))].

    Exact: the policy evaluation of ``pi`` on the MDP whose reward is
    R(s, a) - beta (log pi(a|s) - log ref(a|s)) at non-terminal states (no penalty at terminal
    states: the episode is over). ``ref=None`` is uniform.
    """
    beta = check_positive(beta, "beta", error=MetricError)
    p = _policy(mdp, pi, "pi")
    r = _checked_ref(mdp, ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(p > 0, np.log(p) - np.log(r), 0.0)
    if np.any((p > 0) & (r <= 0) & ~mdp.terminal[:, None]):
        raise MetricError("soft_value: pi puts mass on actions the reference excludes (KL is infinite)")
    R = np.where(mdp.terminal[:, None], 0.0, mdp.R - beta * log_ratio)
    shaped = TabularMDP(mdp.transition_matrix if mdp.is_sparse else mdp.P, R, mdp.gamma, mdp.initial, mdp.terminal)
    return _values(shaped, p)


def soft_value_gap(mdp: TabularMDP, beta: float, ref, pi) -> float:
    """V*_beta(s0) - V^pi_beta(s0) (expectation over ``mdp.initial``), exact.

    V*_beta from :func:`mdpalign.solve.soft_value_iteration` with reference ``ref``; V^pi_beta
    from :func:`soft_value`. Identity (THEORY.md): the gap equals
    beta * sum_t gamma^t E_{d_t^pi}[KL(pi(.|s) || pi*_beta(.|s))] >= 0, zero iff pi = pi*_beta
    on the states pi visits.
    """
    beta = check_positive(beta, "beta", error=MetricError)
    v_star = _soft_optimal_values(mdp, beta, _checked_ref(mdp, ref))
    return float(mdp.initial @ (v_star - soft_value(mdp, beta, ref, pi)))


# --------------------------------------------------------------------------- solver access
# Every number comes from mdpalign.solve; these adapters only pick the fields we need.
def _values(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    return _as_values(evaluate(mdp, pi))


def _as_values(result) -> np.ndarray:
    values = getattr(result, "values", result)
    return np.asarray(values, dtype=np.float64)


def _state_occupancy(mdp: TabularMDP, pi: np.ndarray, horizon: int | None = None) -> np.ndarray:
    occ = occupancy(mdp, pi) if horizon is None else occupancy(mdp, pi, horizon=horizon)
    occ = np.asarray(getattr(occ, "state_action", occ), dtype=np.float64)
    return occ.sum(axis=1) if occ.ndim == 2 else occ


def _expected_visits_until_termination(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    undiscounted = mdp if mdp.gamma == 1.0 else _with_gamma_one(mdp)
    # Termination with probability 1 is what makes the undiscounted sum finite.
    p_term = mdp.initial @ np.asarray(
        state_success_probabilities(undiscounted, pi, np.flatnonzero(mdp.terminal)), dtype=np.float64
    )
    if not p_term > 1.0 - 1e-9:
        raise MetricError(
            f"trajectory_kl(horizon=None): pi_star terminates with probability {p_term:.6g} < 1; give a horizon"
        )
    return _state_occupancy(undiscounted, pi)


def _with_gamma_one(mdp: TabularMDP) -> TabularMDP:
    try:
        return mdp.with_gamma(1.0)
    except InvalidMDPError as exc:
        raise MetricError(f"trajectory_kl(horizon=None) needs termination: {exc}") from None


def _success(mdp: TabularMDP, pi: np.ndarray, goals: np.ndarray, horizon: int | None) -> np.ndarray:
    if horizon is None:
        return _as_values(state_success_probabilities(mdp, pi, goals))
    res = state_success_probabilities(mdp, pi, goals, horizon=horizon)
    return _as_values(res)


def _soft_optimal_values(mdp: TabularMDP, beta: float, ref: np.ndarray) -> np.ndarray:
    return _as_values(soft_value_iteration(mdp, beta, ref_policy=ref))
