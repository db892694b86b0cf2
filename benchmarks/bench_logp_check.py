"""What the objectives' log-prob check (``check_logps=True``, the default) costs, on CPU.

    python benchmarks/bench_logp_check.py            # prints the Markdown table of benchmarks/results/logp_check.md

Times (best of 7 runs of 200 calls, one thread) on a (64, 2048) float32 batch with 70 % of tokens counted:
``sft_loss`` with and without the check, ``dpo_loss`` on 64 pairs with and without it, and the bare comparison
the token check runs. On a GPU the check's flag is read in the same host transfer as the empty-row check every
call makes anyway (no extra sync), so its cost there is a few element-wise kernels.
"""
from __future__ import annotations

import timeit

import torch

from mdpalign.objectives import dpo_loss, logp_rounding_tolerance, sft_loss

B, T = 64, 2048


def _best_us(fn, number: int = 200, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lp = -5 * torch.rand(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) < 0.7
    seq = -50 * torch.rand(4, B, generator=g)
    tol = logp_rounding_tolerance(lp.dtype)
    rows = [
        ("sft_loss, check_logps=True", lambda: sft_loss(lp, mask)),
        ("sft_loss, check_logps=False", lambda: sft_loss(lp, mask, check_logps=False)),
        ("the token check alone: (m & ~((x > -inf) & (x <= tol))).any()",
         lambda: bool((mask & ~((lp > float("-inf")) & (lp <= tol))).any())),
        ("torch.isfinite(x).all() alone", lambda: bool(torch.isfinite(lp).all())),
        ("dpo_loss (64 pairs), check_logps=True", lambda: dpo_loss(*seq)),
        ("dpo_loss (64 pairs), check_logps=False", lambda: dpo_loss(*seq, check_logps=False)),
    ]
    print(f"| call on ({B}, {T}) float32, CPU, 1 thread | µs per call |")
    print("|---|---|")
    for name, fn in rows:
        print(f"| {name} | {_best_us(fn):.0f} |")


if __name__ == "__main__":
    main()
