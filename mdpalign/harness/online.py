r"""Online RL on tabular problems, exactly and by sampling, through the library's own loss functions.

A problem (:func:`bandit_problem`, :func:`tree_problem`) is a set of contexts, each with an enumerable set of
responses (an arm; a token path of a :class:`~mdpalign.envs.token_tree.TokenTree`), a reward per response, a reference
policy and β. The trained policy is a logits table ``θ (n_states, n_actions)`` (a
:class:`~mdpalign.policies.TabularPolicy`'s ``logits``), plus a value table ``V (n_states,)`` for PPO with a critic.
A *method* is one entry of :data:`METHODS` (name -> :class:`MethodSpec`; the single registry of method names);
:func:`method_spec` copies one with options overridden.

What one training step does (the same code in both modes, :func:`batch_losses`): for each prompt, ``G`` responses
(a group), their per-token log-probs under the trained and the sampling ("old", "data") policy, rewards shaped by the
KL placement (:func:`~mdpalign.objectives.kl_penalised_rewards`), advantages (none, exact value baseline,
:func:`~mdpalign.objectives.rloo_advantages`, :func:`~mdpalign.objectives.grpo_advantages`,
:func:`~mdpalign.objectives.remax_advantages`, :func:`~mdpalign.objectives.gae_advantages`), the per-token clipped
loss (:func:`~mdpalign.objectives.ppo_clip_loss`) plus ``β·``:func:`~mdpalign.objectives.kl_loss_term`, aggregated
by :func:`~mdpalign.objectives.aggregate_token_loss`, plus the critic's
:func:`~mdpalign.objectives.clipped_value_loss`.

**Exact mode.** The sampled loss is a function ``ℓ(θ; D)`` of the trained parameters and of the batch ``D`` drawn
from the data parameters ``θ_d``. Enumerating every context and every *ordered* group of ``G`` responses (``N^G``
per context) with probability ``w(D) = μ(x)·Π_i pi_{θ_d}(y_i|x)`` gives the surrogate
``S(θ, θ_d) = Σ_D w(D)·ℓ(θ; D)``; at ``θ_d = θ`` (weights and data held fixed) ``∇_θ S = E_D[∇_θ ℓ]``, the
expected sampled gradient, exactly. The **expected-update field** is ``F(θ) = ∇_θ S(θ, θ_d)|_{θ_d = θ}``; with
``epochs = K > 1`` inner steps against a frozen old policy (PPO epochs, TRL ``num_iterations``) it is the mean
displacement ``F(θ) = (θ − Φ_K(θ))/(K·η)``, ``Φ_K`` = ``K`` gradient steps of size ``η`` (``inner_lr``) on
``S(·, θ)`` from ``θ`` — the large-batch limit of ``K`` epochs (for ``K = 1`` it is the expected update exactly).
Gradient *descent* on the loss moves ``θ ← θ − lr·F(θ)``; a fixed point is ``F = 0``.

**Certified fixed points** (:func:`solve_fixed_point`, :func:`certify_fixed_point`). ``F`` is invariant to, and has
no component along, the structural null space ``N``: a per-state logit shift at every used state, every logit and
value of an unused state (one never visited: a complete prefix of a tree, a context of zero probability). Let
``Q`` be an orthonormal basis of the complement, ``J`` the Jacobian of ``F`` (autograd, exact), ``σ`` the smallest
singular value of ``QᵀJQ``. With ``θ*`` the fixed point and ``Δ = Q Qᵀ(θ − θ*)``, ``F(θ) = J̄·Δ`` with ``J̄`` the mean of
``J`` over the segment; if ``‖Qᵀ(J(θ') − J(θ))Q‖₂ <= σ/2`` on it (checked at the Newton estimate of ``θ*``), Weyl's
inequality gives ``σ_min(QᵀJ̄Q) >= σ/2`` and hence

    ‖Δ‖₂ <= 2·(‖F(θ)‖₂ + δ_F) / σ        (``logit_bound``; also bounds every value-table error)

where ``δ_F`` bounds the float64 error of the computed ``F`` (estimated as 10× the difference between two
summation orders, at least 1e-13). Every log-probability ``log pi(a|s)`` and every difference of two of them moves
by at most ``2·‖Δ_s‖_∞`` (log-softmax Jacobian rows have l1 norm 2), so ``log_prob_bound = 2·logit_bound + 1e-12``
(the 1e-12: float64 rounding of the log-softmax, as :func:`mdpalign.harness.offline.certified_logit_error`) bounds
``|log pi − log pi*|`` at every used state — the same ``4‖·‖/σ`` constant as the offline harness's ``4‖∇‖/μ``.

**Sampled mode** (:func:`sampled_gradients`, :func:`train_sampled`): real seeded draws (``torch.Generator``) of
contexts and groups, the same :func:`batch_losses`, SGD or Adam; trajectories for benchmarks with confidence intervals.

For later steps (property tests, ``mdpalign bench rlhf``), given a method name and options::

    problem = bandit_problem(rewards, ref_policy, beta)          # or tree_problem(tree, beta)
    spec = method_spec("grpo", group_size=2)                      # METHODS["grpo"] with options
    F = expected_update(problem, spec, params)                    # the field; params = initial_params(problem, spec)
    result = solve_fixed_point(problem, spec)                     # FixedPointResult: .probs, .log_prob_bound, ...
    cert = certify_fixed_point(problem, spec, params)             # the certificate at any params
    flow = exact_flow(problem, spec, steps=200, lr=0.5)           # plain expected-gradient descent (no fixed point)
    run = train_sampled(problem, spec, steps=500, seed=0)         # seeded sampled training, trajectory of policies
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from mdpalign.errors import MdpalignError
from mdpalign.objectives import (
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    SCALE_REWARDS,
    TOKEN_LOSS_TYPES,
    aggregate_token_loss,
    bradley_terry_loss,
    center_rewards_penalty,
    clipped_value_loss,
    gae_advantages,
    grpo_advantages,
    kl_estimate,
    kl_loss_term,
    kl_penalised_rewards,
    place_sequence_rewards,
    ppo_clip_loss,
    remax_advantages,
    rloo_advantages,
)

__all__ = [
    "ADVANTAGES", "FIXED_POINTS", "METHODS", "MAX_EXACT_BATCHES", "OPTIMIZERS",
    "HarnessError", "FixedPointError", "MethodSpec", "OnlineProblem", "Certificate", "FixedPointResult",
    "ExactFlow", "SampledRun",
    "method_spec", "bandit_problem", "tree_problem", "initial_params", "split_params", "policy_log_probs",
    "batch_losses", "expected_surrogate", "expected_update", "field_jacobian", "null_space_complement",
    "certify_fixed_point", "solve_fixed_point", "exact_flow", "sampled_gradients", "train_sampled",
    "bradley_terry_loss_closure",
]

_f64 = torch.float64

#: How a method turns (shaped) rewards into advantages: the raw reward (REINFORCE), minus the exact value
#: ``E_{pi_old}[reward | x]`` (an ideal critic), leave-one-out, group-normalised, minus the greedy reward, or GAE with
#: a learned tabular critic.
ADVANTAGES = ("none", "value", "rloo", "grpo", "remax", "gae")
#: What the method's fixed point is on a bandit (see :class:`MethodSpec`; the proofs module has the closed forms):
#: the Gibbs policy; the reverse-KL stationary point ``β·pi_ref/(λ − r)``; GRPO's ``pi_ref/(1 − P_G/β)``; Gibbs at
#: temperature ``β·G/(G−1)``; the stationary point of ``E r − β·E_pi[h²/2]`` (k2·ρ as a loss: effective advantage
#: ``r − β(h²/2 + h)``); none (``→ δ(argmax r)``: no regularisation); none (collapse onto a face of the simplex:
#: ``k3`` in the reward, and ``k2`` in the reward, whose effective advantage ``r − β·h²/2`` drives every arm with
#: ``pi < pi_ref`` further down). On token trees a KL *loss* is local (per token): the myopic fixed point.
FIXED_POINTS = ("gibbs", "reverse_kl", "grpo", "gibbs_tempered", "k2_moment", "none_greedy", "none_collapse")
#: Exact mode refuses to enumerate more than this many (context, group) batches.
MAX_EXACT_BATCHES = 65536
OPTIMIZERS = ("sgd", "adam")


class HarnessError(MdpalignError, ValueError):
    """Bad problem, method or option for the online harness; the message says which."""


class FixedPointError(MdpalignError, RuntimeError):
    """The root finder stalled, or the Jacobian off the null space is singular (no isolated fixed point)."""


@dataclass(frozen=True)
class MethodSpec:
    """One online-RL method: every choice that changes its expected update.

    advantage: one of :data:`ADVANTAGES`. kl_estimator / kl_placement: :data:`~mdpalign.objectives.KL_ESTIMATORS` /
    :data:`~mdpalign.objectives.KL_PLACEMENTS`; ``kl_estimator=None`` for no KL term. group_size: responses per
    prompt. scale_rewards, eps: GRPO's. loss_type: token aggregation (:data:`~mdpalign.objectives.TOKEN_LOSS_TYPES`).
    epochs, inner_lr: inner steps per batch against the frozen sampling policy (exact mode: gradient steps of size
    ``inner_lr``; sampled mode: optimizer steps). epsilon, epsilon_high: PPO clip. gamma, lam, value_clip,
    vf_coef: the critic (``advantage="gae"``; TRL ``PPOConfig`` defaults). fixed_point: what it lands on
    (:data:`FIXED_POINTS`, on a bandit). reference: paper / library configuration it follows.
    """

    name: str
    advantage: str = "none"
    kl_estimator: str | None = "k1"
    kl_placement: str = "reward"
    group_size: int = 1
    scale_rewards: str = "group"
    eps: float = 1e-4
    loss_type: str = "seq_sum"
    epochs: int = 1
    inner_lr: float = 0.5
    epsilon: float = 0.2
    epsilon_high: float | None = None
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float | None = 0.2
    vf_coef: float = 0.1
    fixed_point: str = "gibbs"
    reference: str = ""

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise HarnessError(f"unknown advantage {self.advantage!r}; valid: {', '.join(ADVANTAGES)}")
        if self.kl_estimator is not None and self.kl_estimator not in KL_ESTIMATORS:
            raise HarnessError(f"unknown kl_estimator {self.kl_estimator!r}; valid: {', '.join(KL_ESTIMATORS)} or None")
        if self.kl_placement not in KL_PLACEMENTS:
            raise HarnessError(f"unknown kl_placement {self.kl_placement!r}; valid: {', '.join(KL_PLACEMENTS)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise HarnessError(f"unknown scale_rewards {self.scale_rewards!r}; valid: {', '.join(SCALE_REWARDS)}")
        if self.loss_type not in TOKEN_LOSS_TYPES:
            raise HarnessError(f"unknown loss_type {self.loss_type!r}; valid: {', '.join(TOKEN_LOSS_TYPES)}")
        if self.fixed_point not in FIXED_POINTS:
            raise HarnessError(f"unknown fixed_point {self.fixed_point!r}; valid: {', '.join(FIXED_POINTS)}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise HarnessError(f"group_size must be an int >= 1, got {self.group_size!r}")
        if self.advantage in ("rloo", "grpo") and self.group_size < 2:
            raise HarnessError(f"advantage {self.advantage!r} needs group_size >= 2, got {self.group_size}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise HarnessError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not self.inner_lr > 0:
            raise HarnessError(f"inner_lr must be > 0, got {self.inner_lr}")

    @property
    def critic(self) -> bool:
        """Whether the method trains a value table (GAE advantages)."""
        return self.advantage == "gae"


#: (estimator, placement) -> what REINFORCE with that KL term lands on (kl.py's table of gradients).
_KL_FIXED_POINTS = {
    ("k1", "reward"): "gibbs", ("k1", "loss"): "none_greedy", ("k1", "loss_is"): "gibbs",
    ("k2", "reward"): "none_collapse", ("k2", "loss"): "gibbs", ("k2", "loss_is"): "k2_moment",
    ("k3", "reward"): "none_collapse", ("k3", "loss"): "reverse_kl", ("k3", "loss_is"): "gibbs",
}


_TRL = "TRL 1.16"
METHODS: dict[str, MethodSpec] = {s.name: s for s in [
    MethodSpec("reinforce", reference="Williams 1992; k1 of the sampling policy in the reward, summed over tokens"),
    MethodSpec("reinforce_baseline", advantage="value",
               reference="REINFORCE with the exact value baseline E_pi[r − β·k1 | x] (an ideal critic)"),
    MethodSpec("rloo", advantage="rloo", group_size=2,
               reference=f"Ahmadian et al. arXiv 2402.14740; {_TRL} RLOOTrainer defaults (num_generations=2, k1 in "
                         "the reward, mean over sequences of the sequence loss)"),
    MethodSpec("remax", advantage="remax",
               reference="Li et al. arXiv 2310.10505; verl compute_remax_outcome_advantage"),
    MethodSpec("ppo_clip", advantage="value", epochs=4,
               reference="Schulman et al. arXiv 1707.06347; 4 epochs against a frozen old policy, "
                         "exact value baseline"),
    MethodSpec("ppo_critic", advantage="gae", epochs=4, loss_type="seq_sum",
               reference="Ziegler et al. arXiv 1909.08593 / InstructGPT: per-token k1 in the reward, GAE(1, 0.95), "
                         "clipped value loss (TRL PPOConfig: vf_coef 0.1, cliprange_value 0.2, num_ppo_epochs 4)"),
    MethodSpec("grpo", advantage="grpo", group_size=4, kl_estimator="k3", kl_placement="loss", loss_type="grpo",
               fixed_point="grpo",
               reference="Shao et al. arXiv 2402.03300 (DeepSeekMath): group std, k3 as a loss, per-sequence mean"),
    MethodSpec("grpo_trl", advantage="grpo", group_size=4, kl_estimator="k3", kl_placement="loss_is",
               loss_type="dapo", fixed_point="grpo",
               reference=f"{_TRL} GRPOConfig defaults (loss_type='dapo', scale_rewards='group', "
                         "use_bias_correction_kl=True, epsilon=0.2) with beta > 0 (TRL's default beta is 0) and "
                         "num_generations 4 (TRL: 8)"),
    MethodSpec("grpo_bias_corrected", advantage="grpo", group_size=4, kl_estimator="k3", kl_placement="loss_is",
               loss_type="grpo", fixed_point="grpo",
               reference="GRPO with the importance-corrected k3·ρ (DeepSeek-V3.2, arXiv 2512.02556)"),
    MethodSpec("dr_grpo", advantage="grpo", group_size=4, scale_rewards="none", kl_estimator="k3",
               kl_placement="loss_is", loss_type="dr_grpo", fixed_point="gibbs_tempered",
               reference="Liu et al. arXiv 2503.20783 (no std, sum / (B·L)); with an unbiased reverse-KL gradient"),
    *[MethodSpec(f"kl_{e}_{p}", advantage="value", kl_estimator=e, kl_placement=p, fixed_point=_KL_FIXED_POINTS[e, p],
                 reference=f"REINFORCE (exact value baseline) with {e} "
                           f"{'in the reward' if p == 'reward' else 'as a loss'}"
                           f"{' × ρ' if p == 'loss_is' else ''} (Schulman's estimators; THEORY.md 'KL placement')")
      for e in KL_ESTIMATORS for p in KL_PLACEMENTS],
]}


def method_spec(name: str, **options: Any) -> MethodSpec:
    """``METHODS[name]`` with ``options`` (fields of :class:`MethodSpec`) replaced; errors name unknown ones."""
    if name not in METHODS:
        raise HarnessError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    fields = {f.name for f in dataclasses.fields(MethodSpec)} - {"name"}
    bad = sorted(set(options) - fields)
    if bad:
        raise HarnessError(f"unknown option(s) {bad} for method {name!r}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(METHODS[name], **options)


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True, eq=False)
class OnlineProblem:
    """Contexts ``c`` (probability ``context_probs[c]``), each with ``N`` responses given as token paths.

    states / actions / mask: ``(C, N, T)`` (int64, int64, bool): response ``n`` of context ``c`` emits
    ``actions[c, n, t]`` from state ``states[c, n, t]`` where ``mask`` is true. rewards ``(C, N)``; ref_token_logps
    ``(C, N, T)`` (0 where masked); ref_log_probs ``(n_states, n_actions)``; used_states ``(n_states,)`` bool: the
    states some response of a context of positive probability visits. kind: ``"bandit"`` or ``"tree"``; tree: the
    :class:`~mdpalign.envs.token_tree.TokenTree` (or None).
    """

    states: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    ref_token_logps: torch.Tensor
    ref_log_probs: torch.Tensor
    context_probs: torch.Tensor
    beta: float
    kind: str
    tree: Any = None

    @property
    def n_states(self) -> int:
        return self.ref_log_probs.shape[0]

    @property
    def n_actions(self) -> int:
        return self.ref_log_probs.shape[1]

    @property
    def n_contexts(self) -> int:
        return self.states.shape[0]

    @property
    def n_responses(self) -> int:
        return self.states.shape[1]

    @property
    def max_length(self) -> int:
        return self.states.shape[2]

    @property
    def used_states(self) -> torch.Tensor:
        live = self.context_probs > 0
        used = torch.zeros(self.n_states, dtype=torch.bool)
        used[self.states[live][self.mask[live]]] = True
        return used


def _beta(beta) -> float:
    b = float(beta)
    if not (math.isfinite(b) and b > 0):
        raise HarnessError(f"beta must be a finite number > 0, got {beta!r}")
    return b


def _context_probs(context_probs, n: int) -> torch.Tensor:
    if context_probs is None:
        return torch.full((n,), 1.0 / n, dtype=_f64)
    mu = torch.as_tensor(np.asarray(context_probs, dtype=np.float64)).reshape(-1)
    if mu.shape[0] != n or bool((mu < 0).any()) or abs(float(mu.sum()) - 1.0) > 1e-12:
        raise HarnessError(f"context_probs must be a probability vector of length {n}, got {mu.tolist()}")
    return mu


def bandit_problem(rewards, ref_policy, beta: float, context_probs=None) -> OnlineProblem:
    """A contextual bandit: ``rewards (X, K)``, ``ref_policy (X, K)`` (rows positive, summing to 1), ``β > 0``,
    contexts drawn from ``context_probs`` (default uniform). A response is one arm (one token from state ``x``)."""
    r = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    ref = np.atleast_2d(np.asarray(ref_policy, dtype=np.float64))
    if r.ndim != 2 or r.shape != ref.shape or r.shape[1] < 2:
        raise HarnessError(f"rewards {r.shape} and ref_policy {ref.shape} must share a shape (X, K) with K >= 2")
    if not np.all(np.isfinite(r)):
        raise HarnessError("rewards must be finite")
    if np.any(ref <= 0) or np.any(np.abs(ref.sum(axis=1) - 1.0) > 1e-12):
        raise HarnessError("ref_policy rows must be positive and sum to 1")
    X, K = r.shape
    states = torch.arange(X).reshape(X, 1, 1).expand(X, K, 1).contiguous()
    actions = torch.arange(K).reshape(1, K, 1).expand(X, K, 1).contiguous()
    log_ref = torch.as_tensor(np.log(ref), dtype=_f64)
    return OnlineProblem(states, actions, torch.ones(X, K, 1, dtype=torch.bool), torch.as_tensor(r, dtype=_f64),
                         log_ref.unsqueeze(-1).clone(), log_ref, _context_probs(context_probs, X), _beta(beta),
                         "bandit")


def tree_problem(tree, beta: float) -> OnlineProblem:
    """One prompt, the leaves of a :class:`~mdpalign.envs.token_tree.TokenTree` as responses (token paths from
    ``leaf_token_paths``), its leaf rewards and reference policy; the policy is over prefixes × tokens."""
    paths = tree.leaf_token_paths()
    states = torch.as_tensor(np.array(paths.states)).unsqueeze(0)
    actions = torch.as_tensor(np.array(paths.actions)).unsqueeze(0)
    mask = torch.as_tensor(np.array(paths.mask)).unsqueeze(0)
    log_ref = torch.as_tensor(np.array(tree.ref_log_probs), dtype=_f64)
    ref_tok = torch.where(mask, log_ref[states, actions], torch.zeros((), dtype=_f64))
    rewards = torch.as_tensor(np.array(tree.leaf_rewards), dtype=_f64).unsqueeze(0)
    return OnlineProblem(states, actions, mask, rewards, ref_tok, log_ref, torch.ones(1, dtype=_f64), _beta(beta),
                         "tree", tree)


# --------------------------------------------------------------------------- parameters


def _n_params(problem: OnlineProblem, spec: MethodSpec) -> int:
    return problem.n_states * problem.n_actions + (problem.n_states if spec.critic else 0)


def split_params(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor):
    """``(θ (..., S, A), V (..., S) or None)`` views of a flat ``(..., d)`` parameter vector."""
    S, A = problem.n_states, problem.n_actions
    if params.shape[-1] != _n_params(problem, spec):
        raise HarnessError(f"params must have {_n_params(problem, spec)} entries for this problem and method "
                           f"(S·A = {S * A}{' + S critic values' if spec.critic else ''}), got {params.shape[-1]}")
    theta = params[..., : S * A].reshape(*params.shape[:-1], S, A)
    values = params[..., S * A:] if spec.critic else None
    return theta, values


def initial_params(problem: OnlineProblem, spec: MethodSpec, start: str = "ref", seed: int = 0,
                   scale: float = 0.5) -> torch.Tensor:
    """A flat float64 parameter vector: logits ``log pi_ref`` (``"ref"``), 0 (``"uniform"``) or ``log pi_ref`` plus
    ``scale·N(0,1)`` noise from ``seed`` (``"random"``); critic values 0."""
    theta = problem.ref_log_probs.clone()
    if start == "uniform":
        theta = torch.zeros_like(theta)
    elif start == "random":
        g = torch.Generator().manual_seed(int(seed))
        theta = theta + scale * torch.randn(theta.shape, generator=g, dtype=_f64)
    elif start != "ref":
        raise HarnessError(f"unknown start {start!r}; valid: 'ref', 'uniform', 'random'")
    flat = theta.reshape(-1)
    if spec.critic:
        flat = torch.cat([flat, torch.zeros(problem.n_states, dtype=_f64)])
    return flat


def policy_log_probs(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` ``(S, A)`` of flat params (detached)."""
    theta, _ = split_params(problem, spec, params.detach())
    return torch.log_softmax(theta, dim=-1)


# --------------------------------------------------------------------------- one training step's loss


def _gather_logps(log_table: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor):
    """log-probs of ``actions`` at ``states`` (batch shape ``(M, ...)``) from a table ``(S, A)`` or per-batch
    ``(M, S, A)``; exactly 0 where masked."""
    if log_table.ndim == 2:
        lp = log_table[states, actions]
    else:
        m_idx = torch.arange(states.shape[0]).reshape(-1, *([1] * (states.ndim - 1))).expand_as(states)
        lp = log_table[m_idx, states, actions]
    return torch.where(mask, lp, torch.zeros((), dtype=lp.dtype))


def _shaped_rewards(problem, spec, rewards, old, ref, mask):
    if spec.kl_estimator is not None and spec.kl_placement == "reward":
        return kl_penalised_rewards(rewards, old, ref, mask, problem.beta, spec.kl_estimator)
    return rewards


def _response_log_probs(problem, log_data):
    """``log pi_data(y_n | x_c)`` ``(C, N)``: the sum of the response's token log-probs."""
    return _gather_logps(log_data, problem.states, problem.actions, problem.mask).sum(-1)


def _value_baselines(problem, spec, log_data):
    """Exact ``E_{pi_data}[shaped reward | x_c]`` ``(C,)``, differentiable in the data parameters."""
    old_all = _gather_logps(log_data, problem.states, problem.actions, problem.mask)
    shaped = _shaped_rewards(problem, spec, problem.rewards, old_all, problem.ref_token_logps, problem.mask)
    return (torch.exp(old_all.sum(-1)) * shaped).sum(-1)


def _greedy_responses(problem, theta_data):
    """Index ``(C,)`` of the response greedy decoding produces under the data policy (``argmax`` per state)."""
    best = theta_data.detach().argmax(dim=-1)
    is_greedy = ((problem.actions == best[problem.states]) | ~problem.mask).all(dim=-1)
    if not bool((is_greedy.sum(-1) == 1).all()):
        raise HarnessError("greedy decoding does not single out one response per context (malformed responses)")
    return is_greedy.to(torch.int64).argmax(dim=-1)


def batch_losses(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor, data_params: torch.Tensor,
                 contexts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """The method's aggregated loss of each batch -> ``(M,)``, built from the library's objectives.

    ``contexts (M, P)``: the prompts of batch ``m``; ``responses (M, P, G)``: indices of the ``G`` responses of each
    prompt. ``params`` (flat, or ``(M, d)`` — one copy per batch, for per-batch gradients) is what the loss is
    differentiated in; ``data_params`` (flat) is the policy that sampled the batch and the critic that scored it
    (old log-probs, KL in the reward, baselines, greedy response, GAE values) — detach it for a training step.
    """
    theta, values = split_params(problem, spec, params)
    theta_d, values_d = split_params(problem, spec, data_params)
    log_new = torch.log_softmax(theta, dim=-1)
    log_data = torch.log_softmax(theta_d, dim=-1)
    M, P = contexts.shape
    G = responses.shape[-1]
    c = contexts.unsqueeze(-1).expand(M, P, G)
    st, ac, mk = problem.states[c, responses], problem.actions[c, responses], problem.mask[c, responses]
    ref = problem.ref_token_logps[c, responses]
    r = problem.rewards[c, responses]                                     # (M, P, G)
    T = problem.max_length
    flat = lambda x: x.reshape(M, P * G, *x.shape[3:])                    # noqa: E731 groups contiguous
    st, ac, mk, ref, r = flat(st), flat(ac), flat(mk), flat(ref), flat(r)
    lp = _gather_logps(log_new, st, ac, mk)
    old = _gather_logps(log_data, st, ac, mk)
    returns = None
    if spec.advantage == "gae":
        token_rewards = place_sequence_rewards(r, mk)
        if spec.kl_estimator is not None and spec.kl_placement == "reward":
            token_rewards = token_rewards - problem.beta * kl_estimate(old, ref, spec.kl_estimator, mask=mk)
        v_old = torch.where(mk, values_d[st], torch.zeros((), dtype=_f64))
        adv, returns = gae_advantages(token_rewards, v_old, mk, spec.gamma, spec.lam)
    else:
        shaped = _shaped_rewards(problem, spec, r, old, ref, mk)          # (M, P·G)
        if spec.advantage == "none":
            adv = shaped
        elif spec.advantage == "value":
            b = _value_baselines(problem, spec, log_data)[c].reshape(M, P * G)
            adv = shaped - b
        elif spec.advantage == "rloo":
            adv = rloo_advantages(shaped, G).advantages
        elif spec.advantage == "grpo":
            adv = grpo_advantages(shaped, G, spec.scale_rewards, spec.eps).advantages
        else:  # remax: the greedy response's task reward, as verl
            greedy = _greedy_responses(problem, theta_d)
            adv = remax_advantages(shaped, problem.rewards[contexts, greedy[contexts]], group_size=G).advantages
    per_token = ppo_clip_loss(lp, old, adv, mk, spec.epsilon, spec.epsilon_high).losses
    if spec.kl_estimator is not None and spec.kl_placement != "reward":
        corrected = spec.kl_placement == "loss_is"
        per_token = per_token + problem.beta * kl_loss_term(lp, ref, mk, spec.kl_estimator,
                                                            old_token_logps=old if corrected else None,
                                                            use_bias_correction_kl=corrected)
    loss = aggregate_token_loss(per_token, mk, spec.loss_type,
                                max_completion_length=T if spec.loss_type == "dr_grpo" else None)
    if spec.critic:
        idx = st if values.ndim == 1 else (torch.arange(M).reshape(M, 1, 1).expand_as(st), st)
        v_new = torch.where(mk, values[idx], torch.zeros((), dtype=_f64))
        v_old = torch.where(mk, values_d[st], torch.zeros((), dtype=_f64))
        vl = clipped_value_loss(v_new, v_old, returns, mk, spec.value_clip).losses
        length = T if spec.loss_type == "dr_grpo" else None
        loss = loss + spec.vf_coef * aggregate_token_loss(vl, mk, spec.loss_type, max_completion_length=length)
    return loss


# --------------------------------------------------------------------------- exact mode


def _enumeration(problem: OnlineProblem, spec: MethodSpec, reverse: bool = False):
    live = torch.nonzero(problem.context_probs > 0).flatten()
    N, G = problem.n_responses, spec.group_size
    n_groups = N ** G
    if live.numel() * n_groups > MAX_EXACT_BATCHES:
        raise HarnessError(f"exact mode would enumerate {live.numel()} contexts × {N}^{G} groups = "
                           f"{live.numel() * n_groups} batches > MAX_EXACT_BATCHES = {MAX_EXACT_BATCHES}; "
                           "use a smaller group_size or problem, or sampled mode")
    groups = torch.tensor(list(itertools.product(range(N), repeat=G)), dtype=torch.int64).reshape(n_groups, G)
    contexts = live.repeat_interleave(n_groups)
    responses = groups.repeat(live.numel(), 1)
    if reverse:
        contexts, responses = contexts.flip(0), responses.flip(0)
    return contexts.reshape(-1, 1), responses.reshape(-1, 1, G)


def expected_surrogate(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor,
                       data_params: torch.Tensor | None = None, *, _reverse: bool = False) -> torch.Tensor:
    """``S(θ, θ_d) = Σ_D w(D)·ℓ(θ; D)`` over every (context, ordered group) ``D`` (module docstring) -> scalar.

    ``data_params`` defaults to ``params.detach()``: then ``∇S`` at ``params`` is exactly the expected sampled
    gradient of one step (for ``epochs = 1``). Weights ``w(D) = μ(x)·Π_i pi_data(y_i|x)`` depend on
    ``data_params`` (differentiably, for the field's Jacobian).
    """
    data = params.detach() if data_params is None else data_params
    contexts, responses = _enumeration(problem, spec, reverse=_reverse)
    theta_d, _ = split_params(problem, spec, data)
    log_resp = _response_log_probs(problem, torch.log_softmax(theta_d, dim=-1))        # (C, N)
    c = contexts[:, 0]
    w = problem.context_probs[c] * torch.exp(log_resp[c.unsqueeze(-1), responses[:, 0, :]].sum(-1))
    return (w * batch_losses(problem, spec, params, data, contexts, responses)).sum()


def _grad(problem, spec, params_loss, data, create_graph, reverse=False):
    s = expected_surrogate(problem, spec, params_loss, data, _reverse=reverse)
    return torch.autograd.grad(s, params_loss, create_graph=create_graph)[0]


def expected_update(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor, *,
                    create_graph: bool = False, _reverse: bool = False) -> torch.Tensor:
    """The expected-update field ``F(θ)`` (flat ``(d,)``, module docstring): ``E[∇ loss]`` for ``epochs = 1``, the
    mean inner displacement ``(θ − Φ_K(θ))/(K·inner_lr)`` otherwise. ``create_graph=True`` keeps it differentiable
    in ``params`` (both through the trained and the data role)."""
    if params.ndim != 1 or params.dtype != _f64:
        raise HarnessError(f"params must be a flat float64 vector, got shape {tuple(params.shape)}, {params.dtype}")
    if create_graph:
        base = params if params.requires_grad else params.detach().requires_grad_(True)
        data = base
    else:
        base = params.detach()
        data = base
    q = base + 0.0 if create_graph else base.clone().requires_grad_(True)
    total = None
    for k in range(spec.epochs):
        if not create_graph:
            q = q.detach().requires_grad_(True)
        g = _grad(problem, spec, q, data, create_graph, _reverse)
        # (θ − Φ_K(θ))/(K·η) = mean of the inner gradients: summed directly, never as a difference of O(1) logits
        total = g if total is None else total + g
        if k + 1 < spec.epochs:
            q = q - spec.inner_lr * g
    out = total / spec.epochs
    return out if create_graph else out.detach()


def field_jacobian(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor,
                   basis: torch.Tensor | None = None) -> torch.Tensor:
    """``J = ∂F/∂θ`` ``(d, d)`` by autograd (``torch.autograd.functional.jacobian``); with ``basis = Q (d, r)`` the
    reduced ``QᵀJQ`` ``(r, r)``, computed directly as the Jacobian of ``z ↦ QᵀF(θ + Qz)`` at 0 (``r`` backward
    passes instead of ``d``: a token tree's complete prefixes and per-state shifts drop out)."""
    p0 = params.detach().clone()
    if basis is None:
        return torch.autograd.functional.jacobian(lambda p: expected_update(problem, spec, p, create_graph=True), p0)
    Q = basis
    return torch.autograd.functional.jacobian(
        lambda z: Q.T @ expected_update(problem, spec, p0 + Q @ z, create_graph=True),
        torch.zeros(Q.shape[1], dtype=_f64))


def null_space_complement(problem: OnlineProblem, spec: MethodSpec) -> torch.Tensor:
    """Orthonormal basis ``Q (d, r)`` of the complement of the structural null space (module docstring): for each
    used state the ``A − 1`` zero-sum logit directions (and its critic value, if any); unused states contribute
    nothing."""
    S, A = problem.n_states, problem.n_actions
    d = _n_params(problem, spec)
    used = problem.used_states.tolist()
    centre = torch.eye(A, dtype=_f64) - 1.0 / A
    evals, evecs = torch.linalg.eigh(centre)
    zero_sum = evecs[:, evals > 0.5]                                        # (A, A−1)
    cols = []
    for s in range(S):
        if not used[s]:
            continue
        block = torch.zeros(d, A - 1, dtype=_f64)
        block[s * A:(s + 1) * A] = zero_sum
        cols.append(block)
        if spec.critic:
            e = torch.zeros(d, 1, dtype=_f64)
            e[S * A + s] = 1.0
            cols.append(e)
    return torch.cat(cols, dim=1)


class Certificate(NamedTuple):
    """residual ``‖F‖₂``; rounding ``δ_F``; sigma_min / sigma_max of ``QᵀJQ``; jacobian_variation
    ``‖Qᵀ(J(θ_N) − J(θ))Q‖₂`` at the Newton estimate ``θ_N`` of the fixed point (must be <= σ/2); logit_bound
    (``‖Δ‖₂``, also for critic values) and log_prob_bound (``|log pi − log pi*|`` at used states), see the module
    docstring; null_residual: ``‖F‖`` along the null space (rounding only); min_real_eigenvalue of ``QᵀJQ``: > 0
    means the fixed point attracts plain gradient descent with a small enough step (the one training reaches)."""

    residual: float
    rounding: float
    sigma_min: float
    sigma_max: float
    jacobian_variation: float
    logit_bound: float
    log_prob_bound: float
    null_residual: float
    min_real_eigenvalue: float


def certify_fixed_point(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor,
                        rel_singular: float = 1e-10) -> Certificate:
    """The certificate of the fixed point near ``params`` (module docstring). Raises :class:`FixedPointError` when
    ``QᵀJQ`` is singular (``σ_min <= rel_singular·σ_max``: no isolated fixed point) or the Jacobian varies by more
    than ``σ/2`` between ``params`` and the Newton estimate of the fixed point (the bound's premise fails)."""
    p = params.detach().clone()
    F = expected_update(problem, spec, p)
    F_rev = expected_update(problem, spec, p, _reverse=True)
    rounding = max(1e-13, 10.0 * float((F - F_rev).norm()))
    Q = null_space_complement(problem, spec)
    M = field_jacobian(problem, spec, p, basis=Q)
    sv = torch.linalg.svdvals(M)
    smin, smax = float(sv.min()), float(sv.max())
    if not smin > rel_singular * smax:
        raise FixedPointError(f"{spec.name}: the Jacobian of the field is singular off the structural null space "
                              f"(σ_min {smin:.3e}, σ_max {smax:.3e}): no isolated fixed point here")
    null_res = float((F - Q @ (Q.T @ F)).norm())
    p_newton = p - Q @ torch.linalg.solve(M, Q.T @ F)
    M_newton = field_jacobian(problem, spec, p_newton, basis=Q)
    variation = float(torch.linalg.matrix_norm(M_newton - M, ord=2))
    if variation > smin / 2:
        raise FixedPointError(f"{spec.name}: the Jacobian varies by {variation:.3e} > σ_min/2 = {smin / 2:.3e} "
                              f"towards the fixed point; move closer (residual {float(F.norm()):.3e}) "
                              "before certifying")
    logit = 2.0 * (float(F.norm()) + rounding) / smin
    lam = float(torch.linalg.eigvals(M).real.min())
    return Certificate(float(F.norm()), rounding, smin, smax, variation, logit, 2.0 * logit + 1e-12, null_res, lam)


class FixedPointResult(NamedTuple):
    """params (flat); log_probs / probs ``(S, A)`` — rows of unused states keep their starting logits (the reference
    by default: uniform at a tree's complete prefixes, the convention of :mod:`mdpalign.proofs.token_tree`, so the
    whole table can go to an ``Optimum.check(log_probs=..., tol=certificate.log_prob_bound)``); values ``(S,)`` or None;
    certificate (:class:`Certificate`); iterations (Newton steps); flow_steps (plain field steps taken first)."""

    params: torch.Tensor
    log_probs: torch.Tensor
    probs: torch.Tensor
    values: torch.Tensor | None
    certificate: Certificate
    iterations: int
    flow_steps: int


def solve_fixed_point(problem: OnlineProblem, spec: MethodSpec, params0: torch.Tensor | None = None, *,
                      tol: float = 1e-11, max_iter: int = 60, flow_lr: float = 0.5, flow_steps: int = 50,
                      max_flow_rounds: int = 20, max_step: float = 1.0) -> FixedPointResult:
    """Find ``F(θ) = 0`` and certify it: damped Newton on the reduced field ``QᵀF(θ₀ + Qz)`` (Jacobian by
    autograd; shifted by ``μ·I`` where it has eigenvalues of non-positive real part, so that the iteration follows
    the training flow to a *stable* fixed point rather than a saddle or a vertex of the simplex, where the field
    also vanishes; backtracking on ``‖F‖``; steps capped at ``max_step`` in every logit), preceded by rounds of
    ``flow_steps`` plain steps ``θ ← θ − flow_lr·F`` when a Newton step cannot reduce ``‖F‖``. Converged when
    ``‖F‖₂ <= tol``; otherwise (or when the Jacobian is singular)
    raises :class:`FixedPointError` with the final residual, like :class:`mdpalign.fit.NotConvergedError`.
    ``params0`` defaults to :func:`initial_params` (reference logits, zero critic).
    """
    p = (initial_params(problem, spec) if params0 is None else params0.detach().clone()).to(_f64)
    Q = null_space_complement(problem, spec)
    F = expected_update(problem, spec, p)
    res = float(F.norm())
    newton, flows, rounds = 0, 0, 0
    M = None
    while res > tol:
        if newton >= max_iter:
            raise FixedPointError(f"{spec.name}: no fixed point within {max_iter} Newton steps; residual {res:.3e} "
                                  f"> tol {tol:.1e}")
        if not math.isfinite(res):
            raise FixedPointError(f"{spec.name}: the field became non-finite")
        if M is None:  # a fresh Jacobian; kept while each step cuts the residual tenfold (chord steps)
            M = field_jacobian(problem, spec, p, basis=Q)
        # Far from the fixed point the Jacobian can have eigenvalues with negative real part (the loss is not
        # convex in the logits); a shift by μ·I makes the step a damped (Levenberg–Marquardt-like) one that still
        # points along the training flow, and μ = 0 near a stable fixed point keeps Newton's quadratic rate.
        lam_min = float(torch.linalg.eigvals(M).real.min())
        mu = 0.0 if lam_min > 0 else -2.0 * lam_min + 1e-6 * float(torch.linalg.matrix_norm(M, ord=2))
        try:
            step = -Q @ torch.linalg.solve(M + mu * torch.eye(M.shape[0], dtype=_f64), Q.T @ F)
        except RuntimeError:
            step = None
        accepted = False
        if step is not None and bool(torch.isfinite(step).all()):
            # trust region: the field also vanishes towards every vertex of the simplex, where a long Newton step
            # can land with a tiny residual and a singular Jacobian
            t = min(1.0, max_step / max(float(step.abs().max()), 1e-300))
            for _ in range(30):
                cand = p + t * step
                F_c = expected_update(problem, spec, cand)
                r_c = float(F_c.norm())
                if math.isfinite(r_c) and r_c <= (1.0 - 1e-4 * t) * res:
                    if not (t == 1.0 and r_c <= 0.1 * res):
                        M = None
                    p, F, res, accepted = cand, F_c, r_c, True
                    break
                t *= 0.5
        newton += 1
        if not accepted:
            M = None
            if rounds >= max_flow_rounds:
                raise FixedPointError(f"{spec.name}: Newton stalled after {newton} steps and {flows} flow steps; "
                                      f"residual {res:.3e} > tol {tol:.1e} (no fixed point, or it is at infinity)")
            for _ in range(flow_steps):
                p = p - flow_lr * F
                F = expected_update(problem, spec, p)
            flows += flow_steps
            rounds += 1
            res = float(F.norm())
    cert = certify_fixed_point(problem, spec, p)
    theta, values = split_params(problem, spec, p)
    log_probs = torch.log_softmax(theta, dim=-1)
    return FixedPointResult(p, log_probs, log_probs.exp(), values, cert, newton, flows)


class ExactFlow(NamedTuple):
    """params ``(n_recorded, d)`` along ``θ ← θ − lr·F(θ)``; steps (the step index of each row); residuals ``‖F‖``."""

    params: torch.Tensor
    steps: list
    residuals: list


def exact_flow(problem: OnlineProblem, spec: MethodSpec, steps: int, lr: float,
               params0: torch.Tensor | None = None, record_every: int = 1) -> ExactFlow:
    """Plain expected-update descent (deterministic; what infinitely large batches would do with SGD at ``lr``)."""
    p = (initial_params(problem, spec) if params0 is None else params0.detach().clone()).to(_f64)
    rows, idx, res = [p.clone()], [0], []
    for k in range(1, int(steps) + 1):
        F = expected_update(problem, spec, p)
        res.append(float(F.norm()))
        p = p - lr * F
        if k % record_every == 0 or k == steps:
            rows.append(p.clone())
            idx.append(k)
    return ExactFlow(torch.stack(rows), idx, res)


# --------------------------------------------------------------------------- sampled mode


def _sample_batches(problem, spec, log_data, n_batches, n_prompts, generator):
    resp_probs = torch.exp(_response_log_probs(problem, log_data))                       # (C, N)
    contexts = torch.multinomial(problem.context_probs, n_batches * n_prompts, replacement=True,
                                 generator=generator).reshape(n_batches, n_prompts)
    rows = resp_probs[contexts.reshape(-1)]
    responses = torch.multinomial(rows, spec.group_size, replacement=True, generator=generator)
    return contexts, responses.reshape(n_batches, n_prompts, spec.group_size)


def sampled_gradients(problem: OnlineProblem, spec: MethodSpec, params: torch.Tensor, n_batches: int,
                      generator: torch.Generator, n_prompts: int = 1) -> torch.Tensor:
    """Gradients of ``n_batches`` independently sampled batches (each ``n_prompts`` prompts × ``group_size``
    responses drawn from the policy at ``params``) -> ``(n_batches, d)``; their mean estimates
    :func:`expected_update` (``epochs = 1``; exactly its expectation when ``n_prompts = 1``)."""
    data = params.detach()
    theta_d, _ = split_params(problem, spec, data)
    contexts, responses = _sample_batches(problem, spec, torch.log_softmax(theta_d, -1), n_batches, n_prompts,
                                          generator)
    copies = data.unsqueeze(0).expand(n_batches, -1).clone().requires_grad_(True)
    losses = batch_losses(problem, spec, copies, data, contexts, responses)
    return torch.autograd.grad(losses.sum(), copies)[0]


class SampledRun(NamedTuple):
    """params ``(n_recorded, d)``; steps (index of each row); probs ``(n_recorded, S, A)``; seed."""

    params: torch.Tensor
    steps: list
    probs: torch.Tensor
    seed: int


def train_sampled(problem: OnlineProblem, spec: MethodSpec, steps: int, seed: int, *, lr: float = 0.1,
                  optimizer: str = "sgd", n_prompts: int = 1, params0: torch.Tensor | None = None,
                  record_every: int = 1) -> SampledRun:
    """Seeded sampled training: each step draws ``n_prompts`` prompts and a group of ``group_size`` responses per
    prompt from the current policy (``torch.Generator`` seeded with ``seed``), then takes ``epochs`` optimizer
    steps (``"sgd"`` or ``"adam"``, one optimizer for the whole run) on that batch's loss against the frozen
    sampling policy. Deterministic given the seed."""
    if optimizer not in OPTIMIZERS:
        raise HarnessError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    gen = torch.Generator().manual_seed(int(seed))
    p = (initial_params(problem, spec) if params0 is None else params0.detach().clone()).to(_f64)
    p.requires_grad_(True)
    opt = torch.optim.SGD([p], lr=lr) if optimizer == "sgd" else torch.optim.Adam([p], lr=lr)
    rows, idx = [p.detach().clone()], [0]
    for k in range(1, int(steps) + 1):
        data = p.detach().clone()
        theta_d, _ = split_params(problem, spec, data)
        contexts, responses = _sample_batches(problem, spec, torch.log_softmax(theta_d, -1), 1, n_prompts, gen)
        for _ in range(spec.epochs):
            opt.zero_grad()
            loss = batch_losses(problem, spec, p, data, contexts, responses).sum()
            loss.backward()
            opt.step()
        if k % record_every == 0 or k == steps:
            rows.append(p.detach().clone())
            idx.append(k)
    params = torch.stack(rows)
    theta, _ = split_params(problem, spec, params)
    return SampledRun(params, idx, torch.softmax(theta, dim=-1), int(seed))


# --------------------------------------------------------------------------- reward models


def bradley_terry_loss_closure(scores: torch.Tensor, wins, margin: float | None = None,
                                  center_coefficient: float | None = None):
    """A closure ``Σ_{x,i,j} W[x,i,j]·(bradley_terry_loss(s_xi, s_xj, m) + center_rewards_penalty)`` over a tabular
    score table ``scores (X, K)`` (a leaf tensor with ``requires_grad``) and win counts ``W[x, i, j]`` (``i`` chosen
    over ``j``), built from the library's :func:`~mdpalign.objectives.bradley_terry_loss` and
    :func:`~mdpalign.objectives.center_rewards_penalty` (weights as the batch mean of TRL's ``RewardTrainer`` would
    see them in expectation); minimise with :func:`mdpalign.fit.fit`."""
    W = np.asarray(wins, dtype=np.float64)
    if W.ndim != 3 or W.shape[1] != W.shape[2] or W.shape[:2] != tuple(scores.shape):
        raise HarnessError(f"wins must have shape (X, K, K) with (X, K) = scores' shape {tuple(scores.shape)}, "
                           f"got {W.shape}")
    xs, is_, js = np.nonzero(W > 0)
    w = torch.as_tensor(W[xs, is_, js], dtype=scores.dtype)
    x, i, j = (torch.as_tensor(a, dtype=torch.int64) for a in (xs, is_, js))

    def loss():
        rc, rr = scores[x, i], scores[x, j]
        total = bradley_terry_loss(rc, rr, margin).losses
        if center_coefficient is not None:
            total = total + center_rewards_penalty(rc, rr, center_coefficient)
        return (w * total).sum()

    return loss
