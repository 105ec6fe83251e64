#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine (about 6-7 minutes on an H200):
#   1. the tests marked gpu, the epoch writer's tests (which train on the GPU there: device auto),
#      and the evaluate test that once failed on a GPU;
#   2. `python -m benchmarks.bench --device cuda` without torch.compile: baseline, eager, graph, quick demo,
#      10 quick demos through the queue;
#   3. the torch.compile part, with the kill test (CPU-bound, --device cpu) beside it.
# Outputs go under $OUT:  OUT=/tmp/gpu bash scripts/gpu_check.sh
set -u
OUT=${OUT:-/tmp/cvae-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -V; nproc
  $PY -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|numpy|pillow|pytest|triton) "; } 2>&1 | tee "$OUT/env.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
  || { echo "no usable torch with CUDA here"; exit 1; }
timeout "${TESTS_S:-150}" $PY -m pytest -q -s -p no:cacheprovider -m "gpu or not e2e" tests/test_cuda_graph.py \
  tests/test_loop.py "tests/test_evaluate.py::test_cli_reproduces_the_training_metrics" > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests rc=$?"; grep -E "passed|failed|error|Error|^(conv|mlp)|straight" "$OUT/gpu_tests.txt" | tail -30
timeout "${BENCH_S:-200}" $PY -m benchmarks.bench --device cuda --only baseline,eager,graph,demo,queue \
  > "$OUT/bench.txt" 2> "$OUT/bench_log.txt"
echo "bench rc=$?"; grep -E "^cuda: .* (= |FAILED)" "$OUT/bench_log.txt" | cut -c1-600; tail -3 "$OUT/bench_log.txt"
sed -n '1,/^{/p' "$OUT/bench.txt"
timeout "${FAULTS_S:-220}" $PY -m pytest -q -p no:cacheprovider tests/test_faults.py > "$OUT/faults.txt" 2>&1 &
faults=$!
timeout "${COMPILE_S:-180}" $PY -m benchmarks.bench --device cuda --only graph,compile \
  > "$OUT/compile.txt" 2> "$OUT/compile_log.txt"
echo "compile rc=$?"; grep -E "^cuda: .* (= |FAILED)" "$OUT/compile_log.txt" | cut -c1-600; tail -3 "$OUT/compile_log.txt"
sed -n '1,/^{/p' "$OUT/compile.txt"
wait $faults; echo "faults rc=$?"; tail -3 "$OUT/faults.txt"
