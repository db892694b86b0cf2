"""The bad-input table: every kind of bad input mdpalign refuses, in one place (issue 9, item 6).

Each row is ``(id, make, error, phrase)``: ``make(tmp_path)`` feeds one bad input to the public API or to the
command line; ``error`` is the library error it must raise (a subclass of :class:`mdpalign.errors.MdpalignError`),
or ``EXIT_2`` for a command line, which must end with exit status 2, exactly one ``error:`` line on stderr, nothing on
stdout and no traceback; ``phrase`` is a piece of the message that names the problem, and must appear in it. A
library message is one line too.

The README's count ("N bad inputs tried: N clear errors") is checked against the length of this table.
Everything here is cheap: the command lines run in-process (``mdpalign.cli.main``); ``train`` and ``eval`` rows stop
at the config, path and data checks before any model is loaded (one asks for the tokenizer of a directory that has
none); the data-file rows read tiny files in ``tmp_path``. A row that found a traceback, a raw numpy/torch/json
error or a message naming nothing was fixed in the library (see the commits on this file's branch) before it went in.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from exact_oracles import unbounded_soft_mdp

import mdpalign.objectives as obj
from mdpalign import InvalidMDPError, MdpalignError, TabularMDP, proofs, solve
from mdpalign.bench.config import BanditsConfig, BenchConfigError, FrozenLakeConfig
from mdpalign.cli import main
from mdpalign.data import DataError, PreferenceData
from mdpalign.envs import (
    ContextualBandit,
    InvalidBanditError,
    InvalidMapError,
    InvalidTokenTreeError,
    TokenTree,
    frozen_lake,
    k_armed_bandit,
    random_contextual_bandit,
    random_token_tree,
    two_path_lake_from_map,
)
from mdpalign.fit import (
    FitError,
    NonFiniteLossError,
    NotConvergedError,
    fit,
    weighted_sum,
)
from mdpalign.objectives import InvalidLogProbError, ObjectiveArgumentError, ShapeError
from mdpalign.policies import MLPPolicy, PolicyInputError, TabularPolicy
from mdpalign.proofs import ProofInputError
from mdpalign.solve import ConvergenceError, SolverError, UnboundedMDPError

ROOT = Path(__file__).resolve().parents[1]
EXIT_2 = 2  # the ``error`` of a command-line row
NAN, INF = float("nan"), float("inf")


class Bad(NamedTuple):
    id: str
    make: Callable[[Path], Any]
    error: type | int
    phrase: str


CASES: list[Bad] = []


def bad(id: str, make: Callable[[Path], Any], error: type, phrase: str) -> None:
    CASES.append(Bad(id, make, error, phrase))


def cli(id: str, argv: list[str] | Callable[[Path], list[str]], phrase: str) -> None:
    CASES.append(Bad(id, argv if callable(argv) else (lambda _tmp, a=tuple(argv): list(a)), EXIT_2, phrase))


# ----------------------------------------------------------------------------- small valid pieces

def _P(S=2, A=2):
    P = np.zeros((S, A, S))
    P[..., 0] = 1.0
    return P


def _R(S=2, A=2):
    return np.zeros((S, A))


def _P_with(row, values):
    P = _P()
    P[row] = values
    return P


def _mdp(gamma=0.9):
    return TabularMDP(_P(), _R(), gamma)


def _lp():
    return torch.tensor([[-1.0, -0.5, -2.0], [-0.25, -3.0, -1.5]], dtype=torch.float64)


MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
SEQ = torch.tensor([-1.0, -2.0], dtype=torch.float64)


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


def _same_tensor_twice(f):
    lp = _lp()
    return f(lp, lp, torch.zeros(2), MASK)




# ============================================================================= MDPs
bad("mdp.R_1d", lambda _: TabularMDP(_P(), np.zeros(2), 0.9), InvalidMDPError, "R must have shape (S, A)")
bad("mdp.R_empty", lambda _: TabularMDP(np.zeros((0, 2, 0)), np.zeros((0, 2)), 0.9), InvalidMDPError,
    "at least one state and one action")
bad("mdp.P_shape", lambda _: TabularMDP(np.ones((2, 2)), _R(), 0.9), InvalidMDPError, "P must have shape (S, A, S)")
bad("mdp.P_negative", lambda _: TabularMDP(_P_with((0, 0), [1.5, -0.5]), _R(), 0.9),
    InvalidMDPError, "negative probabilities")
bad("mdp.P_nan", lambda _: TabularMDP(np.where(_P() == 1, NAN, 0.0), _R(), 0.9), InvalidMDPError,
    "non-finite probabilities")
bad("mdp.P_row_sum", lambda _: TabularMDP(_P() * 0.5, _R(), 0.9), InvalidMDPError, "not row-stochastic")
bad("mdp.P_ragged", lambda _: TabularMDP([[[1.0, 0.0], [1.0]], [[1.0, 0.0], [1.0, 0.0]]], _R(), 0.9),
    InvalidMDPError, "P is ragged")
bad("mdp.P_text", lambda _: TabularMDP(np.full((2, 2, 2), "x"), _R(), 0.9), InvalidMDPError, "P must hold numbers")
bad("mdp.R_ragged", lambda _: TabularMDP(_P(), [[0.0, 0.0], [0.0]], 0.9), InvalidMDPError, "R is ragged")
bad("mdp.R_inf", lambda _: TabularMDP(_P(), [[0.0, INF], [0.0, 0.0]], 0.9), InvalidMDPError, "non-finite rewards")
bad("mdp.sparse_P_shape", lambda _: TabularMDP(sp.csr_matrix(np.eye(2)), _R(), 0.9), InvalidMDPError,
    "sparse P must have shape (S*A, S)")
bad("mdp.sparse_P_negative",
    lambda _: TabularMDP(sp.csr_matrix(np.array([[2.0, -1.0], [1, 0], [1, 0], [1, 0]])), _R(), 0.9),
    InvalidMDPError, "negative probabilities")
bad("mdp.gamma_above_1", lambda _: TabularMDP(_P(), _R(), 1.5), InvalidMDPError, "gamma must lie in [0, 1]")
bad("mdp.gamma_negative", lambda _: TabularMDP(_P(), _R(), -0.1), InvalidMDPError, "gamma must lie in [0, 1]")
bad("mdp.gamma_nan", lambda _: TabularMDP(_P(), _R(), NAN), InvalidMDPError, "gamma must lie in [0, 1]")
bad("mdp.gamma_text", lambda _: TabularMDP(_P(), _R(), "high"), InvalidMDPError, "gamma must be a number, got 'high'")
bad("mdp.gamma_1_no_proper_policy", lambda _: TabularMDP(_P(), _R(), 1.0), InvalidMDPError, "no proper policy exists")
bad("mdp.terminal_shape", lambda _: TabularMDP(_P(), _R(), 0.9, terminal=[True]), InvalidMDPError,
    "terminal must have shape (2,)")
bad("mdp.terminal_ragged", lambda _: TabularMDP(_P(), _R(), 0.9, terminal=[[True], [False, True]]), InvalidMDPError,
    "terminal is ragged")
bad("mdp.terminal_leaks", lambda _: TabularMDP(_P(), _R(), 0.9, terminal=[False, True]), InvalidMDPError,
    "terminal state 1 has transitions leaving it")
bad("mdp.terminal_reward",
    lambda _: TabularMDP(_P(), [[1.0, 0.0], [0.0, 0.0]], 0.9, terminal=[True, False]), InvalidMDPError,
    "terminal state 0 has a non-zero reward")
bad("mdp.all_terminal", lambda _: TabularMDP(np.stack([np.eye(2)] * 2, axis=1), _R(), 0.9, terminal=[True, True]),
    InvalidMDPError, "every state is terminal")
bad("mdp.initial_shape", lambda _: TabularMDP(_P(), _R(), 0.9, initial=[1.0]), InvalidMDPError,
    "initial must have shape (2,)")
bad("mdp.initial_negative", lambda _: TabularMDP(_P(), _R(), 0.9, initial=[1.5, -0.5]), InvalidMDPError,
    "initial has negative or non-finite entries")
bad("mdp.initial_sum", lambda _: TabularMDP(_P(), _R(), 0.9, initial=[0.5, 0.25]), InvalidMDPError,
    "initial distribution sums to 0.75")
bad("mdp.initial_ragged", lambda _: TabularMDP(_P(), _R(), 0.9, initial=[[0.5], [0.25, 0.25]]), InvalidMDPError,
    "initial is ragged")
bad("mdp.state_labels", lambda _: TabularMDP(_P(), _R(), 0.9, state_labels=("a",)), InvalidMDPError,
    "state_labels has 1 entries for 2 states")
bad("mdp.gamma_none", lambda _: TabularMDP(_P(), _R(), None), InvalidMDPError, "gamma must be a number, got None")
bad("mdp.state_labels_not_a_sequence", lambda _: TabularMDP(_P(), _R(), 0.9, state_labels=3), InvalidMDPError,
    "state_labels must be a sequence of 2 names")
bad("mdp.policy_out_of_range", lambda _: _mdp().policy_transitions(np.array([0, 5])), InvalidMDPError,
    "actions outside [0, 2)")
bad("mdp.policy_rows", lambda _: _mdp().policy_transitions(np.array([[0.5, 0.4], [1.0, 0.0]])), InvalidMDPError,
    "policy row for state 0 sums to 0.9")

# ============================================================================= Frozen Lake maps
bad("map.unknown_name", lambda _: frozen_lake("16x16"), InvalidMapError, "unknown map name '16x16'")
bad("map.two_starts", lambda _: frozen_lake(["SFS", "FFG"]), InvalidMapError, "has 2 start cells 'S'")
bad("map.no_goal", lambda _: frozen_lake(["SFF", "FFF"]), InvalidMapError, "has no goal cell 'G'")
bad("map.bad_letter", lambda _: frozen_lake(["SFX", "FFG"]), InvalidMapError,
    "holds ['X']; only S (start), F (frozen), H (hole), G (goal) are allowed")
bad("map.ragged_rows", lambda _: frozen_lake(["SFF", "FG"]), InvalidMapError, "rows have unequal lengths [3, 2]")
bad("map.empty", lambda _: frozen_lake([]), InvalidMapError, "is empty")
bad("map.not_strings", lambda _: frozen_lake([1, 2]), InvalidMapError, "only S (start), F (frozen), H (hole), G (goal)")
bad("map.goal_unreachable", lambda _: frozen_lake(["SH", "HG"]), InvalidMapError,
    "no path of frozen cells leads from S to G")
bad("map.random_size", lambda _: frozen_lake(None, size=1), InvalidMapError,
    "a random map needs an integer size >= 2")
bad("map.random_size_text", lambda _: frozen_lake(None, size="x"), InvalidMapError,
    "a random map needs an integer size >= 2; got 'x'")
bad("map.random_p_frozen", lambda _: frozen_lake(None, p_frozen=0.0), InvalidMapError, "p_frozen must lie in (0, 1]")
bad("map.max_episode_steps", lambda _: frozen_lake("4x4", max_episode_steps=0), InvalidMapError,
    "max_episode_steps must be positive")
bad("map.gamma", lambda _: frozen_lake("4x4", gamma=2.0), InvalidMDPError, "gamma must lie in [0, 1]")
bad("map.two_path_suboptimal", lambda _: two_path_lake_from_map(["SFFG", "FHHF"], suboptimal="shorter"),
    InvalidMapError, "suboptimal must be 'longer' or 'hole'")
bad("map.two_path_gamma_1", lambda _: two_path_lake_from_map(["SFFG", "FHHF"], gamma=1.0), InvalidMapError,
    "gamma must lie in [0, 1)")
bad("map.two_path_one_path", lambda _: two_path_lake_from_map(["SFG"]), InvalidMapError,
    "has only one trajectory of the kind needed")
bad("map.two_path_tied", lambda _: two_path_lake_from_map(["SF", "FG"]), InvalidMapError,
    "shortest S→G paths")

bad("map.step_action", lambda _: frozen_lake("4x4").deterministic_step(0, 7), InvalidMapError,
    "action 7 is not one of LEFT 0, DOWN 1, RIGHT 2, UP 3")
bad("map.rollout_after_the_end", lambda _: frozen_lake("4x4").rollout_actions([2, 1, 0]), InvalidMapError,
    "is taken after the episode ended in H")
bad("map.render_policy_shape", lambda _: frozen_lake("4x4").render_policy(np.zeros(3, dtype=int)), InvalidMapError,
    "policy must have shape (16,) or (16, 4)")

# ============================================================================= bandits and token trees
bad("envs.bandit_one_arm", lambda _: k_armed_bandit(1, seed=0), InvalidBanditError, "a bandit needs at least 2 arms")
bad("envs.bandit_rewards_shape", lambda _: k_armed_bandit(3, rewards=np.zeros(2)), InvalidBanditError,
    "rewards must have shape (3,) for a 3-armed bandit")
bad("envs.bandit_no_context", lambda _: random_contextual_bandit(0, 3, seed=0), InvalidBanditError,
    "n_contexts must be >= 1")
bad("envs.bandit_ref_zero", lambda _: ContextualBandit(np.zeros((1, 2)), np.array([[1.0, 0.0]])), InvalidBanditError,
    "ref_policy must be strictly positive")
bad("envs.bandit_context_probs", lambda _: ContextualBandit(np.zeros((1, 2)), np.full((1, 2), 0.5), np.array([0.5])),
    InvalidBanditError, "context_probs is not a distribution")
bad("envs.bandit_seed", lambda _: k_armed_bandit(3, seed="x"), InvalidBanditError,
    "rng must be a numpy Generator, an int seed or None")
bad("envs.token_tree_vocab", lambda _: random_token_tree(1, 2, seed=0), InvalidTokenTreeError,
    "vocab_size must be an integer >= 2")
bad("envs.token_tree_eos", lambda _: TokenTree(2, 2, eos=5), InvalidTokenTreeError, "eos must be a token in [0, 2)")
bad("envs.token_tree_ref_logits", lambda _: TokenTree(2, 2, ref_logits=np.zeros((1, 2))), InvalidTokenTreeError,
    "ref_logits must have shape (n_prefixes, vocab_size) = (5, 2)")

# ============================================================================= solver arguments
bad("solve.unknown_method", lambda _: solve.solve(_mdp(), "dp"), SolverError, "unknown method 'dp'")
bad("solve.soft_needs_beta", lambda _: solve.solve(_mdp(), "soft"), SolverError, "method 'soft' needs beta=")
bad("solve.soft_horizon", lambda _: solve.solve(_mdp(), "soft", beta=1.0, horizon=3), SolverError,
    "the soft solver has no horizon")
bad("solve.horizon_options", lambda _: solve.solve(_mdp(), "pi", horizon=3, tol=1e-3), SolverError,
    "finite_horizon takes no options besides horizon")
bad("solve.not_an_mdp", lambda _: solve.policy_iteration(np.zeros((2, 2))), SolverError,
    "expected a mdpalign.TabularMDP")
bad("solve.tol_zero", lambda _: solve.policy_iteration(_mdp(), tol=0.0), SolverError,
    "tol must be a finite number > 0, got 0.0")
bad("solve.tol_nan", lambda _: solve.value_iteration(_mdp(), tol=NAN), SolverError,
    "tol must be a finite number > 0, got nan")
bad("solve.tol_text", lambda _: solve.policy_iteration(_mdp(), tol="small"), SolverError,
    "tol must be a number, got 'small'")
bad("solve.max_iter_text", lambda _: solve.value_iteration(_mdp(), max_iter="many"), SolverError,
    "max_iter must be a positive integer; got 'many'")
bad("solve.horizon_fraction", lambda _: solve.finite_horizon(_mdp(), 2.5), SolverError,
    "horizon must be a non-negative integer; got 2.5")
bad("solve.max_iter_zero", lambda _: solve.value_iteration(_mdp(), max_iter=0), SolverError,
    "max_iter must be a positive integer")
bad("solve.linear_solver", lambda _: solve.policy_iteration(_mdp(), linear_solver="lu"), SolverError,
    "linear_solver must be 'auto', 'direct' or 'gmres'")
bad("solve.initial_policy", lambda _: solve.policy_iteration(_mdp(), initial_policy=np.array([0, 7])), SolverError,
    "actions outside [0, 2)")
bad("solve.initial_values", lambda _: solve.value_iteration(_mdp(), initial_values=np.zeros(3)), SolverError,
    "initial_values must be a finite array of shape (2,)")
bad("solve.horizon_negative", lambda _: solve.finite_horizon(_mdp(), -1), SolverError,
    "horizon must be a non-negative integer")
bad("solve.beta_zero", lambda _: solve.soft_value_iteration(_mdp(), beta=0.0), SolverError,
    "beta must be a finite number > 0, got 0.0")
bad("solve.beta_text", lambda _: solve.soft_value_iteration(_mdp(), beta="hot"), SolverError,
    "beta must be a number, got 'hot'")
bad("solve.ref_policy_shape", lambda _: solve.soft_value_iteration(_mdp(), beta=1.0, ref_policy=np.ones(2)),
    SolverError, "ref_policy must have shape (2, 2)")
bad("solve.ref_policy_empty_row",
    lambda _: solve.soft_value_iteration(_mdp(), beta=1.0, ref_policy=np.array([[0.0, 0.0], [0.5, 0.5]])),
    SolverError, "ref_policy puts no mass on any action at states [0]")
bad("solve.ref_policy_sum",
    lambda _: solve.soft_value_iteration(_mdp(), beta=1.0, ref_policy=np.array([[0.5, 0.2], [0.5, 0.5]])),
    SolverError, "ref_policy row for state 0 sums to 0.7")
bad("solve.soft_unbounded", lambda _: solve.soft_value_iteration(unbounded_soft_mdp(), beta=1.0),
    UnboundedMDPError, "the KL-regularised values are unbounded at beta=1")
bad("solve.value_iteration_max_iter", lambda _: solve.value_iteration(frozen_lake("4x4", gamma=0.999).mdp, max_iter=2),
    ConvergenceError, "reached max_iter=2")
bad("solve.evaluate_policy_shape", lambda _: solve.evaluate(_mdp(), np.zeros(3, dtype=int)), SolverError,
    "policy must have shape")
bad("solve.goal_states_range", lambda _: solve.state_success_probabilities(_mdp(), np.zeros(2, dtype=int), [5]),
    SolverError, "goal_states [5] are outside [0, 2)")
bad("solve.goal_states_empty", lambda _: solve.state_success_probabilities(_mdp(), np.zeros(2, dtype=int), []),
    SolverError, "goal_states is empty")
bad("solve.macqueen_gamma_1",
    lambda _: solve.macqueen_bounds(TabularMDP(np.stack([np.eye(2)[[1, 1]]] * 2, axis=1), _R(), 1.0,
                                               terminal=[False, True]), np.zeros(2), np.zeros(2)),
    SolverError, "MacQueen bounds need gamma < 1")

# ============================================================================= objectives (mdpalign.objectives)
T2 = torch.ones(2, 3, dtype=torch.float64)
bad("objectives.sft_loss.nan_at_counted_token", lambda _: obj.sft_loss(_with(_lp(), (1, 1), NAN), MASK),
    InvalidLogProbError, "token_logps has nan at counted position (1, 1)")
bad("objectives.sft_loss.positive_logp", lambda _: obj.sft_loss(_with(_lp(), (0, 0), 0.5), MASK),
    InvalidLogProbError, "above 0 by more than the rounding tolerance")
bad("objectives.sft_loss.mask_shape", lambda _: obj.sft_loss(_lp(), MASK[:, :2]), ShapeError,
    "must have shape (2, 3) like token_logps")
bad("objectives.sft_loss.1d", lambda _: obj.sft_loss(SEQ, SEQ > 0), ShapeError, "must be 2-D (batch, tokens)")
bad("objectives.sft_loss.integer_logps", lambda _: obj.sft_loss(torch.zeros(2, 3, dtype=torch.long), MASK),
    ShapeError, "must be floating point")
bad("objectives.sft_loss.empty_row", lambda _: obj.sft_loss(_lp(), _with(MASK, 0, False)), ShapeError,
    "count no token")
bad("objectives.sft_loss.mask_not_01", lambda _: obj.sft_loss(_lp(), MASK.long() * 2), ShapeError,
    "must contain only 0/1")
bad("objectives.sft_loss.not_a_tensor", lambda _: obj.sft_loss(_lp().tolist(), MASK), ShapeError,
    "must be a torch.Tensor")
bad("objectives.sft_pieces.inf", lambda _: obj.sft_pieces(_with(_lp(), (0, 1), INF), MASK), InvalidLogProbError,
    "token_logps has +inf at counted position (0, 1)")
bad("objectives.sequence_logps.neg_inf", lambda _: obj.sequence_logps(_with(_lp(), (1, 2), -INF), MASK),
    InvalidLogProbError, "token_logps has -inf at counted position (1, 2)")
bad("objectives.dpo_loss.label_smoothing_half", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, label_smoothing=0.5),
    ObjectiveArgumentError, "label_smoothing must lie in [0, 0.5)")
bad("objectives.dpo_loss.label_smoothing_ipo",
    lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, loss_type="ipo", label_smoothing=0.1), ObjectiveArgumentError,
    "label_smoothing has no meaning for loss_type='ipo'")
bad("objectives.dpo_loss.loss_type", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, loss_type="kto"),
    ObjectiveArgumentError, "unknown loss_type 'kto'")
bad("objectives.dpo_loss.beta_zero", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, beta=0.0), ObjectiveArgumentError,
    "beta must be a finite number > 0")
bad("objectives.dpo_loss.beta_text", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, beta="big"), ObjectiveArgumentError,
    "beta must be a number")
bad("objectives.dpo_loss.nan_logp", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, _with(SEQ, 1, NAN)), InvalidLogProbError,
    "ref_rejected_logps has nan at index 1")
bad("objectives.dpo_loss.shapes", lambda _: obj.dpo_loss(SEQ, SEQ[:1], SEQ, SEQ), ShapeError,
    "policy_rejected_logps must have the shape of policy_chosen_logps")
bad("objectives.dpo_loss.one_count", lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, loss_type="ipo",
                                                           chosen_token_counts=torch.ones(2)),
    ObjectiveArgumentError, "pass both chosen_token_counts and rejected_token_counts, or neither")
bad("objectives.dpo_loss.negative_counts",
    lambda _: obj.dpo_loss(SEQ, SEQ, SEQ, SEQ, loss_type="ipo", chosen_token_counts=torch.tensor([1.0, -1.0]),
                           rejected_token_counts=torch.ones(2)),
    ObjectiveArgumentError, "chosen_token_counts must be finite numbers >= 0")
bad("objectives.orpo_loss.lam_negative", lambda _: obj.orpo_loss(_lp(), MASK, _lp(), MASK, lam=-1.0),
    ObjectiveArgumentError, "lam must be a finite number >= 0")
bad("objectives.orpo_loss.batch_sizes", lambda _: obj.orpo_loss(_lp(), MASK, _lp()[:1], MASK[:1]), ShapeError,
    "chosen and rejected batch sizes differ")
bad("objectives.orpo_loss.nll_mask_missing", lambda _: obj.orpo_loss(_lp(), MASK, _lp(), MASK, nll_token_logps=_lp()),
    ObjectiveArgumentError, "pass both nll_token_logps and nll_mask, or neither")
bad("objectives.orpo_loss.rejected_nan", lambda _: obj.orpo_loss(_lp(), MASK, _with(_lp(), (0, 0), NAN), MASK),
    InvalidLogProbError, "rejected_token_logps has nan at counted position (0, 0)")
bad("objectives.orpo_log_odds.positive", lambda _: obj.orpo_log_odds(SEQ, torch.tensor([0.3, -1.0],
                                                                                      dtype=torch.float64)),
    InvalidLogProbError, "rejected_avg_logps has above 0")
bad("objectives.ift_loss.decay", lambda _: obj.ift_loss(_lp(), MASK, decay=1.5), ObjectiveArgumentError,
    "decay must lie in [0, 1]")
bad("objectives.ift_loss.form", lambda _: obj.ift_loss(_lp(), MASK, form="linear"), ObjectiveArgumentError,
    "unknown form 'linear'")
bad("objectives.propagation_weights.decay", lambda _: obj.propagation_weights(-_lp(), MASK, decay=-0.1),
    ObjectiveArgumentError, "decay must lie in [0, 1]")
bad("objectives.fuse_embeddings.shapes", lambda _: obj.fuse_embeddings(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5),
                                                                       MASK, 0.2),
    ShapeError, "pred_embeds shape (2, 3, 5) differs from true_embeds (2, 3, 4)")
bad("objectives.fuse_embeddings.lam", lambda _: obj.fuse_embeddings(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4),
                                                                    MASK, 2.0),
    ObjectiveArgumentError, "lam must lie in [0, 1]")
bad("objectives.successor_from_table.float", lambda _: obj.successor_from_table(torch.zeros(3, 2)), ShapeError,
    "next_state must be an integer (S, A) table")
bad("objectives.crlft_loss.weights_length", lambda _: obj.crlft_loss(_lp(), MASK, torch.ones(3)), ShapeError,
    "weights must be a 1-D tensor of length 2")
bad("objectives.crlft_loss.negative_weight", lambda _: obj.crlft_loss(_lp(), MASK, torch.tensor([1.0, -1.0])),
    ObjectiveArgumentError, "weights must be finite and >= 0")
bad("objectives.crlft_loss.reduction", lambda _: obj.crlft_loss(_lp(), MASK, torch.ones(2), reduction="mean"),
    ObjectiveArgumentError, "unknown reduction 'mean'")
bad("objectives.crlft_reduce.zero_weights",
    lambda _: obj.crlft_reduce(obj.crlft_loss(_lp(), MASK, torch.zeros(2, dtype=torch.float64))),
    ObjectiveArgumentError, "the weights sum to 0")
bad("objectives.crlft_class_weights.overflow", lambda _: obj.crlft_class_weights([1.0, 0.1], beta=1e-12),
    ObjectiveArgumentError, "exp(r/beta) overflows torch.float64")
bad("objectives.crlft_class_weights.normalize", lambda _: obj.crlft_class_weights([1.0, 0.1], 1.0, normalize="l2"),
    ObjectiveArgumentError, "unknown normalize 'l2'")
bad("objectives.crlft_class_weights.empty", lambda _: obj.crlft_class_weights([], 1.0), ShapeError,
    "class_rewards must be a non-empty 1-D sequence")
bad("objectives.crlft_class_weights.beta", lambda _: obj.crlft_class_weights([1.0, 0.1], beta=-1.0),
    ObjectiveArgumentError, "beta must be a finite number > 0")
LOG_HALF = torch.log(torch.full((2, 2), 0.5, dtype=torch.float64))
bad("objectives.kl_rl_objective.unnormalised", lambda _: obj.kl_rl_objective(torch.zeros(2, 2, dtype=torch.float64),
                                                                              LOG_HALF, torch.zeros(2, 2), 1.0),
    InvalidLogProbError, "log_pi is not normalised in context 0")
bad("objectives.kl_rl_objective.shapes", lambda _: obj.kl_rl_objective(LOG_HALF, LOG_HALF[0], torch.zeros(2, 2), 1.0),
    ShapeError, "must share a shape")
bad("objectives.kl_rl_objective.context_probs",
    lambda _: obj.kl_rl_objective(LOG_HALF, LOG_HALF, torch.zeros(2, 2, dtype=torch.float64), 1.0,
                                  context_probs=torch.tensor([0.5, 0.6], dtype=torch.float64)),
    ObjectiveArgumentError, "context_probs must be a probability vector")
bad("objectives.kl_rl_optimal_log_policy.beta", lambda _: obj.kl_rl_optimal_log_policy(LOG_HALF, LOG_HALF, 0.0),
    ObjectiveArgumentError, "beta must be a finite number > 0")
bad("objectives.token_logps_from_logits.labels_range",
    lambda _: obj.token_logps_from_logits(torch.zeros(1, 2, 3), torch.tensor([[0, 7]])), ShapeError,
    "labels out of range [0, 3)")
bad("objectives.token_logps_from_logits.2d", lambda _: obj.token_logps_from_logits(torch.zeros(2, 3),
                                                                                    torch.zeros(2, dtype=torch.long)),
    ShapeError, "logits must be a 3-D tensor")
bad("objectives.token_logps_from_logits.float_labels",
    lambda _: obj.token_logps_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 2)), ShapeError,
    "labels must be integer ids")
R4 = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
bad("objectives.grpo_advantages.group_size_one", lambda _: obj.grpo_advantages(R4, 1), ObjectiveArgumentError,
    "group_size must be >= 2")
bad("objectives.grpo_advantages.not_multiple", lambda _: obj.grpo_advantages(R4, 3), ShapeError,
    "must be a multiple of group_size 3")
bad("objectives.grpo_advantages.scale_rewards", lambda _: obj.grpo_advantages(R4, 2, scale_rewards="global"),
    ObjectiveArgumentError, "unknown scale_rewards 'global'")
bad("objectives.grpo_advantages.nan_reward", lambda _: obj.grpo_advantages(_with(R4, (0, 1), NAN), 2),
    ObjectiveArgumentError, "rewards must be finite")
bad("objectives.grpo_advantages.group_size_float", lambda _: obj.grpo_advantages(R4, 2.0), ObjectiveArgumentError,
    "group_size must be an int")
bad("objectives.rloo_advantages.group_size_one", lambda _: obj.rloo_advantages(R4, 1), ObjectiveArgumentError,
    "group_size must be >= 2")
bad("objectives.remax_advantages.greedy_shape", lambda _: obj.remax_advantages(R4, torch.zeros(1, 3), 2), ShapeError,
    "greedy_rewards must have shape")
bad("objectives.remax_advantages.greedy_nan", lambda _: obj.remax_advantages(R4, torch.full((1, 2), NAN), 2),
    ObjectiveArgumentError, "greedy_rewards must be finite")
bad("objectives.kl_estimate.estimator", lambda _: obj.kl_estimate(_lp(), _lp(), estimator="k4"),
    ObjectiveArgumentError, "unknown estimator 'k4'")
bad("objectives.kl_estimate.shapes", lambda _: obj.kl_estimate(_lp(), _lp()[:, :2]), ShapeError,
    "ref_token_logps must have the shape of token_logps")
bad("objectives.kl_loss_term.old_without_correction",
    lambda _: obj.kl_loss_term(_lp(), _lp(), MASK, old_token_logps=_lp()), ObjectiveArgumentError,
    "old_token_logps is used only with use_bias_correction_kl=True")
bad("objectives.kl_penalised_rewards.rewards_shape",
    lambda _: obj.kl_penalised_rewards(torch.zeros(3), _lp(), _lp(), MASK, beta=0.1), ShapeError,
    "rewards must have shape (2,)")
bad("objectives.kl_penalised_rewards.beta", lambda _: obj.kl_penalised_rewards(torch.zeros(2), _lp(), _lp(), MASK,
                                                                               beta=-0.1),
    ObjectiveArgumentError, "beta must be a finite number > 0")
bad("objectives.ppo_clip_loss.epsilon", lambda _: obj.ppo_clip_loss(_lp(), None, torch.zeros(2), MASK, epsilon=1.0),
    ObjectiveArgumentError, "epsilon must be < 1")
bad("objectives.ppo_clip_loss.epsilon_negative",
    lambda _: obj.ppo_clip_loss(_lp(), None, torch.zeros(2), MASK, epsilon=-0.2), ObjectiveArgumentError,
    "epsilon must be a finite number >= 0")
bad("objectives.ppo_clip_loss.old_is_new", lambda _: _same_tensor_twice(obj.ppo_clip_loss),
    ObjectiveArgumentError, "old_token_logps is token_logps itself")
bad("objectives.ppo_clip_loss.advantages_shape",
    lambda _: obj.ppo_clip_loss(_lp(), None, torch.zeros(5), MASK), ShapeError, "advantages must have shape (2,)")
bad("objectives.aggregate_token_loss.loss_type", lambda _: obj.aggregate_token_loss(T2, MASK, loss_type="mean"),
    ObjectiveArgumentError, "unknown loss_type 'mean'")
bad("objectives.aggregate_token_loss.max_completion_length",
    lambda _: obj.aggregate_token_loss(T2, MASK, loss_type="dr_grpo", max_completion_length=2),
    ObjectiveArgumentError, "max_completion_length (2) is shorter than the padded width T = 3")
bad("objectives.aggregate_token_loss.num_items",
    lambda _: obj.aggregate_token_loss(T2, MASK, loss_type="dapo", num_items_in_batch=0), ObjectiveArgumentError,
    "num_items_in_batch must be > 0")
bad("objectives.bradley_terry_loss.shapes", lambda _: obj.bradley_terry_loss(SEQ, SEQ[:1]), ShapeError,
    "rejected_rewards must have the shape of chosen_rewards")
bad("objectives.bradley_terry_loss.margin", lambda _: obj.bradley_terry_loss(SEQ, SEQ, margin=NAN),
    ObjectiveArgumentError, "margin must be finite")
bad("objectives.center_rewards_penalty.coefficient", lambda _: obj.center_rewards_penalty(SEQ, SEQ, -0.01),
    ObjectiveArgumentError, "must be a finite number >= 0")
bad("objectives.clipped_value_loss.clip_range", lambda _: obj.clipped_value_loss(T2, T2, T2, MASK, clip_range=-0.2),
    ObjectiveArgumentError, "clip_range must be a finite number >= 0")
bad("objectives.clipped_value_loss.shapes", lambda _: obj.clipped_value_loss(T2, T2[:, :2], T2, MASK), ShapeError,
    "must have the shape of values")
bad("objectives.gae_advantages.lam", lambda _: obj.gae_advantages(torch.zeros(2, 3), T2, MASK, lam=1.5),
    ObjectiveArgumentError, "gamma and lam must lie in [0, 1]")
bad("objectives.gae_advantages.stray_reward",
    lambda _: obj.gae_advantages(_with(torch.zeros(2, 3), (0, 2), 1.0), T2, MASK), ObjectiveArgumentError,
    "rewards are non-zero at a non-counted position (0, 2)")
bad("objectives.place_sequence_rewards.empty_row",
    lambda _: obj.place_sequence_rewards(torch.ones(2), _with(MASK, 1, False)), ShapeError, "counts no token")
bad("objectives.place_sequence_rewards.rewards_shape",
    lambda _: obj.place_sequence_rewards(torch.ones(3), MASK), ShapeError, "rewards must have shape (2,)")

# ============================================================================= fit


def _param():
    return torch.zeros(2, dtype=torch.float64, requires_grad=True)


def _fit(loss, param=None, **options):
    """``fit`` on one parameter vector with the loss ``loss(param)``."""
    param = _param() if param is None else param
    return fit([param], lambda: loss(param), **options)


bad("fit.not_parameters", lambda _: fit(42, lambda: torch.zeros(())), FitError,
    "fit needs an nn.Module, a tensor or an iterable of tensors")
bad("fit.no_parameters", lambda _: fit([], lambda: torch.zeros(())), FitError, "fit got no trainable parameters")
bad("fit.not_a_leaf", lambda _: fit([_param() * 2], lambda: torch.zeros(())), FitError,
    "parameter 0 must be a leaf tensor with requires_grad=True")
bad("fit.method", lambda _: _fit(lambda p: (p ** 2).sum(), method="newton"), FitError,
    "unknown method 'newton'")
bad("fit.dtype", lambda _: _fit(lambda p: (p ** 2).sum(), torch.zeros(2, requires_grad=True)),
    FitError, "parameter 0 has dtype torch.float32, fit expected torch.float64")
bad("fit.max_iter", lambda _: _fit(lambda p: (p ** 2).sum(), max_iter=-1), FitError,
    "need max_iter >= 0 and tol >= 0")
bad("fit.tol_text", lambda _: _fit(lambda p: (p ** 2).sum(), tol="tight"), FitError,
    "need max_iter >= 0 and tol >= 0")
bad("fit.lr_negative", lambda _: _fit(lambda p: (p ** 2).sum(), method="adam", lr=-1.0),
    FitError, "lr must be a finite number > 0, got -1.0")
bad("fit.non_scalar_loss", lambda _: _fit(lambda p: p ** 2), FitError,
    "loss_fn must return a scalar tensor")
bad("fit.nan_loss", lambda _: _fit(lambda p: (p * NAN).sum()), NonFiniteLossError,
    "not finite at iteration 0")
bad("fit.require_convergence",
    lambda _: _fit(lambda p: ((p - 1) ** 2).sum(), method="adam", lr=1e-3, max_iter=2, require_convergence=True),
    NotConvergedError, "fit did not converge: final gradient norm")
bad("fit.weighted_sum_shapes", lambda _: weighted_sum(torch.ones(3), torch.ones(2)), FitError,
    "losses shape (3,) differs from weight shape (2,)")

# ============================================================================= policies
bad("policies.tabular_no_states", lambda _: TabularPolicy(0, 2), PolicyInputError,
    "n_states and n_actions must be integers >= 1")
bad("policies.tabular_sizes_text", lambda _: TabularPolicy("four", 2), PolicyInputError,
    "n_states and n_actions must be integers >= 1, got 'four', 2")
bad("policies.tabular_init_scale", lambda _: TabularPolicy(2, 2, init_scale=-1.0), PolicyInputError,
    "init_scale must be >= 0")
bad("policies.tabular_logits_shape", lambda _: TabularPolicy(2, 2, logits=torch.zeros(3, 2, dtype=torch.float64)),
    PolicyInputError, "logits must have shape (2, 2)")
bad("policies.tabular_state_range", lambda _: TabularPolicy(2, 2).log_probs(torch.tensor([0, 5])), PolicyInputError,
    "states out of range [0, 2)")
bad("policies.tabular_float_states", lambda _: TabularPolicy(2, 2).log_probs(torch.tensor([0.0, 1.0])),
    PolicyInputError, "must be integer ids")
bad("policies.mlp_input", lambda _: MLPPolicy(2, 2, input="image"), PolicyInputError,
    "input must be 'onehot' or 'embedding'")
bad("policies.mlp_activation", lambda _: MLPPolicy(2, 2, activation="gelu"), PolicyInputError,
    "activation must be 'tanh' or 'relu'")
bad("policies.mlp_classes_missing", lambda _: MLPPolicy(2, 2, n_classes=2).log_probs(torch.tensor([0, 1])),
    PolicyInputError, "pass classes=")

# ============================================================================= proofs (numpy answer keys)
REF = np.full((1, 3), 1 / 3)


def _pairs(context, chosen, rejected, weight):
    return PreferenceData(context=[context], chosen=[chosen], rejected=[rejected], weight=[weight], n_contexts=1,
                          n_arms=3)


def _win_table(x, i, j, weight):
    W = np.zeros((1, 3, 3))
    W[x, i, j] = weight
    return W


bad("proofs.pair_table.tuples", lambda _: proofs.pair_table([(0, 0, 1, 1.0)], 1, 3), ProofInputError,
    "pairs must be a mdpalign.data.PreferenceData or an (X, K, K) win table; got list")
bad("proofs.as_log_policy.both", lambda _: proofs.as_log_policy(REF, log_probs=np.log(REF)), ProofInputError,
    "give exactly one of probs= or log_probs=")
bad("proofs.as_log_policy.negative", lambda _: proofs.as_log_policy(np.array([[1.5, -0.5]])), ProofInputError,
    "probs has negative entries")
bad("proofs.as_log_policy.unnormalised", lambda _: proofs.as_log_policy(log_probs=np.zeros((1, 2))), ProofInputError,
    "row 0 has total probability")
bad("proofs.pair_table.self_comparison", lambda _: proofs.pair_table(_win_table(0, 1, 1, 1.0), 1, 3),
    ProofInputError, "win table compares arm 1 with itself in context 0")
bad("proofs.pair_table.index", lambda _: proofs.pair_table(_pairs(0, 0, 5, 1.0), 1, 3), DataError,
    "rejected holds values outside [0, 3) at rows [0]")
bad("proofs.pair_table.weight", lambda _: proofs.pair_table(_win_table(0, 0, 1, -1.0), 1, 3), ProofInputError,
    "win table must be finite and >= 0")
bad("proofs.dpo_optimum.beta", lambda _: proofs.dpo_optimum(REF, _pairs(0, 0, 1, 1.0), beta=0.0), ProofInputError,
    "beta must be a finite number > 0, got 0.0")
bad("proofs.kl_rl_optimum.ref_sum", lambda _: proofs.kl_rl_optimum(np.zeros((1, 3)), np.full((1, 3), 0.3), 1.0),
    ProofInputError, "row 0 sums to")
bad("proofs.kl_rl_optimum.rewards_shape", lambda _: proofs.kl_rl_optimum(np.zeros((1, 2)), REF, 1.0),
    ProofInputError, "rewards has shape (1, 2), ref_policy has shape (1, 3)")
bad("proofs.check.tol", lambda _: proofs.kl_rl_optimum(np.zeros((1, 3)), REF, 1.0).check(probs=REF, tol=-1.0),
    ProofInputError, "tol must be a finite number >= 0, got -1.0")
bad("proofs.check.shape", lambda _: proofs.kl_rl_optimum(np.zeros((1, 3)), REF, 1.0).check(probs=np.full((1, 2), .5)),
    ProofInputError, "the problem has shape (1, 3)")
bad("proofs.sft_optimum.empty", lambda _: proofs.sft_optimum(np.zeros((1, 3))), ProofInputError,
    "demonstrations carry zero total weight")
bad("proofs.dpo_two_arm.p", lambda _: proofs.dpo_two_arm_log_ratio(1.0, 0.1), ProofInputError,
    "p must be in (0, 1) for a finite optimum")
bad("proofs.best_of_n.n", lambda _: proofs.best_of_n_policy(np.zeros((1, 3)), REF, 0), ProofInputError,
    "n must be an integer >= 1")
bad("proofs.best_of_n.ties", lambda _: proofs.best_of_n_win_rate(np.zeros((1, 3)), REF, 2, ties="random"),
    ProofInputError, "ties must be 'half' or 'strict'")
bad("proofs.grpo.group_size", lambda _: proofs.grpo_expected_advantage(np.zeros((1, 3)), REF, 1), ProofInputError,
    "group_size must be an integer >= 2")
bad("proofs.grpo.kl", lambda _: proofs.grpo_optimum(np.zeros((1, 3)), REF, 0.1, 2, kl="k2_reward"), ProofInputError,
    "kl must be one of")
bad("proofs.nash.not_a_preference", lambda _: proofs.regularised_nash_optimum(np.full((3, 3), 0.9), REF, 0.1),
    ProofInputError, "P(i > j) + P(j > i) = 1")
bad("proofs.online_rl.estimator", lambda _: proofs.kl_effective_penalty("k5", "reward", np.zeros(3)), ProofInputError,
    "estimator must be one of")
bad("proofs.online_rl.placement", lambda _: proofs.kl_effective_penalty("k1", "advantage", np.zeros(3)),
    ProofInputError, "placement must be one of")
bad("proofs.reward_model.gauge",
    lambda _: proofs.bradley_terry_reward_optimum(np.array([[0.0, 2.0], [1.0, 0.0]]), gauge="median"),
    ProofInputError, "gauge must be one of")
bad("proofs.reward_model.diagonal", lambda _: proofs.bradley_terry_reward_optimum(np.eye(2)), ProofInputError,
    "compared with itself")
bad("proofs.token_tree_online.kl", lambda _: proofs.token_tree_local_kl_optimum(None, 0.1, kl="forward"),
    ProofInputError, "kl must be one of")

bad("proofs.ref_policy_text", lambda _: proofs.dpo_optimum("uniform", _pairs(0, 0, 1, 1.0), 0.1), ProofInputError,
    "ref_policy must be a rectangular array of numbers")
bad("proofs.ref_policy_ragged", lambda _: proofs.kl_rl_optimum(np.zeros((2, 2)), [[0.5, 0.5], [1.0]], 1.0),
    ProofInputError, "ref_policy must be a rectangular array of numbers")
bad("proofs.rewards_text", lambda _: proofs.greedy_limit("high", REF), ProofInputError,
    "rewards must be a rectangular array of numbers")
bad("proofs.win_matrix_text", lambda _: proofs.bradley_terry_scores("x"), ProofInputError,
    "W must be a rectangular array of numbers")
bad("proofs.beta_text", lambda _: proofs.dpo_optimum(REF, _pairs(0, 0, 1, 1.0), "small"), ProofInputError,
    "beta must be a number, got 'small'")
bad("proofs.check.tol_text", lambda _: proofs.kl_rl_optimum(np.zeros((1, 3)), REF, 1.0).check(probs=REF, tol="x"),
    ProofInputError, "tol must be a number, got 'x'")
bad("proofs.pair_table.n_contexts", lambda _: proofs.pair_table(_pairs(0, 0, 1, 1.0), "one", 3), ProofInputError,
    "n_contexts must be an integer >= 1, got 'one'")
bad("proofs.reward_model_loss.scores_shape",
    lambda _: proofs.reward_model_loss(np.array([[0.0, 2.0], [1.0, 0.0]]), np.zeros(3)), ProofInputError,
    "scores must have one entry per response of W, shape (1, 2)")
bad("proofs.as_log_policy.ragged", lambda _: proofs.as_log_policy([[0.5, 0.5], [1.0]]), ProofInputError,
    "probs must be a rectangular array of numbers")

# ============================================================================= bench options (Python config)
bad("bench.config.seeds_zero", lambda _: FrozenLakeConfig(seeds=0), BenchConfigError,
    "seeds must be a positive integer")
bad("bench.config.steps_text", lambda _: FrozenLakeConfig(steps="many"), BenchConfigError,
    "steps must be a positive integer")
bad("bench.config.steps_none", lambda _: FrozenLakeConfig(steps=None), BenchConfigError,
    "steps must be a positive integer; got None")
bad("bench.config.eval_every", lambda _: FrozenLakeConfig(steps=5, eval_every=10), BenchConfigError,
    "eval_every (10) is larger than steps (5)")
bad("bench.config.suboptimal", lambda _: FrozenLakeConfig(suboptimal="shorter"), BenchConfigError,
    "suboptimal must be 'longer' or 'hole'")
bad("bench.config.gamma_1", lambda _: FrozenLakeConfig(gamma=1.0), BenchConfigError, "gamma must lie in (0, 1)")
bad("bench.config.gamma_text", lambda _: FrozenLakeConfig(gamma="high"), BenchConfigError,
    "gamma must lie in (0, 1) (paths are ranked by discounting); got 'high'")
bad("bench.config.methods_unknown", lambda _: FrozenLakeConfig(methods=("sft", "rlhf")), BenchConfigError,
    "unknown methods 'rlhf'")
bad("bench.config.methods_empty", lambda _: FrozenLakeConfig(methods=()), BenchConfigError, "methods is empty")
bad("bench.config.methods_twice", lambda _: FrozenLakeConfig(methods="sft,SFT"), BenchConfigError,
    "lists ['sft'] twice")
bad("bench.config.map_empty", lambda _: FrozenLakeConfig(map=" "), BenchConfigError, "map must be 'two-path'")
bad("bench.config.base", lambda _: FrozenLakeConfig(base="greedy"), BenchConfigError,
    "base must be 'uniform' or 'eps-greedy'")
bad("bench.config.ift_lambda", lambda _: FrozenLakeConfig(ift_lambda=1.0), BenchConfigError,
    "ift_lambda must lie in [0, 1)")
bad("bench.config.crlft_weights", lambda _: FrozenLakeConfig(crlft_weights=(1.0, 0.1, 0.01)), BenchConfigError,
    "crlft_weights must be two positive numbers")
bad("bench.config.lr_nan", lambda _: FrozenLakeConfig(lr=NAN), BenchConfigError, "lr must be a positive finite number")
bad("bench.config.seed_negative", lambda _: FrozenLakeConfig(seed=-1), BenchConfigError,
    "seed must be an integer with 0 <= seed and seed + seeds - 1")
bad("bench.config.base_epsilon_text", lambda _: FrozenLakeConfig(base_epsilon="x"), BenchConfigError,
    "base_epsilon must lie in (0, 1]")
bad("bench.config.crlft_weights_text", lambda _: FrozenLakeConfig(crlft_weights="ab"), BenchConfigError,
    "crlft_weights must be two positive numbers")
bad("bench.config.methods_not_names", lambda _: FrozenLakeConfig(methods=5), BenchConfigError,
    "methods must be comma-separated names or a sequence of them")
bad("bench.config.bandit_beta_text", lambda _: BanditsConfig(beta="x"), BenchConfigError,
    "beta must be a positive finite number; got 'x'")
bad("bench.config.bandit_fraction_text", lambda _: BanditsConfig(expert_fraction="half"), BenchConfigError,
    "expert_fraction must lie in (0, 1)")
bad("bench.config.bandit_arms", lambda _: BanditsConfig(arms=1), BenchConfigError, "arms must be at least 2")
bad("bench.config.bandit_fraction", lambda _: BanditsConfig(partial_fraction=1.0), BenchConfigError,
    "partial_fraction must lie in (0, 1)")
bad("bench.config.bandit_regimes", lambda _: BanditsConfig(regimes=("everything",)), BenchConfigError,
    "unknown regimes 'everything'")

# ============================================================================= mdpalign solve
SOLVE = ["solve", "frozen-lake"]
cli("cli.solve.map_name", [*SOLVE, "--map", "16x16"], "--map must be '4x4', '8x8' or comma-separated rows")
cli("cli.solve.map_letter", [*SOLVE, "--map", "SFX,FFG"],
    "comma-separated rows over S,F,H,G (e.g. SFFF,FHFH,FFFH,HFFG); got 'SFX,FFG'")
cli("cli.solve.map_no_goal", [*SOLVE, "--map", "SFF,FFF"], "has no goal cell 'G'")
cli("cli.solve.gamma_above_1", [*SOLVE, "--gamma", "1.5"], "argument --gamma: must lie in [0, 1], got 1.5")
cli("cli.solve.gamma_text", [*SOLVE, "--gamma", "abc"], "argument --gamma: expected a number in [0, 1], got 'abc'")
cli("cli.solve.horizon_negative", [*SOLVE, "--horizon", "-1"], "argument --horizon: must be a non-negative integer")
cli("cli.solve.horizon_memory", [*SOLVE, "--horizon", str(10**15)], "--horizon 1000000000000000 needs about")
cli("cli.solve.method", [*SOLVE, "--method", "dp"], "argument --method: invalid choice: 'dp'")
cli("cli.solve.soft_without_beta", [*SOLVE, "--method", "soft"], "--method soft needs --beta")
cli("cli.solve.beta_without_soft", [*SOLVE, "--beta", "0.1"], "--beta only applies to --method soft")
cli("cli.solve.beta_zero", [*SOLVE, "--method", "soft", "--beta", "0"], "argument --beta: must be a positive finite")
cli("cli.solve.soft_horizon", [*SOLVE, "--method", "soft", "--beta", "1", "--horizon", "3"],
    "--horizon is solved by backward induction; it does not combine with --method soft")
cli("cli.solve.tol_nan", [*SOLVE, "--tol", "nan"], "argument --tol: must be a positive finite number")
cli("cli.solve.problem", ["solve", "mountain-car"], "invalid choice: 'mountain-car'")
cli("cli.solve.map_empty_rows", [*SOLVE, "--map", ",,"], "argument --map: --map must be '4x4', '8x8' or "
    "comma-separated rows over S,F,H,G (e.g. SFFF,FHFH,FFFH,HFFG); got ',,'")
cli("cli.solve.goal_unreachable", [*SOLVE, "--map", "SH,HG"], "no path of frozen cells leads from S to G")
cli("cli.no_command", [], "the following arguments are required")
cli("cli.unknown_command", ["deploy"], "invalid choice: 'deploy'")

# ============================================================================= mdpalign bench
FL = ["bench", "frozen-lake", "--quiet"]
BD = ["bench", "bandits", "--quiet"]


def _out(tmp: Path, kind: str) -> str:
    if kind == "file":
        (tmp / "file").write_text("someone's file")
        return str(tmp / "file" / "report")
    if kind == "foreign":
        (tmp / "thesis").mkdir()
        (tmp / "thesis" / "thesis.tex").write_text("three years of work")
        return str(tmp / "thesis")
    raise AssertionError(kind)


cli("cli.bench.seeds_zero", [*FL, "--seeds", "0"], "argument --seeds: must be a positive integer, got 0")
cli("cli.bench.steps_text", [*FL, "--steps", "x"], "argument --steps: expected a positive integer, got 'x'")
cli("cli.bench.eval_every", [*FL, "--steps", "2", "--eval-every", "5"], "--eval-every (5) is larger than --steps (2)")
cli("cli.bench.methods", [*FL, "--methods", "sft,rlhf"], "unknown methods 'rlhf'")
cli("cli.bench.methods_empty", [*FL, "--methods", ",,"], "--methods is empty")
cli("cli.bench.gamma_1", [*FL, "--gamma", "1.0"], "--gamma must lie in (0, 1)")
cli("cli.bench.gamma_text", [*FL, "--gamma", "abc"], "argument --gamma: invalid float value: 'abc'")
cli("cli.bench.map", [*FL, "--map", "SFX,FFG"], "--map 'SFX,FFG' cannot be used: map 'SFX/FFG': row 0")
cli("cli.bench.map_one_path", [*FL, "--map", "SFG"], "has only one trajectory")
cli("cli.bench.suboptimal", [*FL, "--suboptimal", "shorter"], "argument --suboptimal: invalid choice: 'shorter'")
cli("cli.bench.beta_star", [*FL, "--beta-star", "0"], "argument --beta-star: must be a positive finite number")
cli("cli.bench.lr_inf", [*FL, "--lr", "inf"], "argument --lr: must be a positive finite number")
cli("cli.bench.seed_too_large", [*FL, "--seed", str(2**63)],
    "--seed must be an integer with 0 <= --seed and --seed + --seeds - 1 <= 2**63 - 1")
cli("cli.bench.out_empty", [*FL, "--out", ""], "--out is empty")
cli("cli.bench.out_cwd", lambda tmp: [*FL, "--out", str(Path.cwd())], "is the current directory")
cli("cli.bench.out_root", [*FL, "--out", "/"], "--out '/' is the root directory")
cli("cli.bench.out_under_a_file", lambda tmp: [*FL, "--out", _out(tmp, "file")], "is a file, not a directory")
cli("cli.bench.out_foreign_dir", lambda tmp: [*FL, "--out", _out(tmp, "foreign")], "is not an mdpalign report")
cli("cli.bench.out_proc", [*FL, "--out", "/proc/report"], "cannot write into /proc")
cli("cli.bench.map_empty_rows", [*FL, "--map", ",,"], "is empty")
cli("cli.bench.arms", [*BD, "--arms", "1"], "--arms must be at least 2")
cli("cli.bench.objectives", [*BD, "--objectives", "ppo"], "unknown objectives 'ppo'")
cli("cli.bench.regimes", [*BD, "--regimes", "everything"], "unknown regimes 'everything'")
cli("cli.bench.objectives_twice", [*BD, "--objectives", "SFT,sft"], "lists ['sft'] twice")
cli("cli.bench.experiment", ["bench", "mujoco"], "invalid choice: 'mujoco'")

# ============================================================================= mdpalign train (config checks only)


def _train(tmp: Path, *extra: str, config: str | None = None) -> list[str]:
    argv = ["train"]
    if config is not None:
        path = tmp / "run.yaml"
        path.write_text(config)
        argv += ["--config", str(path)]
    return argv + ["--use_cpu", "true", "--report_to", "none", "--output_dir", str(tmp / "run"), *extra]


def _model_dir(tmp: Path, config: Any = None, name: str = "model") -> str:
    """A directory that looks like a model to the path checks (never loaded)."""
    path = tmp / name
    path.mkdir(exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


def _jsonl(tmp: Path, rows: list, name: str = "data.jsonl") -> str:
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIR = {"prompt": "a", "chosen": "b", "rejected": "c"}
cli("cli.train.config_missing", lambda tmp: ["train", "--config", str(tmp / "missing.yaml")], "config file not found")
cli("cli.train.config_yaml", lambda tmp: _train(tmp, config="objective: [dpo\n"), "not valid YAML")
cli("cli.train.config_list", lambda tmp: _train(tmp, config="- objective\n- dpo\n"),
    "expected a mapping of field: value")
cli("cli.train.config_unknown_key", lambda tmp: _train(tmp, config="objectiv: dpo\n"), "unknown keys ['objectiv']")
cli("cli.train.config_type", lambda tmp: _train(tmp, config="max_steps: 1.5\n"), "max_steps must be int, got float 1.5")
cli("cli.train.config_not_utf8", lambda tmp: ["train", "--config", str(_text(tmp, "run.yaml", b"\xff\xfe: 1\n"))],
    "run.yaml: not UTF-8 text")
cli("cli.train.config_nan", lambda tmp: _train(tmp, config="beta: .nan\n"), "beta must be a finite number > 0, got nan")
cli("cli.train.value_type", lambda tmp: _train(tmp, "--beta", "abc"), "argument --beta: invalid float value: 'abc'")
cli("cli.train.objective", lambda tmp: _train(tmp, "--objective", "ppo"), "unknown objective 'ppo'")
cli("cli.train.unknown_option", lambda tmp: _train(tmp, "--bogus", "1"), "unknown options ['--bogus', '1']")
cli("cli.train.beta", lambda tmp: _train(tmp, "--beta", "-1"), "beta must be a finite number > 0")
cli("cli.train.label_smoothing", lambda tmp: _train(tmp, "--label_smoothing", "0.6"),
    "label_smoothing must be in [0, 0.5)")
cli("cli.train.max_length", lambda tmp: _train(tmp, "--max_length", "1"), "max_length must be >= 2")
cli("cli.train.crlft_weights", lambda tmp: _train(tmp, "--objective", "crlft"),
    "objective 'crlft' needs crlft_class_weights or crlft_weight_column")
cli("cli.train.model_not_set", lambda tmp: _train(tmp), "model_name_or_path is not set")
cli("cli.train.adapter_reference", lambda tmp: _train(tmp, "--objective", "dpo", "--reference", "adapter_disabled"),
    "reference='adapter_disabled' needs use_peft=true")
cli("cli.train.num_generations", lambda tmp: _train(tmp, "--objective", "grpo", "--num_generations", "1"),
    "num_generations must be an integer >=")
cli("cli.train.top_p", lambda tmp: _train(tmp, "--objective", "grpo", "--top_p", "1.5"), "top_p must be in (0, 1]")
cli("cli.train.training_arguments", lambda tmp: _train(tmp, "--save_strategy", "steps", "--load_best_model_at_end",
                                                       "true"),
    "TrainingArguments: ")
cli("cli.train.crlft_weights_json", lambda tmp: _train(tmp, "--objective", "crlft", "--crlft_class_weights", "{bad"),
    "crlft_class_weights must be a mapping or a JSON object string")
cli("cli.train.torch_dtype", lambda tmp: _train(tmp, "--torch_dtype", "float8"), "unknown torch_dtype 'float8'")
cli("cli.train.group_batch", lambda tmp: _train(tmp, "--objective", "grpo", "--num_generations", "2",
                                                "--per_device_train_batch_size", "3"),
    "per_device_train_batch_size (3) counts completions and must be a multiple of num_generations (2)")
cli("cli.train.reward_with_reference", lambda tmp: _train(tmp, "--objective", "reward", "--ref_model_name_or_path",
                                                          _model_dir(tmp, CAUSAL)),
    "ref_model_name_or_path is set, but a reward model is trained without a reference model")
cli("cli.train.model_without_tokenizer",
    lambda tmp: _train(tmp, "--model_name_or_path", _model_dir(tmp, CAUSAL), "--dataset_path", _jsonl(tmp, [PAIR])),
    "cannot load a tokenizer from it")
cli("cli.train.model_missing", lambda tmp: _train(tmp, "--model_name_or_path", str(tmp / "nope"), "--dataset_path",
                                                  _jsonl(tmp, [PAIR])),
    "no such directory (and not a hub id such as org/name)")
cli("cli.train.model_is_a_file", lambda tmp: _train(tmp, "--model_name_or_path", _jsonl(tmp, [PAIR]),
                                                    "--dataset_path", _jsonl(tmp, [PAIR])),
    "is a file; expected a model directory")
cli("cli.train.dataset_missing", lambda tmp: _train(tmp, "--model_name_or_path", _model_dir(tmp), "--dataset_path",
                                                    str(tmp / "nope.jsonl")),
    "nope.jsonl': no such file or directory")
cli("cli.train.model_dir_without_config",
    lambda tmp: _train(tmp, "--model_name_or_path", _model_dir(tmp), "--dataset_path", _jsonl(tmp, [PAIR])),
    "has no config.json (nor adapter_config.json): not a model directory")
cli("cli.train.checkpoint_missing",
    lambda tmp: _train(tmp, "--model_name_or_path", _model_dir(tmp), "--dataset_path", _jsonl(tmp, [PAIR]),
                       "--resume_from_checkpoint", str(tmp / "checkpoint-9")),
    "checkpoint-9': no such checkpoint directory")

# ===================================================================== mdpalign eval reward (before any model loads)
CAUSAL = {"architectures": ["LlamaForCausalLM"]}


def _eval(tmp: Path, data: str, model_config: Any = CAUSAL, ref: bool = True) -> list[str]:
    argv = ["eval", "reward", "--model", _model_dir(tmp, model_config), "--data", data]
    return argv + (["--ref-model", _model_dir(tmp, CAUSAL, "ref")] if ref else [])


cli("cli.eval.model_missing", lambda tmp: ["eval", "reward", "--model", str(tmp / "nope"), "--data", "x.jsonl"],
    "no such model directory")
cli("cli.eval.model_no_config", lambda tmp: _eval(tmp, "x.jsonl", model_config=None), "no config.json")
cli("cli.eval.model_config_not_json", lambda tmp: _eval(tmp, "x.jsonl", model_config="{not json"),
    "config.json is not valid JSON")
cli("cli.eval.model_architecture", lambda tmp: _eval(tmp, "x.jsonl", model_config={"architectures": ["BertModel"]}),
    "are neither a sequence classifier")
cli("cli.eval.classifier_labels",
    lambda tmp: _eval(tmp, "x.jsonl", model_config={"architectures": ["LlamaForSequenceClassification"],
                                                    "num_labels": 3}, ref=False),
    "a sequence classifier with 3 outputs")
cli("cli.eval.causal_without_ref", lambda tmp: _eval(tmp, "x.jsonl", ref=False), "pass its reference with --ref-model")
cli("cli.eval.data_missing", lambda tmp: _eval(tmp, str(tmp / "missing.jsonl")), "no such file or directory")
cli("cli.eval.data_bad_jsonl", lambda tmp: _eval(tmp, str(_text(tmp, "d.jsonl", '{"prompt": "a"}\n{oops\n'))),
    "d.jsonl:2: not valid JSON")
cli("cli.eval.data_bad_json", lambda tmp: _eval(tmp, str(_text(tmp, "d.json", '[{"prompt": "a"'))), "not valid JSON")
cli("cli.eval.subset_missing",
    lambda tmp: _eval(tmp, _jsonl(tmp, [{**PAIR, "subset": "chat"}, PAIR])), "row 1 has no 'subset' value")
cli("cli.eval.adapter_task",
    lambda tmp: ["eval", "reward", "--model", _adapter(tmp, "SEQ_2_SEQ_LM"), "--data", _jsonl(tmp, [PAIR])],
    "a PEFT adapter of task 'SEQ_2_SEQ_LM'; expected SEQ_CLS")
cli("cli.eval.adapter_without_base",
    lambda tmp: ["eval", "reward", "--model", _adapter(tmp, "CAUSAL_LM", base=None), "--data", _jsonl(tmp, [PAIR])],
    "adapter_config.json names no base_model_name_or_path")
cli("cli.eval.ref_is_a_reward_model",
    lambda tmp: ["eval", "reward", "--model", _model_dir(tmp, CAUSAL), "--ref-model",
                 _model_dir(tmp, {"architectures": ["LlamaForSequenceClassification"], "num_labels": 1}, "rm"),
                 "--data", _jsonl(tmp, [PAIR])],
    "is a reward model; the reference of an implicit reward is a causal LM")
cli("cli.eval.reward_model_with_ref",
    lambda tmp: ["eval", "reward", "--model",
                 _model_dir(tmp, {"architectures": ["LlamaForSequenceClassification"], "num_labels": 1}),
                 "--ref-model", _model_dir(tmp, CAUSAL, "ref"), "--data", _jsonl(tmp, [PAIR])],
    "remove --ref-model")
cli("cli.eval.data_dir_not_a_dataset", lambda tmp: _eval(tmp, str(_empty_dir(tmp))), "is neither a `Dataset` directory")
cli("cli.eval.data_csv", lambda tmp: _eval(tmp, str(_text(tmp, "d.csv", "prompt,chosen\n"))), "unsupported file type")
cli("cli.eval.dtype", lambda tmp: _eval(tmp, "x.jsonl") + ["--dtype", "int8"],
    "argument --dtype: invalid choice: 'int8'")
cli("cli.eval.no_kind", ["eval"], "the following arguments are required")
cli("cli.eval.batch_size", lambda tmp: _eval(tmp, "x.jsonl") + ["--batch-size", "0"],
    "argument --batch-size: must be a positive integer")


def _adapter(tmp: Path, task: str, base: str | None = "org/base") -> str:
    path = tmp / "adapter"
    path.mkdir()
    info = {"task_type": task, **({"base_model_name_or_path": base} if base else {})}
    (path / "adapter_config.json").write_text(json.dumps(info))
    return str(path)


def _empty_dir(tmp: Path) -> Path:
    (tmp / "saved").mkdir()
    return tmp / "saved"


def _text(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path

# ========================================================================= llm data files (mdpalign.llm_bridge.data)


def _load(path) -> Any:
    from mdpalign.llm_bridge.data import load_records

    return load_records(str(path))


def _tokenize(rows: list, objective: str = "dpo", **settings) -> Any:
    from llm_fixtures import build_tokenizer

    from mdpalign.llm_bridge.data import TokenizeSettings, tokenize_records

    return tokenize_records(rows, build_tokenizer(), TokenizeSettings(objective, **settings))


def _tokenize_reward(rows: list, max_length: int | None = None) -> Any:
    from llm_fixtures import build_tokenizer

    from mdpalign.llm_bridge.reward_data import tokenize_reward_records

    return tokenize_reward_records(rows, build_tokenizer(), max_length)


def _data_error(name: str) -> type:
    from mdpalign.llm_bridge import data

    return getattr(data, name)


class _Lazy:
    """An error class imported only when its row runs (transformers and datasets load on first use)."""

    def __init__(self, name: str):
        self.name = name

    def resolve(self) -> type:
        return _data_error(self.name)


DatasetError, EmptyDatasetError, MissingColumnsError = (_Lazy(n) for n in
                                                        ("DatasetError", "EmptyDatasetError", "MissingColumnsError"))
bad("llm.data.missing", lambda tmp: _load(tmp / "nope.jsonl"), DatasetError, "dataset_path does not exist")
bad("llm.data.bad_jsonl_line", lambda tmp: _load(_text(tmp, "d.jsonl", '{"prompt": "a"}\n{"prompt": \n')),
    DatasetError, "d.jsonl:2: not valid JSON")
bad("llm.data.bad_json", lambda tmp: _load(_text(tmp, "d.json", "[{,]")), DatasetError, "not valid JSON")
bad("llm.data.json_not_a_list", lambda tmp: _load(_text(tmp, "d.json", '{"rows": []}')), DatasetError,
    "expected a JSON list of rows")
bad("llm.data.bad_parquet", lambda tmp: _load(_text(tmp, "d.parquet", b"PAR1 not really")), DatasetError,
    "not a valid parquet file")
bad("llm.data.not_utf8", lambda tmp: _load(_text(tmp, "d.jsonl", b'{"prompt": "\xff\xfe"}\n')), DatasetError,
    "UTF-8")
bad("llm.data.file_type", lambda tmp: _load(_text(tmp, "d.csv", "prompt,completion\n")), DatasetError,
    "unsupported file type")
bad("llm.data.empty", lambda tmp: _load(_text(tmp, "d.jsonl", "\n")), EmptyDatasetError, "the dataset is empty")
bad("llm.data.row_not_object", lambda tmp: _load(_text(tmp, "d.jsonl", '["a", "b"]\n')), DatasetError,
    "row 0 is a list, expected an object")
bad("llm.data.missing_columns", lambda _: _tokenize([{"prompt": "a", "chosen": "b"}]), MissingColumnsError,
    "objective 'dpo' needs columns 'chosen' and 'rejected'")
bad("llm.data.columns_differ", lambda _: _tokenize([PAIR, {"prompt": "a", "chosen": "b", "other": "c"}]),
    MissingColumnsError, "row 1 has different columns from row 0")
bad("llm.data.mixed_types", lambda _: _tokenize([{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}],
                                                  "rejected": "c"}]),
    DatasetError, "must both be strings or both be message lists")
bad("llm.data.weight_not_finite",
    lambda _: _tokenize([{"prompt": "a", "completion": "b", "w": NAN}], "crlft", weight_column="w"),
    DatasetError, "weight nan in column 'w' is not a finite")
bad("llm.data.class_without_weight",
    lambda _: _tokenize([{"prompt": "a", "completion": "b", "class": "gpt5"}], "crlft",
                        class_weights={"expert": 1.0}),
    DatasetError, "class 'gpt5' has no weight in crlft_class_weights")
bad("llm.data.last_message_not_assistant",
    lambda _: _tokenize([{"messages": [{"role": "user", "content": "hi"}]}], "sft"), DatasetError,
    "the last message must be the assistant's")
bad("llm.data.prompt_number", lambda _: _tokenize([{"prompt": 3, "completion": "a"}], "sft"), DatasetError,
    "example 0: prompt must be a string or a list of {role, content} messages, got int 3")
bad("llm.data.completion_null", lambda _: _tokenize([{"prompt": "a", "completion": None}], "sft"), DatasetError,
    "example 0: completion must be a string or a list of {role, content} messages, got NoneType None")
bad("llm.data.messages_empty", lambda _: _tokenize([{"messages": []}], "sft"), DatasetError,
    "'messages' must be a non-empty list of {role, content} dicts")
bad("llm.data.all_truncated", lambda _: _tokenize([{**PAIR, "prompt": "question: what is two plus two?"}],
                                                  max_length=3),
    EmptyDatasetError, "all 1 examples were dropped")
bad("llm.data.class_prefix_missing",
    lambda _: _tokenize([{"prompt": "a", "completion": "b", "class": "x"}], "crlft", class_weights={"x": 1.0},
                        class_prefixes={"y": "Y:"}),
    DatasetError, "class 'x' has no prefix in crlft_class_prefixes")
bad("llm.data.weight_column_missing",
    lambda _: _tokenize([{"prompt": "a", "completion": "b"}], "crlft", weight_column="w"), MissingColumnsError,
    "objective 'crlft' needs a class column 'class' or a weight column 'w'")
bad("llm.reward_data.missing_columns", lambda _: _tokenize_reward([{"prompt": "a", "chosen": "b"}]),
    MissingColumnsError, "objective 'reward' needs columns 'chosen' and 'rejected'")
bad("llm.reward_data.margin", lambda _: _tokenize_reward([{**PAIR, "margin": "big"}]), DatasetError,
    "margin 'big' in column 'margin' is not a finite number")

bad("llm.reward_data.too_long", lambda _: _tokenize_reward([PAIR], max_length=2), EmptyDatasetError,
    "preference pairs are longer than max_length=2 tokens")
bad("llm.reward_data.chosen_number", lambda _: _tokenize_reward([{"chosen": 1, "rejected": "b"}]), DatasetError,
    "'chosen' must be a string or a list of {role, content} messages, got int 1")

# ============================================================================= the checks

HEAVY = ("cli.train.", "cli.eval.", "llm.")  # rows that need transformers (an optional dependency)
IDS = [case.id for case in CASES]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if re.match(r"^mdpalign[\w -]*: error: ", line)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_bad_input_gets_a_clear_error(case: Bad, tmp_path, capsys, monkeypatch):
    if case.id.startswith(HEAVY):
        pytest.importorskip("transformers")
    monkeypatch.delenv("MDPALIGN_TRACEBACK", raising=False)
    if case.error == EXIT_2:
        monkeypatch.chdir(tmp_path)  # relative paths (and --out .) stay in this test's directory
        argv = case.make(tmp_path)
        with pytest.raises(SystemExit) as exc:
            main(argv)
        captured = capsys.readouterr()
        assert exc.value.code == EXIT_2, captured.err
        assert captured.out == "" and "Traceback" not in captured.err
        message = _error_line(captured.err)
    else:
        error = case.error.resolve() if isinstance(case.error, _Lazy) else case.error
        assert issubclass(error, MdpalignError)
        with pytest.raises(error) as exc:
            case.make(tmp_path)
        message = str(exc.value)
        assert "\n" not in message.strip(), message
    assert case.phrase in message, message


def test_the_table_is_what_the_issue_asks_for():
    assert len(IDS) == len(set(IDS)), sorted({i for i in IDS if IDS.count(i) > 1})
    assert len(CASES) >= 113
    # every objective in mdpalign.objectives, online ones included, is fed at least one bad input
    losses = {name for name in obj.__all__ if callable(getattr(obj, name)) and not name[0].isupper()
              and not name.startswith(("check_", "as_bool", "log1mexp", "logp_rounding", "normalisation_tol",
                                       "batch_token_mean", "token_counts", "masked_token_values",
                                       "shift_mask_to_inputs", "causal_predicted", "successor_predicted",
                                       "ift_two_pass"))}
    covered = {case.id.split(".")[1] for case in CASES if case.id.startswith("objectives.")}
    assert losses <= covered, sorted(losses - covered)


def test_the_readme_states_the_count_of_this_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"(\d+) bad inputs tried: (\d+) clear errors", readme)
    assert found == [(str(len(CASES)), str(len(CASES)))], found
    assert "tests/test_bad_inputs.py" in readme
