"""Training harnesses: tabular policies trained through the library's own losses, exactly or by sampling.

:mod:`mdpalign.harness.online` — online RL (REINFORCE, RLOO, ReMax, PPO, GRPO, every KL placement) on bandits and
token trees: exact expected-update fields, certified fixed points, seeded sampled training.

:mod:`mdpalign.harness.offline` — the offline objectives (SFT, DPO/IPO/hinge, ORPO, C-RLFT, KL-RL, IFT) as exact
population losses of tabular problems (``*_loss_closure``: torch closures built from the public loss functions, not
to be confused with the numpy ``*_population_loss`` values of :mod:`mdpalign.proofs`), fitted and certified from the
final gradient.
"""
