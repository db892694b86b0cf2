"""The bug census as mutation tests: each bug class that issue 11 lists (reported in TRL / verl) is rebuilt here as a
faulty variant *around the library's own functions* (a wrapper swapped into :mod:`mdpalign.harness.online` with
``monkeypatch``, a mutated problem, or a mutated loss closure), and the fixed-point check is shown to **fail** on it
by more than the certified tolerance, while the correct version passes at that tolerance.

"Certified tolerance": the correct run's ``certificate.log_prob_bound`` (exact field, Newton-solved) or the offline
``4‖∇‖/μ``; a faulty run that still has an isolated fixed point is certified the same way and its distance to the
correct answer key must exceed *both* bounds (so the failure is not rounding or an unconverged solve); a faulty run
with no fixed point (collapse, no regularisation) is followed along the exact expected-update flow.

The measured violations are the numbers in the README's bug-census table (``pytest -s`` prints them).
"""
import math

import numpy as np
import pytest
import torch

from mdpalign.envs.token_tree import random_token_tree
from mdpalign.harness import online
from mdpalign.harness.offline import certified_logit_error, fit_tabular, tabular_policy
from mdpalign.harness.online import (
    FixedPointError,
    bandit_problem,
    exact_flow,
    expected_update,
    initial_params,
    method_spec,
    solve_fixed_point,
    tree_problem,
)
from mdpalign.objectives import (
    aggregate_token_loss,
    dpo_loss,
    grpo_advantages,
    kl_loss_term,
    kl_penalised_rewards,
    place_sequence_rewards,
)
from mdpalign.objectives.token_batches import zero_where_masked
from mdpalign.proofs import leaf_pair_table, token_tree_optimum
from mdpalign.proofs.grpo import grpo_optimum
from mdpalign.proofs.ipo import ipo_scores
from mdpalign.proofs.kl_rl import kl_rl_optimum
from mdpalign.proofs.token_tree_online import token_tree_local_kl_optimum

R4, REF4, BETA = np.array([[1.0, 0.5, 0.2, 0.0]]), np.array([[0.1, 0.2, 0.3, 0.4]]), 0.5
TREE = random_token_tree(3, 2, seed=0)  # EOS = token 0: leaves of length 1 and 2; padding is (root, token 0)
MEASURED = {}


def _bandit():
    return bandit_problem(R4, REF4, BETA)


def _tree():
    return tree_problem(TREE, BETA)


def _landing(problem, spec):
    """(log_probs, certified bound or None): the certified fixed point, or where 400 exact flow steps end."""
    try:
        res = solve_fixed_point(problem, spec)
        return res.log_probs.numpy(), res.certificate.log_prob_bound
    except FixedPointError:
        flow = exact_flow(problem, spec, steps=400, lr=1.0, record_every=400)
        theta, _ = online.split_params(problem, spec, flow.params[-1])
        return torch.log_softmax(theta, -1).numpy(), None


def _census(name, problem, spec, opt, mutate, monkeypatch, mutated_problem=None):
    good_lp, good_tol = _landing(problem, spec)
    good = opt.check(log_probs=good_lp, tol=good_tol)
    assert good.ok, f"correct {name}: {good.detail}"
    with monkeypatch.context() as m:
        mutate(m)
        bad_lp, bad_tol = _landing(mutated_problem or problem, spec)
    bad = opt.check(log_probs=bad_lp, tol=good_tol)
    MEASURED[name] = (good.max_violation, good_tol, bad.max_violation, bad_tol)
    print(f"\n[census] {name}: correct {good.max_violation:.2e} <= {good_tol:.1e}; "
          f"faulty {bad.max_violation:.3g} (faulty run's own bound {bad_tol if bad_tol is None else f'{bad_tol:.1e}'})")
    assert not bad.ok and bad.max_violation > good_tol
    if bad_tol is not None:
        assert bad.max_violation > bad_tol
    return bad


# ------------------------------------------------------------------ KL estimator and placement bugs (bandit)


def test_kl_sign_flipped(monkeypatch):
    """verl#179 (as cited by the issue): the KL penalty added with the wrong sign — rewards *plus* β·k1."""
    def flipped(rewards, old, ref, mask, beta, estimator="k1"):
        return 2 * rewards - kl_penalised_rewards(rewards, old, ref, mask, beta, estimator)
    _census("kl_sign", _bandit(), method_spec("reinforce"), kl_rl_optimum(R4, REF4, BETA),
            lambda m: m.setattr(online, "kl_penalised_rewards", flipped), monkeypatch)


def _drop_ratio(tokens, ref, mask, estimator="k3", old_token_logps=None, use_bias_correction_kl=False):
    return kl_loss_term(tokens, ref, mask, estimator)


def test_k3_as_a_loss_without_the_ratio(monkeypatch):
    """verl PR#2953 / trl PR#4638: k3 added to the loss as is (GRPO's original placement) has the gradient of
    KL(ref‖pi), not KL(pi‖ref): it lands on β·ref/(λ − r), not on Gibbs. The faulty variant drops TRL's ``ρ``."""
    bad = _census("k3_loss", _bandit(), method_spec("kl_k3_loss_is"), kl_rl_optimum(R4, REF4, BETA),
                  lambda m: m.setattr(online, "kl_loss_term", _drop_ratio), monkeypatch)
    assert bad.max_violation > 0.1


def test_k1_as_a_loss_does_not_regularise(monkeypatch):
    """k1 as a loss term: zero expected gradient (E_pi ∇log pi = 0): no regularisation, the flow runs to argmax r."""
    _census("k1_loss", _bandit(), method_spec("kl_k1_loss_is"), kl_rl_optimum(R4, REF4, BETA),
            lambda m: m.setattr(online, "kl_loss_term", _drop_ratio), monkeypatch)


def test_k3_in_the_reward(monkeypatch):
    """trl PR#3240: k3 placed in the reward and documented as unbiased: it ascends KL(ref‖pi) − KL(pi‖ref) and
    the policy collapses (no interior fixed point)."""
    def k3_reward(rewards, old, ref, mask, beta, estimator="k1"):
        return kl_penalised_rewards(rewards, old, ref, mask, beta, "k3")
    _census("k3_reward", _bandit(), method_spec("reinforce_baseline"), kl_rl_optimum(R4, REF4, BETA),
            lambda m: m.setattr(online, "kl_penalised_rewards", k3_reward), monkeypatch)


def test_std_normalisation(monkeypatch):
    """Dr. GRPO (arXiv 2503.20783): dividing the group advantage by its std biases the fixed point. The correct
    Dr. GRPO (no std, k3·ρ) lands on Gibbs at β·G/(G−1); with the std put back it does not."""
    G = 2
    def with_std(rewards, group_size, scale_rewards="group", eps=1e-4):
        return grpo_advantages(rewards, group_size, "group", eps)
    _census("std_normalisation", _bandit(), method_spec("dr_grpo", group_size=G),
            grpo_optimum(R4, REF4, BETA, G, scale_rewards="none", kl="k3_loss_is"),
            lambda m: m.setattr(online, "grpo_advantages", with_std), monkeypatch)


# ------------------------------------------------------------------ token-level bugs (token tree)


def test_per_token_local_kl(monkeypatch):
    """The per-token (local) KL: each token credited with its own KL only, not the KL of the continuation (the
    reward-to-go); trl#2581 reported RLOO's token-level KL computed wrongly (as cited by the issue; its thread: the
    token- and sequence-level options gave the same result). Faulty variant: REINFORCE's ``k1`` moved from the
    sequence reward into a per-token ``k1·ρ`` loss (same expected per-token KL, no reward-to-go). Lands on the
    myopic point, not the soft optimum."""
    spec = method_spec("kl_k1_reward")
    def local(m):
        m.setattr(online, "kl_penalised_rewards", lambda r, *a, **k: r)
        orig = online.batch_losses
        def with_local_kl(problem, spec_, params, data_params, contexts, responses):
            return orig(problem, online.dataclasses.replace(spec_, kl_placement="loss_is"), params, data_params,
                        contexts, responses)
        m.setattr(online, "batch_losses", with_local_kl)
    _census("per_token_local_kl", _tree(), spec, token_tree_optimum(TREE, BETA), local, monkeypatch)


def test_length_normalisation(monkeypatch):
    """trl#2995 / verl#3741: the per-sequence token mean ``1/|o|`` (GRPO's ``loss_type="grpo"``) weighs a token of a
    short sequence more. With the KL in the reward it is harmless at the optimum (there every shaped reward equals
    β·log Z, every advantage vanishes, whatever the weights); it bites where the advantage does not vanish: with a
    per-token KL loss (k3·ρ, the reverse-KL gradient) the sequence-level loss lands on the proven myopic point
    (``token_tree_local_kl_optimum``), the 1/|o| variant does not."""
    def per_seq_mean(per_token, mask, loss_type="dapo", max_completion_length=None, num_items_in_batch=None):
        return aggregate_token_loss(per_token, mask, "grpo")
    _census("length_normalisation", _tree(), method_spec("kl_k3_loss_is"),
            token_tree_local_kl_optimum(TREE, BETA, "reverse"),
            lambda m: m.setattr(online, "aggregate_token_loss", per_seq_mean), monkeypatch)


def test_pad_tokens_counted(monkeypatch):
    """Pad tokens counted as completion tokens (mask not applied; padding here is the EOS id at the root, as with
    ``pad_token = eos_token``): the EOS response's log-prob, KL and loss include a phantom second EOS."""
    problem = _tree()
    full = torch.ones_like(problem.mask)
    bad_problem = online.dataclasses.replace(problem, mask=full,
                                             ref_token_logps=problem.ref_log_probs[problem.states, problem.actions])
    _census("pad_tokens_counted", problem, method_spec("rloo"), token_tree_optimum(TREE, BETA), lambda m: None,
            monkeypatch, mutated_problem=bad_problem)


def test_reward_on_the_pad_after_eos(monkeypatch):
    """trl#3750: PPOTrainer adds the score at ``sequence_length + 1`` — the first PAD after EOS when the response is
    shorter than the padded width — which the loss mask then zeroes: short responses lose their reward. (The
    library's ``gae_advantages`` refuses rewards at non-counted positions; the faulty variant masks them away
    silently, as TRL does.) PPO with a GAE critic lands on the soft optimum; the faulty variant does not."""
    def on_first_pad(rewards, mask):
        placed = place_sequence_rewards(rewards, mask)                      # on the last counted token (EOS)
        shifted = torch.cat([torch.zeros_like(placed[..., :1]), placed[..., :-1]], dim=-1)   # one to the right
        full = mask[..., -1:].expand_as(mask)                               # no pad: TRL keeps the last token
        return zero_where_masked(torch.where(full, placed, shifted), mask)  # the loss mask drops the PAD's reward
    _census("reward_on_pad", _tree(), method_spec("ppo_critic", epochs=1), token_tree_optimum(TREE, BETA),
            lambda m: m.setattr(online, "place_sequence_rewards", on_first_pad), monkeypatch)
    with pytest.raises(ValueError, match="non-counted position"):
        shifted_mask = torch.tensor([[True, False]])
        online.gae_advantages(torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                              shifted_mask)


def test_token_mean_per_micro_batch_under_gradient_accumulation(monkeypatch):
    """trl#2617 / PR#6024: with gradient accumulation every micro-batch must be divided by the token count of the
    whole optimizer step (TRL's ``num_items_in_batch``) and the micro-batch losses summed; a per-micro-batch token
    mean, averaged, weighs a token by ``1/n_micro``. Reference: the full-batch ``dapo`` field (GRPO as TRL configures
    it, G = 2, one sequence per micro-batch). The correct accumulation reproduces the full-batch field to rounding
    (so its fixed point too); the faulty one moves the fixed point by more than both certificates."""
    problem, spec = _tree(), method_spec("grpo_trl", group_size=2)

    def split(per_token, mask, fn):
        B = per_token.shape[-2]
        return [fn(per_token[..., b:b + 1, :], mask[..., b:b + 1, :]) for b in range(B)]

    def accumulated(per_token, mask, loss_type="dapo", max_completion_length=None, num_items_in_batch=None):
        n = mask.sum(dim=(-2, -1)).to(per_token.dtype).clamp(min=1.0)
        return sum(split(per_token, mask, lambda p, m_: aggregate_token_loss(p, m_, "dapo", num_items_in_batch=n)))

    def micro_mean(per_token, mask, loss_type="dapo", max_completion_length=None, num_items_in_batch=None):
        parts = split(per_token, mask, lambda p, m_: aggregate_token_loss(p, m_, "bnpo"))
        return sum(parts) / len(parts)

    ref = solve_fixed_point(problem, spec)
    p0 = initial_params(problem, spec, start="random", seed=1)
    full_field = expected_update(problem, spec, p0)
    with monkeypatch.context() as m:
        m.setattr(online, "aggregate_token_loss", accumulated)
        torch.testing.assert_close(expected_update(problem, spec, p0), full_field, rtol=0, atol=1e-14)
    with monkeypatch.context() as m:
        m.setattr(online, "aggregate_token_loss", micro_mean)
        bad = solve_fixed_point(problem, spec)
    used = problem.used_states.numpy()
    gap = float(np.abs(bad.log_probs.numpy()[used] - ref.log_probs.numpy()[used]).max())
    MEASURED["grad_accumulation"] = (0.0, ref.certificate.log_prob_bound, gap, bad.certificate.log_prob_bound)
    print(f"\n[census] grad_accumulation: faulty fixed point {gap:.3g} from the full-batch one "
          f"(bounds {ref.certificate.log_prob_bound:.1e}, {bad.certificate.log_prob_bound:.1e})")
    assert gap > ref.certificate.log_prob_bound + bad.certificate.log_prob_bound


# ------------------------------------------------------------------ IPO on sequences


def _ipo_closure(pol, tree, W, tau, average):
    paths = tree.leaf_token_paths()
    states, actions = torch.as_tensor(np.array(paths.states)), torch.as_tensor(np.array(paths.actions))
    mask = torch.as_tensor(np.array(paths.mask))
    lengths = mask.sum(-1).to(torch.float64)
    log_ref = torch.as_tensor(np.array(tree.ref_log_probs), dtype=torch.float64)
    ref_seq = torch.where(mask, log_ref[states, actions], 0.0).sum(-1)
    i, j = (torch.as_tensor(a) for a in np.nonzero(W[0] > 0))
    w = torch.as_tensor(W[0][i.numpy(), j.numpy()], dtype=torch.float64)
    scale = lengths if average else torch.ones_like(lengths)

    def loss():
        seq = torch.where(mask, pol.log_probs_table()[states, actions], 0.0).sum(-1)
        lp, lr = seq / scale, ref_seq / scale
        return (w * dpo_loss(lp[i], lp[j], lr[i], lr[j], beta=tau, loss_type="ipo").losses).sum()

    return loss


def _ipo_violation(pol, tree, W, tau):
    """max |(ḡ_i − ḡ_j) − (s_i − s_j)|, ḡ the length-averaged log-ratio of each leaf, s = ipo_scores."""
    leaf = np.array(tree.leaf_log_probs(pol.log_probs_table().detach().numpy())) - np.array(
        tree.leaf_log_probs(tree.ref_log_probs))
    g = leaf / np.array(tree.leaf_token_paths().mask).sum(-1)
    s = ipo_scores(W[0], tau)
    d = (g[:, None] - g[None, :]) - (s[:, None] - s[None, :])
    return float(np.abs(d).max())


def test_ipo_with_summed_instead_of_averaged_log_probs():
    """IPO as TRL computes it divides each completion's log-prob by its length (``loss_type="ipo"``: average
    log-probs), so the IPO closed form (``ipo_scores``: weighted least squares on the comparison graph) holds for
    the *length-averaged* log-ratios ``ḡ``. With summed log-probs the least-squares solution is in the summed
    log-ratios instead. Tolerance: ``4‖∇‖/μ`` bounds each token log-prob's error, hence each averaged leaf
    log-ratio's, and twice that a difference."""
    W = leaf_pair_table(TREE)
    W = W / W.sum()
    tau = 0.5
    out = {}
    for average in (True, False):
        pol = tabular_policy(TREE.n_prefixes, TREE.vocab_size, seed=0)
        loss = _ipo_closure(pol, TREE, W, tau, average)
        fit_tabular(pol, loss, tol=1e-8)
        bound, _, _ = certified_logit_error(loss, pol)
        out[average] = (_ipo_violation(pol, TREE, W, tau), 2 * bound)
    (good, tol), (bad, bad_tol) = out[True], out[False]
    MEASURED["ipo_summed"] = (good, tol, bad, bad_tol)
    print(f"\n[census] ipo_summed: correct {good:.2e} <= {tol:.1e}; faulty {bad:.3g}")
    assert good <= tol and bad > max(tol, bad_tol) and math.isfinite(bad)
