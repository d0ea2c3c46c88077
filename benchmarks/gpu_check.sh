#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU, from the repository root, with the project's
# dependencies installed (torch with CUDA, open_clip, ...):
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
#
# It runs the test suite's CUDA-marked tests, then train_speed.py, table_speed.py and
# inference_latency.py with --device cuda, and writes each benchmark's JSON and a log into
# RESULTS_DIR (default: $OUT when set, else ./gpu-results). Nothing is downloaded: the benchmarks
# use random-weight architecture twins.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-gpu-results}}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CALIBPROMPT_HOME="${CALIBPROMPT_HOME:-$(mktemp -d)}"
export HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
status=0

run() {  # run NAME COMMAND...: log to RESULTS/NAME.log, keep going on failure
    local name="$1"; shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" >"$RESULTS/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
    else
        echo "   FAILED (exit $?) in $((SECONDS - start)) s; last lines:"; tail -n 15 "$RESULTS/$name.log"; status=1
    fi
    tail -n 12 "$RESULTS/$name.log"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee "$RESULTS/device.txt"
run cuda_tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_protocols.py
run train_speed "$PY" benchmarks/train_speed.py --device cuda --epochs 20 --json "$RESULTS/train_speed.json"
run table_speed "$PY" benchmarks/table_speed.py --device cuda --seeds 1,2,3 --methods coop,calibprompt,ls \
    --epochs 20 --json "$RESULTS/table_speed.json"
run inference_latency "$PY" benchmarks/inference_latency.py --device cuda --json "$RESULTS/inference_latency.json"
exit $status
