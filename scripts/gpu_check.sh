#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine: the tests marked gpu, the two tests that
# once failed on a GPU, and `python -m cvae.bench --device cuda`. Outputs go under $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
set -u
OUT=${OUT:-/tmp/cvae-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -V
  $PY -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|numpy|pillow|pytest) "; } 2>&1 | tee "$OUT/env.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
  || { echo "no usable torch with CUDA here"; exit 1; }
# the kill test is CPU-bound (--device cpu): run it beside the GPU tests, not beside the bench
timeout "${FAULTS_S:-150}" $PY -m pytest -q tests/test_faults.py > "$OUT/faults.txt" 2>&1 &
faults=$!
timeout "${TESTS_S:-110}" $PY -m pytest -q -s -m "gpu or not e2e" tests/test_cuda_graph.py \
  "tests/test_evaluate.py::test_cli_reproduces_the_training_metrics" > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "passed|failed|error|Error|^(conv|mlp)|straight" "$OUT/gpu_tests.txt" | tail -30
wait $faults; echo "faults rc=$?"; tail -3 "$OUT/faults.txt"
timeout "${BENCH_S:-170}" $PY -m cvae.bench --device cuda --json "$OUT/bench.json" > "$OUT/bench.txt" 2> "$OUT/bench_log.txt"
echo "bench rc=$?"; grep -E "^cuda: .* = " "$OUT/bench_log.txt" | cut -c1-400; tail -5 "$OUT/bench_log.txt"
sed -n '1,/^{/p' "$OUT/bench.txt"
