"""``accelerate launch ... tests/support/deepspeed_probe.py --config run.yaml``: ``mdpalign train`` plus a record, per
process, of what DeepSpeed did (for tests/llm_bridge/test_llm_deepspeed.py): which ZeRO optimizer wraps the step,
whether the LM head's weight is a ZeRO-3 shard, and the number of rows of every LM-head call (forward and backward
recompute)."""
from __future__ import annotations

import json
import os
import sys

from transformers import TrainerCallback

from mdpalign.llm_bridge.config import parse_config
from mdpalign.llm_bridge.training import (
    close_distributed,
    exit_without_finalization,
    train,
)


class Probe(TrainerCallback):
    def __init__(self, path: str):
        self.path, self.rows, self.record = path, [], {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        head = model.get_output_embeddings()
        weight = head.weight
        # a ZeRO-3 shard between calls: no local elements, the full size in ds_numel
        self.record = {"optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
                       "head_local_numel": weight.numel(),
                       "head_numel": int(getattr(weight, "ds_numel", weight.numel())),
                       "head_zero3": hasattr(weight, "ds_id")}
        head.register_forward_pre_hook(lambda module, inputs: self.rows.append(int(inputs[0].shape[0])))

    def on_train_end(self, args, state, control, **kwargs):
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(dict(self.record, head_call_rows=self.rows), fh)


def main() -> int:
    cfg = parse_config(sys.argv[1:])
    os.makedirs(cfg.output_dir, exist_ok=True)
    train(cfg, callbacks=[Probe(os.path.join(cfg.output_dir, f"probe_rank{cfg.process_index}.json"))])
    if close_distributed():  # as mdpalign train does (mdpalign.cli.llm.run_command)
        exit_without_finalization(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
