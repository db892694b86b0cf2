r"""Token trees with a *per-token local* KL loss: the myopic fixed point (Tang & Munos, arXiv 2506.09477).

Setting: a :class:`~mdpalign.envs.token_tree.TokenTree` with sequence reward ``r(y)``, token policy
``pi(a|s)``, reference ``pi_ref(a|s)``. On-policy training that puts the sequence reward into a policy
gradient and the KL of *each token* into the loss — TRL ``GRPOTrainer`` (``beta > 0``), verl
``use_kl_loss``, TRL's Nash-MD KL term — has the expected ascent direction, at every prefix ``s`` with
visitation ``d(s) > 0``,

    d(s) pi(.|s) ⊙ (A_s - E_{pi(.|s)} A_s),     A_s(a) = Q_r(s, a) - beta k_eff(h(a|s)),

where ``Q_r(s, a) = E_pi[r(y) | s, a]`` is the *reward-only* value of continuing with ``pi`` (the policy
gradient of ``E r`` at ``s`` is ``d(s) pi(a|s) (Q_r(s,a) - V_r(s))``) and ``k_eff`` is the local KL's effective
penalty (:mod:`mdpalign.proofs.online_rl`): ``h`` for k2 / ``k3·rho`` losses (``kl="reverse"``),
``1 - e^{-h}`` for k3 as a loss (``kl="k3_loss"``, GRPO's default). The future KL of the continuation
never enters ``A_s`` — the penalty is local. Fixed point, at every prefix (all have ``d > 0``, ``pi > 0``):

    kl="reverse":  pi(a|s) ∝ pi_ref(a|s) exp(Q_r(s, a)/beta)
    kl="k3_loss":  pi(a|s) = beta pi_ref(a|s) / (lambda_s - Q_r(s, a))

This is a backward recursion: ``Q_r(s, a) = V_r(s.a)`` depends only on the policy strictly below ``s``,
so solving the deepest prefixes first, each ``pi(.|s)`` is a closed form of already-fixed numbers, and
``V_r(s) = sum_a pi(a|s) Q_r(s, a)`` (``V_r = r`` at complete prefixes). The fixed point is therefore
unique (each step is).

Gap to the soft optimum ``pi*`` (:func:`mdpalign.proofs.token_tree.token_tree_optimum`, the fixed point
of the *sequence-level* KL — k1 in the reward, summed over the sequence): for any policy, the
reward-only value splits as ``V_r^pi(s) = V_soft^pi(s) + beta KL_seq^pi(s)``, the KL-regularised value
plus ``beta`` times the KL of ``pi``'s continuation below ``s`` to ``pi_ref``'s. So the myopic target uses

    Q_r(s, a) = V*(s.a) + beta KL_seq(s.a) - [V*(s.a) - V_soft(s.a)]

instead of ``V*(s.a)``: a branch whose continuation must move far from the reference is over-weighted
by ``exp(KL_seq)``, less the soft regret below. At a prefix whose children decide only among complete
responses, ``pi = pi*`` below, the regret is 0 and ``Q_r - V* = beta KL(pi*(.|s.a) || pi_ref(.|s.a))`` exactly.
``random_token_tree(3, 3, seed=0)`` at ``beta = .5``: max ``|pi - pi*|`` = 0.206 over prefixes (THEORY.md's
"0.21 on the 3x3 tree"); the root's soft regret ``V*(root) - V_soft^pi(root)`` is in ``extras``.

Token-loss aggregation: the statement assumes the policy-gradient and KL terms carry the same
per-token weight — a sum over tokens, or a per-sequence mean when every response has the same
length (``eos=None``). A per-sequence mean ``1/|y|`` over responses of different lengths reweights the
policy gradient by length and changes ``Q_r`` (TRL's ``loss_type="grpo"``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from mdpalign.checks import check_positive
from mdpalign.proofs.base import (
    ProofInputError,
    UniqueOptimum,
    pinned_all_pairs,
    pinned_array,
)
from mdpalign.proofs.online_rl import _k3_lambda_row
from mdpalign.proofs.token_tree import soft_backward_recursion

__all__ = ["TREE_LOCAL_KL", "token_tree_local_kl_optimum"]

TREE_LOCAL_KL = ("reverse", "k3_loss")


def token_tree_local_kl_optimum(tree: Any, beta: float, kl: str = "reverse") -> UniqueOptimum:
    """The myopic fixed point of a per-token local KL loss on a token tree (module docstring).

    Returns a :class:`UniqueOptimum` over ``(n_prefixes, V)`` (constrained = incomplete prefixes; rows
    of complete prefixes are uniform and unconstrained), like
    :func:`~mdpalign.proofs.token_tree.token_tree_optimum`. ``extras``: ``q_reward`` ``(n_prefixes, V)``
    (``Q_r``, ``nan`` at complete prefixes), ``values_reward`` (``V_r``), ``values_soft`` (``V_soft`` of this
    policy), ``subtree_kl`` (``KL_seq`` of its continuation), ``values_star`` (``V*``), ``soft_regret``
    (``V*(root) - V_soft(root) >= 0``), ``error_bound`` (k3: certified sup-norm bound on ``log pi`` per
    prefix *given* the children's values, which are exact sums).
    """
    beta = check_positive(beta, "beta", error=ProofInputError)
    if kl not in TREE_LOCAL_KL:
        raise ProofInputError(f"kl must be one of {TREE_LOCAL_KL}, got {kl!r}")
    n, V = tree.n_prefixes, tree.vocab_size
    complete = np.asarray(tree.is_complete)
    children = np.asarray(tree.children)
    depth = np.asarray(tree.depth)
    log_ref = np.asarray(tree.ref_log_probs)
    v_r = np.zeros(n)
    v_soft = np.zeros(n)
    kl_sub = np.zeros(n)
    v_r[tree.leaf_prefixes] = tree.leaf_rewards
    v_soft[tree.leaf_prefixes] = tree.leaf_rewards
    log_pi = np.full((n, V), -np.log(V))
    q_r = np.full((n, V), np.nan)
    bound = np.zeros(n)
    for d in range(int(depth.max()), -1, -1):
        ids = np.flatnonzero((depth == d) & ~complete)
        for s in ids:
            ch = children[s]
            Q = v_r[ch]
            q_r[s] = Q
            if kl == "reverse":
                z = log_ref[s] + Q / beta
                lp = z - logsumexp(z)
            else:
                t, bound[s] = _k3_lambda_row(Q, np.exp(log_ref[s]), beta)
                lp = np.log(beta) + log_ref[s] - np.log(t + (Q.max() - Q))
            log_pi[s] = lp
            p = np.exp(lp)
            h = lp - log_ref[s]
            v_r[s] = p @ Q
            kl_sub[s] = p @ (h + kl_sub[ch])
            v_soft[s] = p @ (v_soft[ch] - beta * h)
    v_star, _ = soft_backward_recursion(tree, beta)
    constrained = ~complete
    rows: list = []
    for x in np.flatnonzero(constrained):
        rows += pinned_all_pairs(int(x), np.arange(V), log_pi[x])
    return UniqueOptimum(
        objective=f"token_tree_local_kl_{kl}",
        shape=(n, V),
        policy=np.exp(log_pi),
        pinned=pinned_array(rows),
        vanishing=np.zeros((n, V), bool),
        constrained=constrained,
        attained=True,
        derivation="per-token local KL: pi(a|s) from the reward-only Q of the policy below s, solved bottom-up.",
        extras={"q_reward": q_r, "values_reward": v_r, "values_soft": v_soft, "subtree_kl": kl_sub,
                "values_star": v_star, "soft_regret": float(v_star[0] - v_soft[0]), "error_bound": bound, "beta": beta},
    )
