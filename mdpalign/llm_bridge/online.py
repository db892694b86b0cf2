"""What online RL needs besides the loss: prompts, seeded generation with the policy, rewards, step-sized samplers.

* **Prompts** (:func:`tokenize_prompts`): rows with a ``prompt`` column (a string, or a list of chat messages rendered
  with the tokenizer's chat template and ``add_generation_prompt=True``), as TRL's GRPO/RLOO trainers take them; every
  other column is passed to the reward functions, one value per completion.
* **Generation** (:func:`generate_completions`): ``transformers`` ``generate`` on left-padded prompts, every prompt
  repeated ``num_generations`` times, ``temperature`` / ``top_p`` / ``max_completion_length``. Sampling is
  *counter-based*: the Gumbel-max trick with noise that is a hash of ``(seed, generation round, completion index,
  position, token)`` (:class:`SeededSampling`), so ``argmax(z/T + g)`` is an exact draw from ``softmax(z/T)``
  (restricted to the top-p set; 24-bit uniforms, the resolution of float32 sampling) whose randomness does not
  depend on the batch it is generated in, on the process it runs on or on the device. A run split over two
  processes therefore samples the very completions one process samples, and a resumed run continues the same
  random stream (the round is a function of the step).
* **Rewards** (:func:`load_reward_funcs`, :func:`score_completions`): Python functions named ``module:function`` or
  ``path/to/file.py:function`` with TRL's signature ``f(prompts, completions, completion_ids, **columns) ->
  list[float]`` (TRL also passes ``trainer_state``; so does this), and reward-model directories (a sequence
  classifier with one output, scored on what ``objective: reward`` trains it on). A function that raises,
  returns the wrong number of rewards, or a ``None`` / nan / inf is a :class:`RewardFunctionError` naming the function
  and the prompt (TRL turns ``None`` into nan and drops the completion from the baseline).
* **Exact mode** (:func:`exact_completions`): every completion of exactly ``max_completion_length`` tokens over the
  whole vocabulary, for tests on tiny vocabularies (the trainer weights each group by its probability).
* :class:`StepSampler`: prompts in blocks of one optimizer step, each block repeated ``num_iterations`` times.
"""
from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mdpalign.errors import MdpalignError
from mdpalign.llm_bridge.data import DatasetError, EmptyDatasetError, MissingColumnsError, _render_ids

#: exact mode refuses to enumerate more batches (groups) than this per optimizer step
EXACT_MAX_BATCHES = 65536


class RewardFunctionError(MdpalignError, ValueError):
    """A reward function cannot be loaded, raised, or returned something other than one finite number per
    completion; the message names the function and the prompt."""


# ----------------------------------------------------------------------------- prompts


@dataclass
class PromptDataset(torch.utils.data.Dataset):
    """Tokenised prompts: examples ``{"index", "prompt_ids", "prompt", "columns"}`` (``prompt`` as given, ``columns``
    the row's other fields for the reward functions). ``preference`` is False (the trainer's data-kind check)."""

    examples: list[dict[str, Any]]
    preference: bool = False
    dropped: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def tokenize_prompts(rows: Sequence[dict], tokenizer, max_prompt_length: int | None = None,
                     max_length: int | None = None, max_completion_length: int = 1) -> PromptDataset:
    """Rows with a ``prompt`` column -> :class:`PromptDataset`. A prompt keeps its last ``max_prompt_length`` tokens,
    and at most ``max_length − max_completion_length`` (prompt + completion fit ``max_length``)."""
    if len(rows) == 0:
        raise EmptyDatasetError("the dataset is empty")
    if "prompt" not in rows[0]:
        raise MissingColumnsError(f"online RL needs a 'prompt' column (a string or a list of chat messages); found "
                                  f"{sorted(rows[0])}")
    keep = [n for n in (max_prompt_length, None if max_length is None else max_length - max_completion_length)
            if n is not None]
    examples = []
    for i, row in enumerate(rows):
        if set(row) != set(rows[0]):
            raise MissingColumnsError(f"row {i} has different columns from row 0: {sorted(row)} vs {sorted(rows[0])}")
        prompt = row["prompt"]
        if not (isinstance(prompt, str) or is_conversation(prompt)):
            raise DatasetError(f"example {i}: 'prompt' must be a string or a list of {{role, content}} messages, "
                               f"got {type(prompt).__name__}")
        ids = _render_ids(tokenizer, prompt, generation_prompt=True) if isinstance(prompt, list) else (
            _render_ids(tokenizer, prompt, generation_prompt=False))
        if keep:
            ids = ids[-min(keep):]
        if not ids:
            raise DatasetError(f"example {i}: the prompt {prompt!r} has no tokens (the first completion token needs "
                               "a context)")
        examples.append({"index": i, "prompt_ids": list(ids), "prompt": prompt,
                         "columns": {k: v for k, v in row.items() if k != "prompt"}})
    return PromptDataset(examples)


def prompt_collator(examples: list[dict]) -> dict[str, torch.Tensor]:
    """A batch of prompts is their dataset indices; the trainer looks the prompts up (accelerate moves tensors only)."""
    return {"index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}


class StepSampler(torch.utils.data.Sampler):
    """Prompt indices in blocks of ``block`` (one optimizer step's prompts over every process and micro-batch), each
    block repeated ``repeats`` times (``num_iterations``: the reuse steps read the same prompts), a fresh permutation
    per epoch from ``seed`` (``set_epoch``, which accelerate's prepared loader calls). An incomplete last block is
    dropped; a dataset smaller than one block is an error."""

    def __init__(self, n: int, block: int, repeats: int = 1, seed: int = 0, shuffle: bool = True):
        if n < block:
            raise DatasetError(f"the dataset has {n} prompts, fewer than one optimizer step uses ({block} = "
                               "per_device_train_batch_size / num_generations × gradient_accumulation_steps × "
                               "processes); use more prompts or a smaller batch")
        self.n, self.block, self.repeats, self.seed, self.shuffle = n, block, repeats, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (self.n // self.block) * self.block * self.repeats

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for b in range(self.n // self.block):
            chunk = order[b * self.block:(b + 1) * self.block]
            for _ in range(self.repeats):
                yield from chunk


# ----------------------------------------------------------------------------- counter-based sampling

_M32 = 0xFFFFFFFF
_MIX = (0x7FEB352D, 0x846CA68B)  # lowbias32's multipliers (C. Wellons, "Hash Prospector")


def mix32(x: int) -> int:
    """A 32-bit integer hash (``lowbias32``) of a Python int."""
    x &= _M32
    x ^= x >> 16
    x = (x * _MIX[0]) & _M32
    x ^= x >> 15
    x = (x * _MIX[1]) & _M32
    return x ^ (x >> 16)


def _signed32(c: int) -> int:
    return c - (1 << 32) if c >= 1 << 31 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (32 - k)) - 1)  # a logical shift of an int32 tensor (>> is arithmetic)


def mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """:func:`mix32` elementwise on an int32 tensor holding the bits of 32-bit values. int32 products wrap modulo 2³²
    on CPU and CUDA (checked against :func:`mix32` in the tests); five times cheaper than emulating it in int64."""
    x = x ^ _shr(x, 16)
    x = x * _signed32(_MIX[0])
    x = x ^ _shr(x, 15)
    x = x * _signed32(_MIX[1])
    return x ^ _shr(x, 16)


def _as_int32(values: torch.Tensor) -> torch.Tensor:
    v = values.to(torch.int64) & _M32
    return torch.where(v >= 1 << 31, v - (1 << 32), v).to(torch.int32)


def sample_key(seed: int, round_: int, index: int) -> int:
    """The random stream of completion ``index`` (its position in the optimizer step's global batch) of generation
    round ``round_`` of a run seeded ``seed``."""
    return mix32(mix32(mix32(seed) ^ mix32(round_ + 0x68E31DA4)) ^ mix32(index + 0x1B56C4E9))


def uniform_noise(keys: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """``u (N, vocab)`` float32 in (0, 1): 24 bits of the hash of (row key, position, token), independent of the
    batch. (24 bits: the resolution of a float32 uniform, as ``torch.multinomial`` on float32 probabilities.)"""
    base = mix32_tensor(_as_int32(keys) ^ _signed32(mix32(position + 0x2545F491)))             # (N,)
    tokens = mix32_tensor(_as_int32(torch.arange(vocab, device=keys.device) * 0x9E3779B9))     # (V,)
    h = mix32_tensor(base[:, None] ^ tokens[None, :])
    return (_shr(h, 8).float() + 0.5) / 16777216.0


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Bool ``(N, V)``: the smallest set of most probable tokens whose probability reaches ``top_p`` (at least one)."""
    if top_p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens
    keep_sorted = before < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class SeededSampling(LogitsProcessor):
    """Gumbel-max sampling as a logits processor for greedy ``generate``: ``scores/T`` outside the top-p set set to
    −inf, plus Gumbel noise ``−log(−log u)`` with ``u`` = :func:`uniform_noise` of each row's key and position.
    The argmax of the result is distributed as ``softmax(scores/T)`` renormalised on the top-p set (up to the 2⁻²⁴
    resolution of the uniforms)."""

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float = 1.0, top_p: float = 1.0):
        self.keys, self.prompt_width, self.temperature, self.top_p = keys, prompt_width, temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z = scores.float() / self.temperature
        z = z.masked_fill(~top_p_mask(z, self.top_p), float("-inf"))
        u = uniform_noise(self.keys.to(scores.device), input_ids.shape[1] - self.prompt_width, z.shape[-1])
        return z + -torch.log(-torch.log(u))


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return ids, mask


@torch.no_grad()
def generate_completions(model, prompts: list[list[int]], keys: list[int] | None, *, max_new_tokens: int,
                         pad_token_id: int, eos_token_ids: Sequence[int], temperature: float = 1.0,
                         top_p: float = 1.0, batch_size: int | None = None) -> list[list[int]]:
    """One completion per prompt row (repeat a prompt for a group), each cut after its first EOS (kept); ``keys``
    None: greedy decoding (ReMax's baseline). ``model`` is the unwrapped policy, put in eval mode by the caller."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    step = batch_size or len(prompts)
    eos = set(int(e) for e in eos_token_ids)
    for start in range(0, len(prompts), step):
        rows = prompts[start:start + step]
        ids, mask = left_pad(rows, pad_token_id, device)
        config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=None, do_sample=False, num_beams=1,
                                  pad_token_id=pad_token_id, eos_token_id=sorted(eos) or None, use_cache=True)
        processors = LogitsProcessorList()
        if keys is not None:
            k = torch.tensor(keys[start:start + step], dtype=torch.int64, device=device)
            processors.append(SeededSampling(k, ids.shape[1], temperature, top_p))
        gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             logits_processor=processors)
        for row in gen[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            out.append(row if cut is None else row[:cut + 1])
    return out


def exact_completions(vocab_size: int, length: int) -> list[list[int]]:
    """Every token sequence of exactly ``length`` tokens over ``range(vocab_size)``, in lexicographic order."""
    return [list(t) for t in itertools.product(range(vocab_size), repeat=length)]


def exact_groups(n: int, group_size: int) -> torch.Tensor:
    """Every ordered group of ``group_size`` of ``n`` completions, ``(n^G, G)`` indices."""
    return torch.tensor(list(itertools.product(range(n), repeat=group_size)), dtype=torch.long).reshape(-1, group_size)


# ----------------------------------------------------------------------------- rewards


@dataclass
class RewardFunc:
    """A named reward: ``fn(prompts, completions, completion_ids, **columns) -> list[float]``."""

    name: str
    fn: Callable


def _load_callable(spec: str) -> RewardFunc:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise RewardFunctionError(f"reward_funcs entry {spec!r}: expected 'module:function', "
                                  "'path/to/file.py:function' or a reward-model directory")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            if not os.path.isfile(module_name):
                raise RewardFunctionError(f"reward_funcs entry {spec!r}: no such file {module_name}")
            name = "mdpalign_reward_" + os.path.splitext(os.path.basename(module_name))[0]
            loader = importlib.util.spec_from_file_location(name, module_name)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except RewardFunctionError:
        raise
    except Exception as err:  # a user's module: any import error is theirs to fix
        raise RewardFunctionError(f"reward_funcs entry {spec!r}: importing {module_name} failed: "
                                  f"{type(err).__name__}: {err}") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward_funcs entry {spec!r}: {module_name} has no function {attr!r}")
    return RewardFunc(attr, fn)


class RewardModelScorer:
    """A reward-model directory (trained by ``objective: reward``, or any one-output sequence classifier) as a reward
    function. Each completion is tokenised exactly as :mod:`~mdpalign.llm_bridge.reward_data` tokenises a response
    for training — ``prompt + completion + eos`` for strings, the chat template of ``prompt + [assistant message]``
    for conversations — so the model scores what it was trained on, right-padded, read at the last token. (TRL's
    ``GRPOTrainer`` instead scores ``prompt + completion`` without special tokens, not what its ``RewardTrainer``
    trains on.) Frozen, in eval mode, on ``device``."""

    def __init__(self, path: str, device, dtype=torch.float32, batch_size: int = 32):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from mdpalign.llm_bridge.reward_model import is_sequence_classifier, prepare_reward_model

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise RewardFunctionError(f"reward_funcs entry {path!r}: not a model directory ({err})") from None
        if not is_sequence_classifier(config):
            raise RewardFunctionError(f"reward_funcs entry {path!r} is a {config.architectures} checkpoint, not a "
                                      "reward model (a sequence classifier with one output); train one with "
                                      "objective: reward")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        try:
            self.model = prepare_reward_model(model, self.tokenizer)
        except MdpalignError as err:
            raise RewardFunctionError(f"reward_funcs entry {path!r}: {err}") from None
        self.model.eval().requires_grad_(False).to(device)
        self.device, self.batch_size = device, batch_size
        self.__name__ = os.path.basename(os.path.normpath(path))

    def ids(self, prompt, completion) -> list[int]:
        from mdpalign.llm_bridge.reward_data import _full_ids

        return _full_ids(self.tokenizer, prompt, completion, "messages" if isinstance(prompt, list) else "text")

    @torch.no_grad()
    def __call__(self, prompts, completions, **_) -> list[float]:
        rows = [self.ids(p, c) for p, c in zip(prompts, completions, strict=True)]
        pad = self.tokenizer.pad_token_id
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=self.device)
            out.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
        return out


def load_reward_funcs(specs: Sequence, device=None, dtype=torch.float32) -> list[RewardFunc]:
    """``reward_funcs`` entries -> :class:`RewardFunc` list: a callable as it is, a directory as a reward model, a
    ``module:function`` string imported."""
    if not specs:
        raise RewardFunctionError("online RL needs at least one reward: set reward_funcs (a 'module:function' or a "
                                  "reward-model directory)")
    out = []
    for spec in specs:
        if isinstance(spec, RewardFunc):
            out.append(spec)
        elif callable(spec):
            out.append(RewardFunc(getattr(spec, "__name__", type(spec).__name__), spec))
        elif isinstance(spec, str) and os.path.isdir(spec):
            scorer = RewardModelScorer(spec, device if device is not None else "cpu", dtype)
            out.append(RewardFunc(scorer.__name__, scorer))
        elif isinstance(spec, str):
            out.append(_load_callable(spec))
        else:
            raise RewardFunctionError(f"reward_funcs entry {spec!r}: expected a string or a callable")
    names = [r.name for r in out]
    for i, n in enumerate(names):  # each function's mean is logged under its name: names must differ
        if names.count(n) > 1:
            out[i] = RewardFunc(f"{n}_{i}", out[i].fn)
    return out


def _short(prompt) -> str:
    text = prompt if isinstance(prompt, str) else repr(prompt)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _call_one(func: RewardFunc, prompts, completions, completion_ids, columns, extra) -> list:
    try:
        return func.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns, **extra)
    except RewardFunctionError:
        raise
    except Exception as err:
        if len(prompts) > 1:  # find the completion it fails on, to name its prompt
            for i in range(len(prompts)):
                cols = {k: v[i:i + 1] for k, v in columns.items()}
                _call_one(func, prompts[i:i + 1], completions[i:i + 1], completion_ids[i:i + 1], cols, extra)
        raise RewardFunctionError(f"reward function {func.name!r} raised {type(err).__name__}: {err} (on the "
                                  f"completion {completions[0]!r} of prompt {_short(prompts[0])})") from err


def score_completions(funcs: list[RewardFunc], weights: Sequence[float] | None, prompts: list, completions: list,
                      completion_ids: list[list[int]], columns: dict[str, list], **extra) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """``(rewards (N,), per_function (N, F))`` float64: each function's rewards and their weighted sum. ``columns``:
    the dataset's other columns, one value per completion; ``extra`` (e.g. ``trainer_state``) passed through."""
    n = len(prompts)
    w = [1.0] * len(funcs) if weights is None else [float(x) for x in weights]
    if len(w) != len(funcs):
        raise RewardFunctionError(f"reward_weights has {len(w)} entries for {len(funcs)} reward functions")
    table = torch.zeros(n, len(funcs), dtype=torch.float64)
    for j, func in enumerate(funcs):
        values = _call_one(func, prompts, completions, completion_ids, columns, extra)
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        try:
            values = list(values)
        except TypeError:
            raise RewardFunctionError(f"reward function {func.name!r} returned {type(values).__name__}, not a list of "
                                      f"{n} numbers (first prompt {_short(prompts[0])})") from None
        if len(values) != n:
            raise RewardFunctionError(f"reward function {func.name!r} returned {len(values)} rewards for {n} "
                                      f"completions (one per completion; first prompt {_short(prompts[0])})")
        for i, v in enumerate(values):
            ok = isinstance(v, numbers.Real) and math.isfinite(float(v))
            if not ok:
                raise RewardFunctionError(f"reward function {func.name!r} returned {v!r} for completion {i} "
                                          f"({completions[i]!r}) of prompt {_short(prompts[i])}; every reward must be "
                                          "a finite number (drop unscorable prompts from the data instead)")
            table[i, j] = float(v)
    return table @ torch.tensor(w, dtype=torch.float64), table
