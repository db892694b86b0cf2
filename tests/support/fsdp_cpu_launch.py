"""Test-only entry point: ``python -m mdpalign.llm_bridge`` under FSDP2 on CPU processes (gloo).

accelerate turns ``distributed_type: FSDP`` into FSDP only on accelerator backends; on CPU it silently falls back
to DDP. This shim re-labels the CPU process group as FSDP once accelerate has built its state, so the real FSDP2
path runs: ``fully_shard`` of every decoder layer and the root, parameters held as DTensor shards, all-gathers
in forward, reduce-scatters in backward, ``cpu_ram_efficient_loading`` and full-state-dict saving. Nothing in
mdpalign is patched.
"""
import runpy

import accelerate.state as accelerate_state

_original_init = accelerate_state.AcceleratorState.__init__


def _init_as_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == accelerate_state.DistributedType.MULTI_CPU:
        # every later AcceleratorState() copies PartialState's type back, so change it there too
        accelerate_state.PartialState._shared_state["distributed_type"] = accelerate_state.DistributedType.FSDP
        self.distributed_type = accelerate_state.DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate_state.AcceleratorState.__init__ = _init_as_fsdp

if __name__ == "__main__":
    # exactly `python -m mdpalign.llm_bridge ...` (the arguments stay in sys.argv), in this patched process
    runpy.run_module("mdpalign.llm_bridge", run_name="__main__", alter_sys=True)
