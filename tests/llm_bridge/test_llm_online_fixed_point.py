r"""The online trainer's own loss path, run on a real (tiny) transformer, lands on the proven fixed point.

Set-up: a one-layer Llama whose vocabulary is the K completion tokens, one two-token prompt, completions of exactly
L tokens.
The trainer runs in exact generation mode: instead of sampling, every micro-batch holds every completion, and for a
group method every ordered group of G of them, each group weighted by its probability under the sampling policy
(:class:`~mdpalign.llm_bridge.online_trainer.OnlineTrainer`, ``generation="exact"``). Its gradient is the expected
gradient of the sampled trainer, through the same rewards, KL shaping, advantages, clipped loss, KL term and token
aggregation. The reference is the starting model (a frozen copy), so ``pi_ref`` is whatever the random transformer
starts with; the expected fixed point is computed from it independently:

* KL (k1) in the reward -> Gibbs ``pi_ref·e^{r/β}/Z`` (three lines of numpy; for two tokens the sequence-level soft
  optimum ``pi*(y1, y2) ∝ pi_ref(y1, y2)·e^{r(y1, y2)/β}``, whose conditionals are compared);
* k3 as a loss -> ``pi = β·pi_ref/(λ − r)``, λ > max r the root of ``Σ pi = 1`` (scipy's brentq);
* GRPO's std scaling (TRL 1.16's defaults: group scaling, dapo, k3·ρ) -> the harness's certified fixed point
  (:func:`mdpalign.harness.online.solve_fixed_point`; the Vojnovic–Yun form is tested there).

**Tolerance (derived, as the tabular tests derive theirs).** The transformer's final policy ``pi_T`` (its float32
logits read in float64) is a point of the tabular logit space. The harness's certificate at that point,
:func:`mdpalign.harness.online.certify_fixed_point`, bounds the distance to the tabular fixed point from the residual
of the *exact* expected-update field there: ``‖Δ‖₂ <= 2(‖F(pi_T)‖ + δ_F)/σ_min`` (Weyl, with the Jacobian's variation
towards the fixed point checked to be below σ_min/2), hence ``|log pi_T − log pi*| <= 2·‖Δ‖₂ + 1e-12``
(``log_prob_bound``). The test asserts (1) the error against the closed form is within that bound (plus the
harness's own certified bound when the answer key is its solve), (2) the bound is small (< 1e-3) — training really
converged where the verified field vanishes, so a trainer whose loss had a different expected update would stop
elsewhere, where the field's residual and hence the bound are large — and (3) the answer is more than ten bounds
(and 0.01) away in some log-probability from both the start and the nearest wrong answer (Gibbs vs the k3-loss
point; on two tokens the per-token "myopic" root), so the check tells the placements apart. The optimiser is Adam
with a linearly decaying step (no weight decay, which would move the fixed point), run long enough that the measured
residual is ~1e-7.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

pytest.importorskip("transformers")

from llm_fixtures import build_small_llama, build_word_tokenizer  # noqa: E402

from mdpalign.envs.token_tree import TokenTree  # noqa: E402
from mdpalign.harness.online import (  # noqa: E402
    bandit_problem,
    certify_fixed_point,
    method_spec,
    solve_fixed_point,
    tree_problem,
)
from mdpalign.llm_bridge.config import FixedPointWarning, TrainConfig  # noqa: E402
from mdpalign.llm_bridge.online import tokenize_prompts  # noqa: E402
from mdpalign.llm_bridge.online_trainer import OnlineTrainer  # noqa: E402

BETA = 0.5
REWARDS = np.array([1.0, 0.5, 0.2, 0.0])  # THEORY.md's bandit rewards; the reference is the model's own start
WORDS = ["a", "b", "c", "d"]
# two tokens: with a one-token prompt "a", a one-layer transformer's state after "a a" equals its state after "a"
# (attention averages identical values), so pi(·|prompt) and pi(·|prompt, a) could not differ
PROMPT, PROMPT_IDS = "b a", [1, 0]


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: thread start-up dominates on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _policy_tables(model, length: int, vocab: int) -> dict[tuple, np.ndarray]:
    """{prefix: pi(·|prompt, prefix)} in float64 for every prefix of fewer than ``length`` tokens."""
    out = {}
    with torch.no_grad():
        for d in range(length):
            for prefix in np.ndindex(*([vocab] * d)):
                ids = torch.tensor([[*PROMPT_IDS, *prefix]])
                out[prefix] = torch.softmax(model(ids).logits[0, -1].double(), -1).numpy()
    return out


def _train(objective: str, length: int, rewards, steps: int, lr: float, vocab: int = 4, **options):
    tok = build_word_tokenizer(WORDS[:vocab])
    model = build_small_llama(vocab, seed=1, head_scale=10.0)
    start = _policy_tables(model, length, vocab)
    G = options.get("num_generations", 1)
    args = TrainConfig(objective=objective, output_dir="unused", use_cpu=True, report_to="none", disable_tqdm=True,
                       save_strategy="no", logging_steps=10_000, seed=0, max_steps=steps, learning_rate=lr,
                       lr_scheduler_type="linear", weight_decay=0.0, beta=BETA, per_device_train_batch_size=G,
                       max_completion_length=length, max_length=length + len(PROMPT_IDS), **options)

    def reward(prompts, completions, completion_ids, **_):
        return [float(rewards[tuple(c)]) for c in completion_ids]

    trainer = OnlineTrainer(model, args, tokenize_prompts([{"prompt": PROMPT}], tok), processing_class=tok,
                            reward_funcs=[reward], ref_model=copy.deepcopy(model), generation="exact")
    trainer.train()
    return start, _policy_tables(model, length, vocab), trainer


def _gibbs(ref, r, beta):
    w = ref * np.exp(r / beta)
    return w / w.sum()


def _reverse_kl_point(ref, r, beta):
    lam = brentq(lambda x: (beta * ref / (x - r)).sum() - 1.0, r.max() + 1e-12, r.max() + beta + 10.0, xtol=1e-15)
    return beta * ref / (lam - r)


def _check(pi_T, pi_star, cert, ref, wrong, extra_bound=0.0):
    err = np.abs(np.log(pi_T) - np.log(pi_star)).max()
    assert cert.log_prob_bound < 1e-3, cert            # converged where the verified field vanishes
    assert err <= cert.log_prob_bound + extra_bound, (err, cert)
    # the check separates: the start and the nearest wrong answer are ten bounds away (and at least 0.01)
    far = max(10 * (cert.log_prob_bound + extra_bound), 1e-2)
    assert np.abs(np.log(ref) - np.log(pi_star)).max() > far
    assert np.abs(np.log(wrong) - np.log(pi_star)).max() > far
    return err


def test_grpo_defaults_land_on_gibbs():
    """objective grpo with its defaults (k1 of the sampling policy in the reward, scale_rewards none, dr_grpo):
    Gibbs. No FixedPointWarning: the defaults are the converging ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FixedPointWarning)
        start, final, trainer = _train("grpo", 1, {(k,): v for k, v in enumerate(REWARDS)}, steps=250, lr=0.01,
                                       num_generations=2)
    a = trainer.args
    assert (a.kl_estimator, a.kl_placement, a.scale_rewards, a.loss_type) == ("k1", "reward", "none", "dr_grpo")
    ref, pi_T = start[()], final[()]
    spec = method_spec("grpo", group_size=2, scale_rewards="none", kl_estimator="k1", kl_placement="reward",
                       loss_type="dr_grpo", fixed_point="gibbs")
    cert = certify_fixed_point(bandit_problem(REWARDS[None], ref[None], BETA), spec, torch.log(torch.tensor(pi_T)))
    _check(pi_T, _gibbs(ref, REWARDS, BETA), cert, ref, _reverse_kl_point(ref, REWARDS, BETA))


def test_k3_as_a_loss_lands_on_the_reverse_kl_point_and_warns():
    with pytest.warns(FixedPointWarning, match="k3 as a loss"):
        start, final, _ = _train("reinforce", 1, {(k,): v for k, v in enumerate(REWARDS)}, steps=250, lr=0.01,
                                 kl_estimator="k3", kl_placement="loss")
    ref, pi_T = start[()], final[()]
    spec = method_spec("reinforce", kl_estimator="k3", kl_placement="loss", fixed_point="reverse_kl")
    cert = certify_fixed_point(bandit_problem(REWARDS[None], ref[None], BETA), spec, torch.log(torch.tensor(pi_T)))
    _check(pi_T, _reverse_kl_point(ref, REWARDS, BETA), cert, ref, _gibbs(ref, REWARDS, BETA))


def test_trl_default_grpo_lands_on_the_grpo_fixed_point():
    """TRL 1.16's GRPO configuration with beta > 0 (group std scaling, dapo, k3·rho as a loss), G = 3: the
    harness's certified GRPO fixed point, not Gibbs."""
    with pytest.warns(FixedPointWarning, match="scale_rewards 'group'"):
        start, final, _ = _train("grpo", 1, {(k,): v for k, v in enumerate(REWARDS)}, steps=250, lr=0.01,
                                 num_generations=3, scale_rewards="group", loss_type="dapo", kl_estimator="k3",
                                 kl_placement="loss", use_bias_correction_kl=True)
    ref, pi_T = start[()], final[()]
    problem = bandit_problem(REWARDS[None], ref[None], BETA)
    spec = method_spec("grpo_trl", group_size=3)
    key = solve_fixed_point(problem, spec)
    cert = certify_fixed_point(problem, spec, torch.log(torch.tensor(pi_T)))
    _check(pi_T, key.probs.numpy()[0], cert, ref, _gibbs(ref, REWARDS, BETA),
           extra_bound=key.certificate.log_prob_bound)


def test_rloo_on_two_token_completions_lands_on_the_sequence_level_optimum():
    """Two-token completions over 3 tokens (9 completions, 81 ordered groups of 2): RLOO with k1 summed over the
    completion in the reward reaches the sequence-level soft optimum at the root and at every first token."""
    V = 3
    rng = np.random.default_rng(4)
    r = rng.uniform(0.0, 1.0, size=(V, V))
    start, final, _ = _train("rloo", 2, {(i, j): r[i, j] for i in range(V) for j in range(V)}, steps=300, lr=0.01,
                             vocab=V, num_generations=2)
    # the tree's prefixes in breadth-first order: root, then each first token
    ref_logits = np.zeros((1 + V + V * V, V))
    pi_logits = np.zeros_like(ref_logits)
    for k, prefix in enumerate([(), *[(i,) for i in range(V)]]):
        ref_logits[k], pi_logits[k] = np.log(start[prefix]), np.log(final[prefix])
    tree = TokenTree(V, 2, eos=None, leaf_rewards=r.reshape(-1), ref_logits=ref_logits)
    joint_ref = start[()][:, None] * np.stack([start[(i,)] for i in range(V)])
    joint = _gibbs(joint_ref, r, BETA)                                     # pi*(y1, y2)
    star = np.vstack([joint.sum(1), joint / joint.sum(1, keepdims=True)])  # root row, then pi*(y2 | y1)
    cert = certify_fixed_point(tree_problem(tree, BETA), method_spec("rloo"),
                               torch.tensor(pi_logits, dtype=torch.float64).reshape(-1))
    got = np.exp(pi_logits[: 1 + V])
    ref = np.exp(ref_logits[: 1 + V])
    # the per-token (myopic) answer: the root tilted by the reward-only value Q(y1) = E_pi*[r | y1]
    wrong = np.vstack([_gibbs(start[()], (star[1:] * r).sum(1), BETA), star[1:]])
    _check(got, star, cert, ref, wrong)
