"""Conformance: the installed TRL's own loss code, checked by mdpalign.testing against the optimum each paper states.

    python benchmarks/conformance_trl.py                      # every loss -> benchmarks/results/conformance_trl.md
    python benchmarks/conformance_trl.py --only dpo:sigmoid dpo:sigmoid+ls --out /tmp/x.md --json /tmp/x.json

TRL's code is called, never re-implemented. Most of its losses live inside trainer methods that take a model and a
tokenised batch; each is called here on a *stub* trainer (a ``SimpleNamespace`` carrying exactly the attributes the
method reads) with a stub model whose forward returns the log-probabilities the check chooses — so the tensors
flowing through TRL's loss arithmetic are the tabular policy's, and gradients reach the policy through TRL's code:

* DPO (``DPOTrainer._compute_loss``, every ``loss_type``): one pair per call, batch ``[chosen, rejected]``, one
  prompt token and one completion token (``completion_mask = [0, 1]``), ``precompute_ref_logps=True`` so the
  reference log-probs come from the batch; the stub model returns ``log_probs`` (and zero entropy/logit metrics);
* KTO (``KTOTrainer._compute_loss``, ``calculate_KL=False``: the KL reference point is 0, TRL's value when its
  KL estimate is off): a pair is one desirable and one undesirable example, loss = 2 x TRL's mean;
* CPO / SimPO (``CPOTrainer.cpo_loss``) and ORPO's odds-ratio term (``ORPOTrainer.odds_ratio_loss``): called as
  unbound methods on a stub carrying ``beta``, ``loss_type``, ... (the reference log-probs are not arguments);
* ``RewardTrainer.compute_loss``: one pair per call, the stub model returns the two scores as ``logits``;
* GRPO / RLOO (``GRPOTrainer._compute_loss`` / ``RLOOTrainer._compute_loss``): the stub's
  ``_get_per_token_logps_and_entropies`` returns the policy's per-token log-probs, eval mode (no
  gradient-accumulation rescaling), one sequence per call.

Per-example calls make a TRL batch mean a per-example loss; losses that couple a batch (``aot`` sorts it) are
therefore checked per pair alone, where they reduce to ``sigmoid`` — said in their rows. Refresh against a later TRL
with the same command; a method whose attributes changed fails loudly (AttributeError) instead of silently.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdpalign.proofs import NoFiniteOptimum, bradley_terry_reward_optimum, dpo_optimum, orpo_optimum, sft_optimum  # noqa: E402
from mdpalign.testing import check_loss  # noqa: E402
from mdpalign.testing.errors import LossCheckError  # noqa: E402
from mdpalign.testing.expectations import Claim  # noqa: E402

_f64 = torch.float64
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "conformance_trl.md")


def _acc():
    return SimpleNamespace(device=torch.device("cpu"), num_processes=1, gather_for_metrics=lambda x: x,
                           gather=lambda x: x, reduce=lambda x, reduction="sum": x, unwrap_model=lambda m: m)


def _metrics():
    return {"train": defaultdict(list), "eval": defaultdict(list)}


def _named(fn, name):
    fn.__qualname__ = fn.__name__ = name
    fn.__module__ = "trl"
    return fn


# --------------------------------------------------------------------------- TRL entry points as kit signatures


def trl_dpo(loss_type: str, beta: float, label_smoothing: float = 0.0):
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    stub = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=_acc(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        args=SimpleNamespace(discopop_tau=DPOConfig.__dataclass_fields__["discopop_tau"].default,
                             gradient_checkpointing_kwargs=None),
        _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    ids = torch.zeros(2, 2, dtype=torch.long)
    completion = torch.tensor([[0, 1], [0, 1]])

    def loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        out = []
        for i in range(policy_chosen_logps.shape[0]):
            lp = torch.stack([policy_chosen_logps[i], policy_rejected_logps[i]]).reshape(2, 1)
            zeros = torch.zeros_like(lp).detach()
            model = lambda lp=lp, zeros=zeros, **kw: SimpleNamespace(  # noqa: E731
                log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros(2, 1, dtype=torch.bool))
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion,
                      "ref_chosen_logps": ref_chosen_logps[i:i + 1], "ref_rejected_logps": ref_rejected_logps[i:i + 1]}
            out.append(DPOTrainer._compute_loss(stub, model, inputs, False).reshape(()))
        return torch.stack(out)

    ls = f", label_smoothing={label_smoothing:g}" if label_smoothing else ""
    return _named(loss, f"DPOTrainer._compute_loss[loss_type={loss_type}{ls}]")


def trl_kto(beta: float):
    from trl.trainer.kto_trainer import KTOTrainer

    stub = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=_acc(), aux_loss_enabled=False, calculate_KL=False,
        precompute_ref_logps=True, loss_type="kto", beta=beta, desirable_weight=1.0, undesirable_weight=1.0,
        _compute_kl_logps=lambda model, batch: None, _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    ids = torch.zeros(2, 2, dtype=torch.long)

    def loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        out = []
        for i in range(policy_chosen_logps.shape[0]):
            lp = torch.stack([policy_chosen_logps[i], policy_rejected_logps[i]]).reshape(2, 1)
            zeros = torch.zeros_like(lp).detach()
            model = lambda lp=lp, zeros=zeros, **kw: SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros)  # noqa: E731
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                      "completion_mask": torch.tensor([[0, 1], [0, 1]]), "label": torch.tensor([True, False]),
                      "ref_logps": torch.stack([ref_chosen_logps[i], ref_rejected_logps[i]])}
            out.append(2.0 * KTOTrainer._compute_loss(stub, model, inputs, False).reshape(()))
        return torch.stack(out)

    return _named(loss, "KTOTrainer._compute_loss[loss_type=kto, calculate_KL=False]")


def trl_cpo(loss_type: str, beta: float, simpo_gamma: float = 0.5):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    stub = SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=0.0, simpo_gamma=simpo_gamma,
                           accelerator=_acc())

    def loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        return CPOTrainer.cpo_loss(stub, policy_chosen_logps, policy_rejected_logps)[0]

    g = f", simpo_gamma={simpo_gamma:g}" if loss_type == "simpo" else ""
    return _named(loss, f"CPOTrainer.cpo_loss[loss_type={loss_type}{g}]")


def trl_orpo(lam: float):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    stub = SimpleNamespace(beta=lam, accelerator=_acc())

    def loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        # TRL's total: policy_nll_loss - losses.mean(); the NLL of a one-token chosen completion is -log pi(chosen)
        return -policy_chosen_logps - ORPOTrainer.odds_ratio_loss(stub, policy_chosen_logps, policy_rejected_logps)[0]

    return _named(loss, f"ORPOTrainer.odds_ratio_loss[beta={lam:g}] + NLL(chosen)")


def trl_reward(center: float | None = None):
    from trl.trainer.reward_trainer import RewardTrainer

    stub = SimpleNamespace(model=SimpleNamespace(training=False), accelerator=_acc(), _metrics=_metrics(),
                           _total_train_tokens=0, _tp_size=1,
                           args=SimpleNamespace(center_rewards_coefficient=center))

    def loss(chosen_rewards, rejected_rewards):
        out = []
        for i in range(chosen_rewards.shape[0]):
            logits = torch.stack([chosen_rewards[i], rejected_rewards[i]]).reshape(2, 1)
            model = lambda logits=logits, **kw: SimpleNamespace(logits=logits)  # noqa: E731
            out.append(RewardTrainer.compute_loss(stub, model, {"attention_mask": torch.ones(2, 1)}).reshape(()))
        return torch.stack(out)

    c = "" if center is None else f"[center_rewards_coefficient={center:g}]"
    return _named(loss, f"RewardTrainer.compute_loss{c}")


def _online_inputs(mask, adv, **extra):
    B, T = mask.shape
    return {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
            "advantages": adv, **extra}


def trl_grpo(beta: float, bias_correction: bool = False, loss_type: str = "grpo"):
    from trl.trainer.grpo_trainer import GRPOTrainer

    def loss(token_logps, old_logps, ref_logps, advantages, mask):
        out = []
        for i in range(token_logps.shape[0]):
            lp = token_logps[i:i + 1]
            stub = SimpleNamespace(
                _get_per_token_logps_and_entropies=lambda *a, lp=lp, **k: (lp, torch.zeros_like(lp), None),
                aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
                importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2,
                use_vllm=False, model=SimpleNamespace(training=False),
                args=SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
                current_gradient_accumulation_steps=1, accelerator=_acc(), max_completion_length=lp.shape[1],
                _entropy_bonus_enabled=False, _metrics=_metrics())
            inputs = _online_inputs(mask[i:i + 1], advantages[i:i + 1], ref_per_token_logps=ref_logps[i:i + 1],
                                    old_per_token_logps=old_logps[i:i + 1])
            out.append(GRPOTrainer._compute_loss(stub, None, inputs).reshape(()))
        return torch.stack(out)

    bc = ", use_bias_correction_kl" if bias_correction else ""
    return _named(loss, f"GRPOTrainer._compute_loss[loss_type={loss_type}, beta={beta:g}{bc}]")


def trl_rloo():
    from trl.trainer.rloo_trainer import RLOOTrainer

    def loss(token_logps, old_logps, ref_logps, advantages, mask):
        out = []
        for i in range(token_logps.shape[0]):
            lp = token_logps[i:i + 1]
            stub = SimpleNamespace(
                _get_per_token_logps_and_entropies=lambda *a, lp=lp, **k: (lp, torch.zeros_like(lp), None),
                aux_loss_enabled=False, epsilon_low=0.2, epsilon_high=0.2, model=SimpleNamespace(training=False),
                accelerator=_acc(), _metrics=_metrics())
            old_seq = (old_logps[i:i + 1] * mask[i:i + 1]).sum(-1)
            inputs = _online_inputs(mask[i:i + 1], advantages[i:i + 1], old_logps=old_seq)
            out.append(RLOOTrainer._compute_loss(stub, None, inputs).reshape(()))
        return torch.stack(out)

    return _named(loss, "RLOOTrainer._compute_loss")


# --------------------------------------------------------------------------- claims that are not plain names


def _uniform(p):
    return np.full_like(p.ref_policy, 1.0 / p.ref_policy.shape[1])


def kl_rl_uniform_ref(p):
    """Reference-free losses (CPO, SimPO with gamma = 0, one-token responses): DPO's optimum with pi_ref uniform."""
    if p.regime == "deterministic":
        return Claim(None, "no finite minimiser under deterministic labels")
    return Claim(dpo_optimum(_uniform(p), p.W, p.beta), "pi ∝ exp(r/beta) (DPO with a uniform reference)")


def cdpo(eps):
    def claim(p):
        if p.regime == "deterministic" and eps == 0:
            return Claim(None, "no finite minimiser")
        W = (1 - eps) * p.W + eps * np.swapaxes(p.W, 1, 2)
        return Claim(dpo_optimum(p.ref_policy, W, p.beta), f"cDPO: BT scores of labels smoothed by {eps:g}")
    claim.__name__ = f"cdpo(eps={eps:g})"
    return claim


def robust(eps):
    def claim(p):
        W = ((1 - eps) * p.W - eps * np.swapaxes(p.W, 1, 2)) / (1 - 2 * eps)
        if (W[p.W > 0] <= 0).any():
            return Claim(None, f"labels less certain than the noise rate {eps:g}: de-noised weights negative")
        return Claim(dpo_optimum(p.ref_policy, np.where(p.W > 0, W, 0.0), p.beta),
                     f"rDPO: the clean-label optimum, labels read as flipped at rate {eps:g}")
    claim.__name__ = f"robust(eps={eps:g})"
    return claim


def chosen_sft(p):
    return Claim(sft_optimum(p.W.sum(axis=2)), "SFT on the chosen responses: pi(y) ∝ sum_j W[y, j]")


def orpo_two_arm(p):
    if p.regime != "two_arm":
        return Claim(None, "closed form encoded for two arms (THEORY.md); elsewhere: where it lands")
    return Claim(orpo_optimum(p.W, p.beta), "ORPO two-arm root (flattens q)")


def k3_fixed_point(p):
    from mdpalign.testing.expectations import NAMED_OPTIMA

    return NAMED_OPTIMA["online_policy"]["tree_local_k3" if p.tree is not None else "k3_loss"](p)


def reverse_kl_fixed_point(p):
    from mdpalign.testing.expectations import NAMED_OPTIMA

    return NAMED_OPTIMA["online_policy"]["tree_local_kl" if p.tree is not None else "kl_rl"](p)


def kto_limit(p):
    """KTO with the reference point at 0 (THEORY.md): per arm d_y (1 - sigma(beta g_y)) + u_y sigma(beta g_y), so
    only the net weight n_y = d_y - u_y matters and arms with n_y < 0 vanish (no finite minimiser)."""
    n = p.W.sum(axis=2) - p.W.sum(axis=1)
    vanishing = n < -1e-15
    if not vanishing.any():
        return Claim(None, "no arm with negative net weight")
    X, K = n.shape
    opt = NoFiniteOptimum(objective="kto", shape=(X, K), policy=None, pinned=np.zeros((0, 4)), vanishing=vanishing,
                          constrained=np.ones(X, bool), attained=False,
                          diverging="logits of arms with d_y < u_y -> -inf")
    return Claim(opt, "arms with net weight d_y - u_y < 0 vanish")


def centred_bt(c):
    def claim(p):
        return Claim(bradley_terry_reward_optimum(p.W, center_coefficient=c), f"BT MLE with centring ridge c={c:g}")
    claim.__name__ = f"centred_bt(c={c:g})"
    return claim


# --------------------------------------------------------------------------- the table


def cases(beta: float) -> list[dict]:
    """Every row: id, kind, the loss, the optimum its paper states (expect) and the paper."""
    d = []
    add = lambda **kw: d.append(kw)  # noqa: E731
    add(id="dpo:sigmoid", kind="preference", loss=lambda: trl_dpo("sigmoid", beta), expect="kl_rl",
        paper="DPO (2305.18290): pi_ref exp(r/beta)/Z under BT labels")
    add(id="dpo:sigmoid+ls", kind="preference", loss=lambda: trl_dpo("sigmoid", beta, 0.1), expect=cdpo(0.1),
        paper="cDPO (Mitchell 2023): label_smoothing=0.1 should smooth the labels; TRL's sigmoid ignores it")
    add(id="dpo:robust", kind="preference", loss=lambda: trl_dpo("robust", beta, 0.1), expect=robust(0.1),
        paper="rDPO (2403.00409): unbiased under flip rate label_smoothing=0.1")
    add(id="dpo:ipo", kind="preference", loss=lambda: trl_dpo("ipo", beta), expect="ipo",
        paper="IPO (2310.12036) Eq. 17: graph least squares, tau = beta (TRL divides by completion length: 1 here)")
    add(id="dpo:sigmoid_norm", kind="preference", loss=lambda: trl_dpo("sigmoid_norm", beta), expect="kl_rl",
        paper="length-normalised DPO; one-token completions: DPO's optimum")
    add(id="dpo:sft", kind="preference", loss=lambda: trl_dpo("sft", beta), expect=chosen_sft,
        paper="SFT on chosen: pi = chosen marginal")
    add(id="dpo:aot", kind="preference", loss=lambda: trl_dpo("aot", beta), expect="kl_rl",
        paper="AOT (2406.05882) sorts over the batch; alone a pair is DPO's sigmoid")
    add(id="dpo:aot_unpaired", kind="preference", loss=lambda: trl_dpo("aot_unpaired", beta), expect="kl_rl",
        paper="AOT unpaired; alone a pair is DPO's sigmoid")
    for lt, paper in (("hinge", "SLiC (2305.10425): no closed form"),
                      ("exo_pair", "EXO (2402.00856) needs label_smoothing > 0 (log eps)"),
                      ("nca_pair", "NCA (2402.05369): no closed form stated"),
                      ("bco_pair", "BCO (2404.04656): no closed form stated"),
                      ("sppo_hard", "SPPO hard labels (2405.00675): no closed form stated"),
                      ("apo_zero", "APO-zero (2408.06266): no closed form stated"),
                      ("apo_down", "APO-down (2408.06266): no closed form stated"),
                      ("discopop", "DiscoPOP (2406.08414): no closed form stated")):
        add(id=f"dpo:{lt}", kind="preference", loss=lambda lt=lt: trl_dpo(lt, beta), expect=None, paper=paper)
    add(id="dpo:exo_pair+ls", kind="preference", loss=lambda: trl_dpo("exo_pair", beta, 1e-3), expect=None,
        paper="EXO with label_smoothing=1e-3 (the paper's eps): no closed form encoded")
    add(id="kto", kind="preference", loss=lambda: trl_kto(beta), expect=kto_limit,
        paper="KTO (2402.01306): depends only on net weights d_y - u_y (THEORY.md); no finite optimum in general")
    add(id="cpo:sigmoid", kind="preference", loss=lambda: trl_cpo("sigmoid", beta), expect=kl_rl_uniform_ref,
        paper="CPO (2401.08417) preference term: reference-free DPO, pi ∝ exp(r/beta)")
    add(id="cpo:simpo_gamma0", kind="preference", loss=lambda: trl_cpo("simpo", beta, 0.0), expect=kl_rl_uniform_ref,
        paper="SimPO (2405.14734), gamma = 0, one-token: pi ∝ exp(L (r + c)/beta) = exp(r/beta)")
    add(id="cpo:simpo", kind="preference", loss=lambda: trl_cpo("simpo", beta, 0.5), expect=kl_rl_uniform_ref,
        paper="SimPO with TRL's default simpo_gamma=0.5: the margin moves the optimum off exp(r/beta)")
    add(id="orpo", kind="preference", loss=lambda: trl_orpo(beta), expect=orpo_two_arm,
        paper="ORPO (2403.07691): NLL + lambda * odds-ratio term (lambda = beta); K = 2 contradictory: the root of "
              "sigma(u) + 2 lambda sigma(2u) = q (1 + 2 lambda); TRL computes the term in float32 (.float())")
    add(id="reward", kind="reward_model", loss=lambda: trl_reward(), expect="bt_mle",
        paper="Bradley-Terry reward model: MLE scores")
    add(id="reward:center", kind="reward_model", loss=lambda: trl_reward(0.01), expect=centred_bt(0.01),
        paper="with center_rewards_coefficient=0.01 (per-pair mean of (r_c + r_r)^2)")
    add(id="grpo:k3", kind="online_policy", loss=lambda: trl_grpo(beta), expect="kl_rl",
        paper="GRPO (DeepSeekMath, 2402.03300): the KL-regularised objective, Gibbs pi_ref exp(r/beta)/Z "
              "(tree: the soft-optimal token policy)")
    add(id="grpo:k3 (its fixed point)", kind="online_policy", loss=lambda: trl_grpo(beta), expect=k3_fixed_point,
        paper="k3 as a loss: beta pi_ref/(lambda - r); tree: the myopic per-token k3 point (THEORY.md) — "
              "before TRL's per-sequence 1/|o| normalisation")
    add(id="dr_grpo:k3 (its fixed point)", kind="online_policy", loss=lambda: trl_grpo(beta, loss_type="dr_grpo"),
        expect=k3_fixed_point, paper="Dr. GRPO (2503.20783) normalises by a constant: the same fixed points")
    add(id="grpo:k3+bias_correction", kind="online_policy", loss=lambda: trl_grpo(beta, True), expect="kl_rl",
        paper="use_bias_correction_kl: k3 (pi/pi_old) = gradient of KL(pi || pi_ref): Gibbs")
    add(id="dr_grpo:k3+bias_correction (local)", kind="online_policy",
        loss=lambda: trl_grpo(beta, True, loss_type="dr_grpo"), expect=reverse_kl_fixed_point,
        paper="per-token reverse KL on a tree: the myopic point pi ∝ pi_ref exp(Q_r/beta) (THEORY.md)")
    add(id="grpo:beta0", kind="online_policy", loss=lambda: trl_grpo(0.0), expect="kl_rl",
        paper="TRL's default beta=0: no KL at all, so no Gibbs optimum (greedy limit)")
    add(id="rloo", kind="online_policy", loss=trl_rloo, expect="kl_rl", options={"kl_in_reward": True},
        paper="RLOO (2402.14740): k1 in the reward (as TRL's RLOO adds it): Gibbs")
    return d


def run(selected=None, beta=0.1, seed=0) -> dict:
    import trl

    rows = []
    for case in cases(beta):
        if selected and case["id"] not in selected:
            continue
        t0 = time.perf_counter()
        fn = case["loss"]()
        try:
            rep = check_loss(case["kind"], fn, expect=case["expect"], beta=beta, seed=seed, **case.get("options", {}))
            regimes = [r.to_dict() for r in rep.results]
            err = None
        except LossCheckError as exc:
            regimes, err = [], f"{type(exc).__name__}: {exc}"
        rows.append({"id": case["id"], "kind": case["kind"], "trl": fn.__name__, "paper": case["paper"],
                     "expect": None if case["expect"] is None else getattr(case["expect"], "__name__", case["expect"]),
                     "regimes": regimes, "error": err, "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{case['id']:<28} {rows[-1]['seconds']:6.1f} s  " +
              (err or " ".join(f"{r['regime']}={r['status']}" for r in regimes)), flush=True)
    if selected:
        missing = set(selected) - {r["id"] for r in rows}
        if missing:
            raise SystemExit(f"unknown loss id(s): {', '.join(sorted(missing))}")
    return {"trl_version": trl.__version__, "torch_version": torch.__version__, "beta": beta, "seed": seed,
            "rows": rows}


def _cell(r):
    st, d, t = r["status"], r["distance"], r["tolerance"]
    if st in ("reached", "missed"):
        return f"**{st}** {d:.1e}" + (f" (tol {t:.0e})" if t is not None else "")
    if st == "limit":
        return f"limit {d:.1e}"
    if st in ("landed", "no claim"):
        kl = r["distance_to"].get("kl_rl")
        return st + ("" if kl is None else f"; kl_rl {kl:.1e}") + ("" if r["attained"] else " (diverges)")
    return st


def markdown(result: dict) -> str:
    rows = result["rows"]
    checked = [r for r in rows if r["expect"] is not None and not r["error"]]
    n_reg = sum(1 for r in checked for g in r["regimes"] if g["status"] in ("reached", "missed"))
    n_miss = sum(1 for r in checked for g in r["regimes"] if g["status"] == "missed")
    lines = [
        f"# TRL {result['trl_version']}: its loss code against the optimum each paper states",
        "",
        f"Measured by `python benchmarks/conformance_trl.py` (mdpalign.testing; torch {result['torch_version']}, "
        f"beta = {result['beta']:g}, seed {result['seed']}). TRL's own functions are called on stub trainers (see the "
        "script's docstring); each is fitted on the exact population loss of each regime and certified.",
        "",
        f"**Headline:** {len(checked)} losses with a stated optimum, {n_reg} (loss, regime) claims checked: "
        f"{n_reg - n_miss} reached, {n_miss} missed. Missed rows are departures of TRL's code from the paper's "
        "optimum (or of the paper's own claim), each measured, not asserted.",
        "",
        "Cells: **reached**/**missed** with the distance to the claimed optimum (nats of log-probability, or of "
        "score for reward models) and the certified tolerance; `limit` (no finite minimiser claimed: distance of "
        "the fitted policy to the limit's characterisation); `no claim` / `landed` (where it lands, and its "
        "distance to the KL-RL optimum pi_ref exp(r/beta)/Z); `(diverges)`: no finite stationary point.",
        "",
        "| loss | TRL code | optimum stated (paper) | " + " | ".join(
            g["regime"] for g in next((r["regimes"] for r in rows if r["regimes"] and r["kind"] == "preference"),
                                      [{"regime": x} for x in ("bt_all_pairs", "partial_coverage", "deterministic",
                                                               "two_arm")])) + " | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            cells = [f"error: {r['error']}", "", "", ""]
        else:
            cells = [f"{g['regime']}: {_cell(g)}" if r["kind"] == "online_policy" else _cell(g) for g in r["regimes"]]
            cells += [""] * (4 - len(cells))
        esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731 (a '|' in a cell would split the table)
        lines.append(f"| {r['id']} | `{r['trl']}` | {esc(r['paper'])} (expect: {r['expect'] or '-'}) | "
                     + " | ".join(cells) + f" | {r['seconds']} |")
    lines += ["", "Online rows (GRPO, RLOO): regimes `bandit` (4 arms), `two_arm` and `token_tree` (sequences of 1-3 "
              "tokens), at the exact expected update with "
              "advantages r - E_pi[r] (GRPO's group-std scaling not modelled). Reward-model rows: the preference "
              "regimes.", "", "## Missed and error rows, as measured", ""]
    for r in rows:
        if r["error"]:
            lines.append(f"- **{r['id']}**: {r['error']}")
        for g in r["regimes"]:
            if g["status"] in ("missed", "error"):
                lines.append(f"- **{r['id']}**, {g['regime']}: {g['detail']}")
    lines.append("")
    return "\n".join(lines)


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".conformance.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=None, help="loss ids to run (default: all)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT, help="markdown table (default benchmarks/results/conformance_trl.md)")
    ap.add_argument("--json", default=None, help="also write the full result as JSON here")
    args = ap.parse_args(argv)
    result = run(args.only, args.beta, args.seed)
    _atomic_write(args.out, markdown(result))
    if args.json:
        _atomic_write(args.json, json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
