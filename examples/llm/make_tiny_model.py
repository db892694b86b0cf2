"""Build a tiny random causal LM and its tokenizer locally, to try every ``examples/llm/*.yaml`` without a download.

    python examples/llm/make_tiny_model.py --out tiny-model
    mdpalign train --config examples/llm/run.yaml --model_name_or_path tiny-model --use_cpu true

The tokenizer is a byte-level BPE trained here on a few sentences (any text encodes; common words of the example
data are single tokens), with special tokens ``<pad>`` (padding) and ``<|end|>`` (end of a turn and of a sequence)
and a small chat template, so conversational data works too. The model is a random Llama (a few hundred thousand
weights): it learns nothing useful, but every objective runs end to end on a CPU in seconds. The tests build the same
model by importing this file (``tests/llm_bridge/test_llm_examples.py``).
"""
from __future__ import annotations

import argparse
import os
import sys

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CORPUS = [
    "Question: what is two plus two? Answer: Four.",
    "Question: what colour is a clear daytime sky? Answer: Blue.",
    "Question: how many legs does a spider have? Answer: Eight.",
    "What is the capital of France? Paris. Name a prime number between 10 and 15.",
    "Summarise: the cat sat on the mat. A cat sat on a mat. The dog slept all day.",
    "a good answer is short and true; a bad answer is long and wrong",
    "one two three four five six seven eight nine ten eleven twelve thirteen",
    "expert suboptimal user assistant system hello world thank you",
]


def build_tokenizer(vocab_size: int = 400):
    """Byte-level BPE trained on :data:`CORPUS`, pad ``<pad>``, eos ``<|end|>``, with :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>",
                                   additional_special_tokens=SPECIAL_TOKENS[2:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A random ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config).float()


def make_tiny_model(out: str, seed: int = 0, hidden: int = 64, layers: int = 2) -> str:
    """Write the tokenizer and a random model to ``out`` (created; an existing non-empty folder is refused, so
    nothing is overwritten) and return it."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, hidden=hidden, layers=layers)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    args = parser.parse_args(argv)
    try:
        path = make_tiny_model(args.out, seed=args.seed, hidden=args.hidden, layers=args.layers)
    except FileExistsError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
