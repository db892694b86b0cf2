"""Training harnesses: tabular policies trained through the library's own losses, exactly or by sampling.

:mod:`mdpalign.harness.online` — online RL (REINFORCE, RLOO, ReMax, PPO, GRPO, every KL placement) on bandits and
token trees: exact expected-update fields, certified fixed points, seeded sampled training. (The offline population
losses of :mod:`mdpalign.proofs.harness` are to move here in a later restructure.)
"""
