"""mdpalign.testing.check_*_loss: correct losses reach their optimum, planted bugs are caught, and the place a
wrong loss lands is the closed form of what it actually optimises (an independent answer key, not the kit's)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdpalign.errors import MdpalignError
from mdpalign.objectives import crlft_loss, dpo_loss, sft_loss
from mdpalign.proofs import dpo_optimum, k3_loss_optimum, kl_rl_optimum
from mdpalign.testing import (
    check_class_weighted_loss,
    check_demonstration_loss,
    check_online_policy_loss,
    check_preference_loss,
    check_reward_model_loss,
)
from mdpalign.testing.expectations import Claim


def my_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(0.1 * h)


def forgot_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    return -F.logsigmoid(0.1 * (policy_chosen_logps - policy_rejected_logps))


def test_dpo_reaches_kl_rl_and_deterministic_is_reported_not_failed():
    rep = check_preference_loss(my_dpo, expect="kl_rl", beta=0.1)
    assert rep.ok, rep
    s = rep.summary()
    for regime in ("bt_all_pairs", "partial_coverage", "two_arm"):
        status, dist, tol = s[regime]
        assert status == "reached" and dist <= tol < 1e-4
    assert s["deterministic"][0] == "no claim"


def test_library_dpo_loss_passes_as_is_with_beta_forwarded():
    rep = check_preference_loss(dpo_loss, expect="kl_rl", beta=0.7, regimes=["bt_all_pairs", "two_arm"])
    assert rep.ok, rep


def test_planted_bug_is_caught_and_its_landing_is_the_reference_free_optimum():
    rep = check_preference_loss(forgot_reference, expect="kl_rl", beta=0.1)
    assert not rep.ok
    for r in rep.failures():
        assert r.status == "missed" and r.distance > 1e3 * r.tolerance
    text = str(rep)
    assert "FAILED" in text and "reproduce with" in text and "ref_policy = [[" in text
    # what the bug optimises: DPO with a uniform reference -> the kit certifies that, independently stated
    uniform = lambda p: Claim(dpo_optimum(np.full_like(p.ref_policy, 1 / p.ref_policy.shape[1]), p.W, p.beta), "u")  # noqa: E731
    assert check_preference_loss(forgot_reference, expect=uniform, beta=0.1, regimes=["bt_all_pairs", "two_arm"]).ok


def test_no_expect_reports_where_the_loss_lands():
    rep = check_preference_loss(my_dpo, beta=0.1)
    assert rep.ok
    bt = rep.result("bt_all_pairs")
    assert bt.status == "landed" and bt.attained and bt.nearest["kl_rl"] <= bt.tolerance
    kl = kl_rl_optimum(bt.problem.rewards, bt.problem.ref_policy, 0.1).policy
    assert np.abs(np.log(bt.policy) - np.log(kl)).max() <= 2 * bt.tolerance
    det = rep.result("deterministic")
    assert det.status == "diverges" and not det.attained


def test_ipo_reaches_graph_least_squares_in_every_regime():
    rep = check_preference_loss(lambda a, b, c, d: dpo_loss(a, b, c, d, beta=0.5, loss_type="ipo").losses,
                                expect="ipo", beta=0.5)
    assert rep.ok and all(r.status == "reached" for r in rep.results), rep


def test_demonstration_reduction_decides_the_token_tree_optimum():
    summed = check_demonstration_loss(lambda lp, m: sft_loss(lp, m), expect="sft")
    assert summed.ok, summed
    assert summed.result("unseen_arms").status == "limit"
    mean = check_demonstration_loss(lambda lp, m: sft_loss(lp, m, normalize=True), expect="sft")
    assert mean.result("token_tree").status == "missed" and mean.result("full_support").status == "reached"
    assert check_demonstration_loss(lambda lp, m: sft_loss(lp, m, normalize=True), expect="sft_mean").ok


def test_class_weighted_and_reward_model():
    assert check_class_weighted_loss(lambda lp, m, w: crlft_loss(lp, m, w).losses, expect="crlft").ok
    bt = check_reward_model_loss(lambda c, r: -F.logsigmoid(c - r), expect="bt_mle")
    assert bt.ok and bt.result("deterministic").status == "limit", bt
    margin = check_reward_model_loss(lambda c, r: -F.logsigmoid(c - r - 1.0), expect="bt_mle", regimes="two_arm")
    assert not margin.ok and margin.result("two_arm").distance > 0.1


def _k3_loss_grpo(token_logps, old_logps, ref_logps, advantages, mask, beta=0.1):
    ratio = torch.exp(token_logps - old_logps)
    k3 = torch.exp(ref_logps - token_logps) - (ref_logps - token_logps) - 1
    return ((-(ratio * advantages[:, None]) + beta * k3) * mask).sum(-1) / mask.sum(-1)


def _pg(token_logps, old_logps, ref_logps, advantages, mask):
    return -(torch.exp(token_logps - old_logps) * advantages[:, None] * mask).sum(-1)


def test_online_k3_as_a_loss_misses_gibbs_and_k1_in_reward_reaches_it():
    k3 = check_online_policy_loss(_k3_loss_grpo, expect="kl_rl", beta=0.5)
    assert not k3.ok
    fixed = check_online_policy_loss(_k3_loss_grpo, expect="k3_loss", beta=0.5)
    assert fixed.ok, fixed
    r = fixed.result("bandit")
    opt = k3_loss_optimum(r.problem.rewards, r.problem.ref_policy, 0.5).policy
    assert np.abs(np.log(r.policy) - np.log(opt)).max() <= 2 * r.tolerance + 1e-12
    assert check_online_policy_loss(_pg, expect="kl_rl", beta=0.5, kl_in_reward=True).ok
    assert not check_online_policy_loss(_pg, expect="kl_rl", beta=0.5).ok  # no KL anywhere: greedy, no fixed point


# --------------------------------------------------------------------------- unusable functions: one clear error


def _bad(kind):
    from mdpalign.testing import errors as e

    return {
        "signature": (lambda a, b: a, e.LossSignatureError, "cannot be called"),
        "raises": (lambda a, b, c, d: a[10], e.LossCallError, "raised IndexError"),
        "scalar": (lambda a, b, c, d: my_dpo(a, b, c, d).mean(), e.LossReductionError, "scalar"),
        "batch_norm": (lambda a, b, c, d: my_dpo(a, b, c, d) / my_dpo(a, b, c, d).sum(), e.LossReductionError,
                       "depends on the other examples"),
        "shape": (lambda a, b, c, d: my_dpo(a, b, c, d)[:, None], e.LossShapeError, "shape"),
        "float32": (lambda a, b, c, d: my_dpo(a, b, c, d).float(), e.LossDtypeError, "float32"),
        "nan": (lambda a, b, c, d: my_dpo(a, b, c, d) * float("nan"), e.LossNonFiniteError, "non-finite"),
        "detached": (lambda a, b, c, d: my_dpo(a, b, c, d).detach(), e.LossNotDifferentiableError, "no gradient"),
        "numpy": (lambda a, b, c, d: torch.tensor(np.log1p(np.exp(-(a - b).detach().numpy()))),
                  e.LossNotDifferentiableError, "no gradient"),
    }[kind]


@pytest.mark.parametrize("kind", ["signature", "raises", "scalar", "batch_norm", "shape", "float32", "nan",
                                  "detached", "numpy"])
def test_unusable_function_gives_one_named_error(kind):
    fn, exc, words = _bad(kind)
    with pytest.raises(exc, match=words) as info:
        check_preference_loss(fn, expect="kl_rl")
    assert isinstance(info.value, MdpalignError) and "\n" not in str(info.value)


@pytest.mark.parametrize("kw, words", [({"regimes": ["nope"]}, "unknown regime"),
                                       ({"expect": "sft"}, "unknown optimum"), ({"beta": -1}, "beta"),
                                       ({"expect": 3}, "expect must be"),
                                       ({"seed": -2}, "seed")])
def test_bad_arguments(kw, words):
    with pytest.raises(MdpalignError, match=words):
        check_preference_loss(my_dpo, **kw)


def _k3_summed(token_logps, old_logps, ref_logps, advantages, mask, beta=0.1):
    k3 = torch.exp(ref_logps - token_logps) - (ref_logps - token_logps) - 1
    return ((-(torch.exp(token_logps - old_logps) * advantages[:, None]) + beta * k3) * mask).sum(-1)


def test_token_tree_online_per_token_kl_is_myopic_and_length_normalisation_moves_it():
    summed = check_online_policy_loss(_k3_summed, expect="tree_local_k3", beta=0.5, regimes="token_tree")
    assert summed.ok, summed
    r = summed.result("token_tree")
    assert r.nearest["kl_rl"] > 1e3 * r.tolerance  # the per-token KL is not the soft-optimal token policy
    mean = check_online_policy_loss(_k3_loss_grpo, expect="tree_local_k3", beta=0.5, regimes="token_tree")
    m = mean.result("token_tree")
    assert m.status == "missed" and m.distance > 1e3 * m.tolerance  # 1/|y| per sequence, lengths 1-3
    assert check_online_policy_loss(_pg, expect="kl_rl", beta=0.5, regimes="token_tree", kl_in_reward=True).ok
