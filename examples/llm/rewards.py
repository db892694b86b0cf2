"""Example reward functions for online RL (``reward_funcs: [examples/llm/rewards.py:target_word_fraction, ...]``).

Each has TRL's signature: ``f(prompts, completions, completion_ids, **columns) -> list[float]``, one finite number per
completion. ``completions`` are strings (or ``[{"role": "assistant", "content": ...}]`` for conversational prompts);
``columns`` are the dataset's other columns, one value per completion (here an optional ``target`` column), plus
``trainer_state``.
"""
from __future__ import annotations

TARGET = "blue"


def _text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


def target_word_fraction(prompts, completions, completion_ids, target=None, **_):
    """Fraction of the completion's words equal to the row's ``target`` (default ``"blue"``), in [0, 1]."""
    out = []
    for i, completion in enumerate(completions):
        words = _text(completion).split()
        word = target[i] if target is not None else TARGET
        out.append(sum(w.strip(".,;:!?").lower() == word for w in words) / len(words) if words else 0.0)
    return out


def length_penalty(prompts, completions, completion_ids, **_):
    """Minus the completion's length in tokens over 32: mildly prefers short answers."""
    return [-len(ids) / 32.0 for ids in completion_ids]
