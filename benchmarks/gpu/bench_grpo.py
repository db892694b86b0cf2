"""GRPO in mdpalign's llm_bridge vs TRL's GRPOTrainer: the same model, prompts, group size and lengths.

Per method: generated tokens/s (time inside ``generate``, measured the same way for both: a wrapper around
``GenerationMixin.generate``), training tokens/s (prompt + completion tokens of the step over the whole step time,
generation included), step time (median after warmup) and peak memory. Rows:

* ``trl:grpo`` — TRL 1.16 ``GRPOTrainer``, transformers generation, β = 0.1 (a live reference), ``scale_rewards:
  none``, ``loss_type: dr_grpo``, its default ``use_bias_correction_kl`` (k3·ρ as a loss);
* ``mdpalign:grpo_trl_kl`` — the same KL (k3·ρ as a loss) and aggregation: the same work per step;
* ``mdpalign:grpo`` — mdpalign's defaults (k1 of the sampling policy in the reward: one more no-grad forward per
  round, for the old log-probs).

    python benchmarks/gpu/bench_grpo.py --device cuda --out benchmarks/results/gpu_grpo.json
    python benchmarks/gpu/bench_grpo.py --device cpu --size small        # CPU proxy
    python benchmarks/gpu/bench_grpo.py --device cpu --size tiny         # smoke test of the script

The model, tokenizer and prompt lengths come from ``bench_llm.py`` (random Qwen2-style model, word-level tokenizer
"t0 ... tN", log-normal prompt lengths). Completions are generated to ``--completion-length`` tokens (a random model
almost never samples EOS). Every method runs in its own process (peak memory: CUDA ``max_memory_allocated`` over the
timed steps; on CPU the process's peak RSS, model loading included). Gradient checkpointing on, sdpa attention, bf16
on GPU, fp32 on CPU.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llm import SIZES, build_tokenizer, model_config  # noqa: E402

METHODS = ["mdpalign:grpo", "mdpalign:grpo_trl_kl", "trl:grpo"]
BETA = 0.1


class GenerationMeter:
    """Wraps ``GenerationMixin.generate`` (both libraries call it): seconds inside it and new tokens, after warmup."""

    def __init__(self):
        self.seconds = 0.0
        self.tokens = 0
        self.on = False

    def install(self):
        from transformers.generation.utils import GenerationMixin

        original = GenerationMixin.generate
        meter = self

        def generate(model, *args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = original(model, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if meter.on:
                ids = kwargs.get("input_ids", args[0] if args else None)
                meter.seconds += time.perf_counter() - t
                meter.tokens += int(out.shape[0] * (out.shape[1] - ids.shape[1]))
            return out

        GenerationMixin.generate = generate


class EndToEndTimer:
    """Wall time between consecutive optimizer-step ends (everything in between: generation, scoring, reference,
    forward, backward, optimizer; mdpalign generates before the Trainer's ``on_step_begin``, TRL inside the step),
    after ``warmup`` steps; switches the generation meter on for the same span."""

    def __init__(self, warmup: int, meter: GenerationMeter):
        self.warmup, self.meter, self.times, self._last = warmup, meter, [], None

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if state.global_step > self.warmup:
            self.times.append(now - self._last)
        if state.global_step == self.warmup:
            self.meter.on = True
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        self._last = now

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda *x, **k: None
        raise AttributeError(name)


def prompt_rows(n: int, scale: int, vocab: int, seed: int = 0) -> list[dict]:
    """Log-normal prompt lengths, median 128 (16..512), divided by ``scale`` (as bench_llm's)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(128 / scale), 0.6, n), max(2, 16 // scale), 512 // scale).astype(int)
    return [{"prompt": " ".join(f"t{t}" for t in rng.integers(2, vocab, k))} for k in lengths]


def reward_t2(prompts, completions, **_):
    """Fraction of the word t2 in the completion (cheap: the benchmark times the trainer, not the reward)."""
    return [c.split().count("t2") / max(len(c.split()), 1) for c in completions]


def run_one(method: str, a, model_dir: str, rows: list[dict]) -> dict:
    lib, variant = method.split(":")
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(a.workdir, "tokenizer"))
    meter = GenerationMeter()
    meter.install()
    timer = EndToEndTimer(a.warmup, meter)

    common = dict(output_dir=os.path.join(a.workdir, method.replace(":", "_")), max_steps=a.warmup + a.steps,
                  per_device_train_batch_size=a.batch_size, learning_rate=1e-6, logging_steps=10_000,
                  save_strategy="no", report_to="none", bf16=a.device == "cuda", use_cpu=a.device == "cpu",
                  gradient_checkpointing=True, disable_tqdm=True, seed=0, beta=BETA,
                  num_generations=a.num_generations, max_completion_length=a.completion_length, scale_rewards="none",
                  loss_type="dr_grpo", temperature=1.0)

    def load():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")

    if lib == "mdpalign":
        from mdpalign.llm_bridge.config import TrainConfig
        from mdpalign.llm_bridge.online import tokenize_prompts
        from mdpalign.llm_bridge.online_trainer import OnlineTrainer

        kl = {} if variant == "grpo" else dict(kl_estimator="k3", kl_placement="loss", use_bias_correction_kl=True)
        cfg = TrainConfig(objective="grpo", logps_chunk_size=a.chunk, max_length=None, **kl, **common)
        ds = tokenize_prompts(rows, tok)
        trainer = OnlineTrainer(load(), cfg, ds, processing_class=tok, reward_funcs=[reward_t2], ref_model=load(),
                                callbacks=[timer])
    else:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(model_init_kwargs={"dtype": dtype, "attn_implementation": "sdpa"}, **common)
        trainer = GRPOTrainer(model=model_dir, reward_funcs=[reward_t2], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer])
    trainer.train()
    step = float(np.median(timer.times)) if timer.times else float("nan")
    n_rows = a.batch_size
    prompt_tokens = float(np.mean([len(tok(r["prompt"])["input_ids"]) for r in rows])) * n_rows
    gen_per_step = meter.tokens / max(len(timer.times), 1)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": method, "step_s": step, "gen_tokens_per_s": meter.tokens / meter.seconds if meter.seconds else 0,
            "gen_s_per_step": meter.seconds / max(len(timer.times), 1), "generated_tokens_per_step": gen_per_step,
            "train_tokens_per_s": (prompt_tokens + gen_per_step) / step, "peak_mem_gib": peak,
            "steps_timed": len(timer.times)}


def _run_isolated(method: str, argv: list[str], work: str) -> dict:
    out = os.path.join(work, f"{method.replace(':', '_')}.json")
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--methods", method, "--no-isolate", "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)["results"][0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 0.5b on cuda, small on cpu")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="completions per step (default 16 cuda, 8 cpu)")
    p.add_argument("--num-generations", type=int, default=None, help="group size (default 8 cuda, 4 cpu)")
    p.add_argument("--completion-length", type=int, default=None, help="default 256 cuda, 32 cpu")
    p.add_argument("--chunk", type=int, default=1024, help="mdpalign logps_chunk_size")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device; use --device cpu for a CPU run")
    gpu = a.device == "cuda"
    size = a.size or ("0.5b" if gpu else "small")
    a.batch_size = a.batch_size or (16 if gpu else 8)
    a.num_generations = a.num_generations or (8 if gpu else 4)
    a.completion_length = a.completion_length or (256 if gpu else 32)
    if size == "tiny":
        a.steps, a.warmup, a.completion_length = min(a.steps, 2), min(a.warmup, 1), min(a.completion_length, 8)
    vocab, scale, _ = SIZES[size]
    methods = a.methods.split(",")
    with tempfile.TemporaryDirectory() as work:
        a.workdir = work
        if a.isolate and len(methods) > 1:
            child = ["--device", a.device, "--size", size, "--steps", str(a.steps), "--warmup", str(a.warmup),
                     "--batch-size", str(a.batch_size), "--num-generations", str(a.num_generations),
                     "--completion-length", str(a.completion_length), "--chunk", str(a.chunk)]
            results = [_run_isolated(m, child, work) for m in methods]
        else:
            from transformers import AutoModelForCausalLM

            model_dir = os.path.join(work, "model")
            build_tokenizer(vocab, os.path.join(work, "tokenizer"))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(model_config(size))
            n_params = sum(q.numel() for q in model.parameters())
            model.save_pretrained(model_dir)
            del model
            rows = prompt_rows(a.batch_size // a.num_generations * (a.warmup + a.steps), scale, vocab)
            results = [dict(run_one(m, a, model_dir, rows), params=n_params) for m in methods]
    n_params = results[0]["params"]
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    mem = "peak memory (GiB)" if gpu else "peak RSS (GiB)"
    lines = [f"Model: Qwen2-style ({size}), {n_params / 1e6:.0f}M parameters, {'bf16' if gpu else 'fp32'}; device: "
             f"{device}; {a.batch_size} completions per step ({a.num_generations} per prompt), "
             f"{a.completion_length} generated tokens each; median of {a.steps} timed steps after {a.warmup} warmup",
             "", f"| method | step time (s) | generation (s/step) | generated tokens/s | training tokens/s | {mem} |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['step_s']:.3f} | {r['gen_s_per_step']:.3f} | {r['gen_tokens_per_s']:.0f} | "
              f"{r['train_tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} |" for r in results]
    by = {r["method"]: r for r in results}
    if "trl:grpo" in by:
        lines.append("")
        for m in ("mdpalign:grpo_trl_kl", "mdpalign:grpo"):
            if m in by:
                ours, trl = by[m], by["trl:grpo"]
                speed = ours["train_tokens_per_s"] / trl["train_tokens_per_s"]
                lines.append(f"- {m}: training throughput {speed:.2f}x "
                             f"TRL's, generation {ours['gen_tokens_per_s'] / max(trl['gen_tokens_per_s'], 1e-9):.2f}x, "
                             f"peak memory {ours['peak_mem_gib'] / trl['peak_mem_gib']:.2f}x")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            json.dump({"device": device, "size": size, "params": n_params,
                       "args": {k: v for k, v in vars(a).items() if k != "workdir"}, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
