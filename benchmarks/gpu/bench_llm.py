"""Throughput, step time and peak memory of mdpalign's llm_bridge vs TRL on the same model, data and settings.

A random-initialised ~0.5B Qwen2-style model (bf16) trained for a few steps on synthetic token data with a
realistic length distribution (log-normal prompt and completion lengths). Rows: SFT, DPO, ORPO in mdpalign and
in TRL; IFT and C-RLFT in mdpalign (to compare with SFT). Prints a Markdown table and writes JSON.

    python benchmarks/gpu/bench_llm.py --device cuda --out benchmarks/results/gpu.json
    python benchmarks/gpu/bench_llm.py --device cpu --size small      # CPU proxy: ~40M model, shorter texts
    python benchmarks/gpu/bench_llm.py --device cpu --size tiny       # smoke test of the script itself

Every method runs in its own process (``--isolate``, the default), so one method's allocations cannot inflate the
next one's peak: on CUDA the peak is ``torch.cuda.max_memory_allocated`` over the timed steps, on CPU the process's
peak resident set size (``ru_maxrss``, model loading included).

Text is built from a word-level tokenizer whose words are "t0 ... tN", so TRL and mdpalign tokenise it to
exactly the same ids. Both use sdpa attention, bf16 (on GPU), gradient checkpointing, a live reference model
for DPO, max_length 1024, no padding-free packing (TRL disables it for DPO).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

METHODS = ["mdpalign:sft", "trl:sft", "mdpalign:dpo", "trl:dpo", "mdpalign:orpo", "trl:orpo",
           "mdpalign:ift", "mdpalign:crlft"]


# size -> (vocabulary, length divisor, Qwen2 shape); "0.5b" is Qwen2.5-0.5B's shape (~494M parameters, 28% of
# them in the tied embedding / LM head), "small" keeps that share of the LM head at ~40M parameters for CPU runs
SIZES = {
    "tiny": (512, 16, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2)),
    "small": (32_000, 4, dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                              num_key_value_heads=2)),
    "0.5b": (151_936, 1, dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                              num_key_value_heads=2)),
}


def model_config(size: str):
    vocab, _, shape = SIZES[size]
    return Qwen2Config(vocab_size=vocab, max_position_embeddings=32768, tie_word_embeddings=True,
                       rope_theta=1_000_000.0, **shape)


def build_tokenizer(vocab: int, directory: str):
    words = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(directory)
    return fast


def synthetic_rows(n: int, scale: int, vocab: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Log-normal lengths: prompts median 128 (16..512), completions median 192 (8..500), all divided by ``scale``."""
    rng = np.random.default_rng(seed)

    def lengths(median, lo, hi):
        return np.clip(rng.lognormal(np.log(median / scale), 0.6, n), max(2, lo // scale), hi // scale).astype(int)

    def text(k):
        return "".join(f" t{t}" for t in rng.integers(2, vocab, k))

    p, c, r = lengths(128, 16, 512), lengths(192, 8, 500), lengths(192, 8, 500)
    prefs = [{"prompt": text(p[i]).strip(), "chosen": text(c[i]), "rejected": text(r[i])} for i in range(n)]
    sft = [{"prompt": x["prompt"], "completion": x["chosen"], "class": "expert" if i % 2 == 0 else "suboptimal"}
           for i, x in enumerate(prefs)]
    return prefs, sft


class StepTimer:
    """TrainerCallback-compatible timer: wall time per optimizer step (after warmup), synchronised on CUDA."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._t = warmup, [], None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kw):
        self._sync()
        self._t = time.perf_counter()
        if state.global_step == self.warmup and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kw):
        self._sync()
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t)

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def run_one(method: str, a, model_dir: str, prefs, sft, tokens_per_step: dict) -> dict:
    lib, objective = method.split(":")
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    common = dict(output_dir=os.path.join(a.workdir, method.replace(":", "_")), max_steps=a.warmup + a.steps,
                  per_device_train_batch_size=a.batch_size, learning_rate=1e-6, logging_steps=10_000,
                  save_strategy="no", report_to="none", bf16=a.device == "cuda", use_cpu=a.device == "cpu",
                  gradient_checkpointing=True, disable_tqdm=True, seed=0, max_length=a.max_length)
    # not AutoTokenizer: with a qwen2 config.json beside it, it would rebuild a Qwen2 tokenizer around our vocab
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(a.workdir, "tokenizer"))

    def load():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")

    timer = StepTimer(a.warmup)
    rows = prefs if objective in ("dpo", "orpo") else sft
    # each library is imported only by the method that uses it: every method runs in its own process, whose peak
    # RSS (the CPU memory figure) must not include the other library
    if lib == "mdpalign":
        from mdpalign.llm_bridge.config import TrainConfig
        from mdpalign.llm_bridge.data import TokenizeSettings, tokenize_records
        from mdpalign.llm_bridge.trainer import MdpalignTrainer

        cfg = TrainConfig(objective=objective, reference="model", beta=0.1, orpo_lambda=0.1,
                          crlft_class_weights={"expert": 1.0, "suboptimal": 0.1}, logps_chunk_size=a.chunk,
                          **common)
        ds = tokenize_records(rows, tok, TokenizeSettings(objective, max_length=a.max_length,
                                                          class_weights=cfg.crlft_class_weights))
        ref = load() if objective == "dpo" else None
        trainer = MdpalignTrainer(load(), cfg, ds, processing_class=tok, ref_model=ref, callbacks=[timer])
    else:
        from datasets import Dataset

        data = Dataset.from_list([{k: v for k, v in r.items() if k != "class"} for r in rows])
        if objective == "sft":
            from trl import SFTConfig, SFTTrainer

            trainer = SFTTrainer(model=load(), args=SFTConfig(**common), train_dataset=data, processing_class=tok,
                                 callbacks=[timer])
        elif objective == "dpo":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(model=load(), ref_model=load(), args=DPOConfig(beta=0.1, **common),
                                 train_dataset=data, processing_class=tok, callbacks=[timer])
        else:
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            trainer = ORPOTrainer(model=load(), args=ORPOConfig(beta=0.1, **common), train_dataset=data,
                                  processing_class=tok, callbacks=[timer])
    trainer.train()
    step = float(np.median(timer.times)) if timer.times else float("nan")
    tokens = tokens_per_step["pref" if objective in ("dpo", "orpo") else "sft"]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # the whole process's peak resident set (KiB on Linux); meaningful with one method per process
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"method": method, "step_s": step, "tokens_per_s": tokens / step, "peak_mem_gib": peak,
           "steps_timed": len(timer.times)}
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _run_isolated(method: str, argv: list[str], work: str) -> dict:
    """This script with ``--methods method`` in a fresh process; its one result."""
    out = os.path.join(work, f"{method.replace(':', '_')}.json")
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--methods", method, "--no-isolate", "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)["results"][0]


def ratio_lines(results: list[dict]) -> list[str]:
    """mdpalign vs TRL per objective (throughput and peak-memory ratios), IFT and C-RLFT step time vs mdpalign SFT."""
    by = {r["method"]: r for r in results}
    lines = []
    for obj in ("sft", "dpo", "orpo"):
        ours, theirs = by.get(f"mdpalign:{obj}"), by.get(f"trl:{obj}")
        if ours and theirs:
            lines.append(f"- {obj}: throughput {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x TRL's, "
                         f"peak memory {ours['peak_mem_gib'] / theirs['peak_mem_gib']:.2f}x TRL's")
    sft = by.get("mdpalign:sft")
    for obj in ("ift", "crlft"):
        if sft and f"mdpalign:{obj}" in by:
            lines.append(f"- {obj}: step time {by[f'mdpalign:{obj}']['step_s'] / sft['step_s']:.2f}x mdpalign SFT's")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="model and text size (default: 0.5b on cuda, small on cpu)")
    p.add_argument("--tiny", action="store_true", help="same as --size tiny (CPU smoke test)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=1024, help="mdpalign logps_chunk_size")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run every method in this process (peak memory is then cumulative on CPU)")
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device; use --device cpu for a CPU run")
    size = "tiny" if a.tiny else a.size or ("0.5b" if a.device == "cuda" else "small")
    if size == "tiny":
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    vocab, scale, _ = SIZES[size]
    methods = a.methods.split(",")
    with tempfile.TemporaryDirectory() as work:
        a.workdir = work
        if a.isolate and len(methods) > 1:
            child = ["--device", a.device, "--size", size, "--steps", str(a.steps), "--warmup", str(a.warmup),
                     "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--chunk", str(a.chunk)]
            results = [_run_isolated(m, child, work) for m in methods]
            n_params = None
        else:
            model_dir = os.path.join(work, "model")
            tok = build_tokenizer(vocab, os.path.join(work, "tokenizer"))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(model_config(size))
            n_params = sum(q.numel() for q in model.parameters())
            model.save_pretrained(model_dir)
            del model
            n = a.batch_size * (a.warmup + a.steps)
            prefs, sft = synthetic_rows(n, scale, vocab)
            # tokens per optimizer step (mean over the data; the data cycle through once)
            per_pref = np.mean([len(tok(x["prompt"] + x["chosen"])["input_ids"])
                                + len(tok(x["prompt"] + x["rejected"])["input_ids"]) for x in prefs])
            per_sft = np.mean([len(tok(x["prompt"] + x["completion"])["input_ids"]) for x in sft])
            tokens_per_step = {"pref": float(per_pref) * a.batch_size, "sft": float(per_sft) * a.batch_size}
            results = [dict(run_one(m, a, model_dir, prefs, sft, tokens_per_step), params=n_params) for m in methods]
    n_params = results[0].get("params") or n_params
    device = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    mem = "peak memory (GiB)" if a.device == "cuda" else "peak RSS (GiB)"
    precision = "bf16" if a.device == "cuda" else "fp32"
    lines = [f"Model: Qwen2-style ({size}), {n_params / 1e6:.0f}M parameters, {precision}; "
             f"device: {device}; batch {a.batch_size}; median of {a.steps} timed steps after {a.warmup} warmup",
             "", f"| method | step time (s) | tokens/s | {mem} |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} |"
              for r in results]
    lines += ["", *ratio_lines(results)]
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            json.dump({"device": device, "size": size, "params": n_params,
                       "args": {k: v for k, v in vars(a).items() if k != "workdir"}, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
