"""Tiny local causal LMs and tokenizers for the llm_bridge tests: built offline, never downloaded."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "question: what is two plus two? answer: four",
    "question: what colour is the sky? answer: blue",
    "a good answer is short and true; a bad answer is long and wrong",
    "expert sub optimal user assistant hello world goodbye moon",
    "one two three four five six seven eight nine ten",
]


def build_tokenizer():
    """Byte-level BPE trained on a few sentences, with a chat template; eos = <|end|>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>", additional_special_tokens=SPECIAL[2:]
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, attn: str = "eager"):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg)
    # random init in transformers is std 0.02: scale the head up so log-probs are far from uniform
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.float()


def save_tiny(directory: str, seed: int = 0) -> str:
    """Save tokenizer + random model to ``directory`` and return it."""
    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


PREFERENCES = [
    {"prompt": "question: what is two plus two? answer:", "chosen": " four", "rejected": " five six seven"},
    {"prompt": "question: what colour is the sky? answer:", "chosen": " blue", "rejected": " the dog sat"},
    {"prompt": "the cat sat on the", "chosen": " mat", "rejected": " moon and the log"},
    {"prompt": "one two three", "chosen": " four five", "rejected": " ten nine"},
]

COMPLETIONS = [
    {"prompt": "question: what is two plus two? answer:", "completion": " four"},
    {"prompt": "the cat sat on the", "completion": " mat and the dog sat on the log"},
    {"prompt": "one two", "completion": " three four five six"},
    {"prompt": "hello", "completion": " world goodbye moon"},
]


def write_jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def launch_two_processes(cfg: dict, tmp_path, accelerate_config: str, entry: list[str], **env) -> dict:
    """``accelerate launch --config_file accelerate_config <entry> --config run.yaml`` with ``cfg`` as run.yaml, on a
    free port, from ``tmp_path``; asserts it succeeded and returns the run's train_result.json.

    ``entry``: ``["-m", "mdpalign.llm_bridge"]`` or a script path; ``env`` adds variables (tests/support is on
    PYTHONPATH, so a script there can import these fixtures)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with socket.socket() as sock:  # a free port: a fixed one collides with other runs on a shared machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
           "--main_process_port", str(port), *entry, "--config", str(path)]
    support = os.path.dirname(os.path.abspath(__file__))
    # PYTHONFAULTHANDLER: a process that aborts (SIGABRT, SIGSEGV) prints every thread's Python stack into stderr
    python_path = os.pathsep.join(filter(None, [support, os.environ.get("PYTHONPATH")]))
    full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                    PYTHONFAULTHANDLER="1", PYTHONPATH=python_path, **env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full_env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-8000:]
    with open(os.path.join(cfg["output_dir"], "train_result.json"), encoding="utf-8") as fh:
        return json.load(fh)


def step_losses(history) -> dict[int, float]:
    """{step: loss} from a Trainer log history."""
    return {h["step"]: h["loss"] for h in history if "loss" in h}


# ----------------------------------------------------------------------------- online RL


def build_word_tokenizer(words: list[str], pad: str | None = None, eos: str | None = None):
    """A word-level tokenizer whose ids are the positions of ``words`` (split on whitespace); ``pad`` / ``eos``
    name two of them (a pad token is required for batching; default the first word)."""
    from tokenizers import models as tok_models

    tok = Tokenizer(tok_models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    kwargs = {"pad_token": pad or words[0]}
    if eos is not None:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_small_llama(vocab_size: int, seed: int = 0, hidden: int = 16, head_scale: float = 10.0):
    """A one-layer Llama with eager attention and no padding index (every token's embedding is trainable, so a
    one-token prompt has a non-zero hidden state); the LM head scaled so the policy starts away from uniform."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=None,
                      bos_token_id=None, eos_token_id=None, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model.float()
