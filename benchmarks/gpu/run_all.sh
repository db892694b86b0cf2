#!/usr/bin/env bash
# Everything the llm_bridge still needs a GPU for, in one command (one device call):
#   the gpu-marked tests, then the mdpalign-vs-TRL benchmarks (offline objectives, GRPO) on the ~0.5B model.
# Results (logs, JSON, versions, GPU name) go to $OUT (the device tool's folder) or benchmarks/results/gpu_run/.
#
# On a machine with no package registry, carry the missing wheels in .whl/ (git-ignored) first; from a machine
# with one, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl trl==1.16.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19
# (also transformers/accelerate/peft at the versions in benchmarks/results/llm_cpu.md if that machine's differ).
# Then, with the device tool: run(command="bash benchmarks/gpu/run_all.sh", carry=[".whl"]).
set -uo pipefail
out="${OUT:-benchmarks/results/gpu_run}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 - > "$out/versions.txt" 2>&1 <<'PY'
import importlib
for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # report, do not stop: the tests say what is missing
        print(name, "MISSING", type(exc).__name__, exc)
PY
cat "$out/gpu.txt" "$out/versions.txt"
status=0
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.log" || status=1
python3 benchmarks/gpu/bench_llm.py --device cuda --out "$out/gpu.json" 2>&1 | tee "$out/bench.log" || status=1
python3 benchmarks/gpu/bench_grpo.py --device cuda --out "$out/gpu_grpo.json" 2>&1 | tee "$out/bench_grpo.log" || status=1
exit $status
