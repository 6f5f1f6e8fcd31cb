#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one command sized for a short lease (each part has its
# own time limit, together under 10 minutes; a part that runs out is named in the log):
#
#   bash benchmarks/gpu_checks.sh [FASHION_MNIST_DIR]
#
# 1. the CUDA tests: the fused stacks (planar, radial, Householder; torch loop and Triton
#    kernels) against the layer-by-layer ones in float64 with every tensor on the GPU, the
#    Triton kernels against the torch loop, the CUDA-graphed training steps against eager
#    ones, device selection and binarization on the GPU;
# 2. benchmarks/bench_gpu.py: training steps/s (planar K = 0 and 80, batch 100) eager,
#    CUDA-graphed and compiled (and at K = 80 with the torch loop instead of the kernels), and the IS NLL over a 10k-image test set at S = 5000 (the real
#    Fashion-MNIST test set when its IDX files are in FASHION_MNIST_DIR, e.g. Debian's
#    /usr/share/datasets/fashion-mnist; else the bundled MNIST digits, projected to 10k);
# 3. the default job, `nfvi train` with device=cuda, end to end (training, checkpoints, the
#    test evaluation), eager and with trainer.cuda_graph=true, with each run's wall seconds.
#
# Logs (and each run's summary.json) go to ${OUT:-gpu_logs}/. nfvi must be importable (pip
# install -e ., or PYTHONPATH=.); the Python is ${PYTHON:-python3}.
set -u -o pipefail
py=${PYTHON:-python3}
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NFVI_OUTPUT_ROOT="$out/runs"
data=()
if [ -n "${1:-}" ] && [ -f "$1/t10k-images-idx3-ubyte.gz" ]; then
    data=(dataset=fashion_mnist dataset.source=full "dataset.data_dir=$1")
fi

part() {  # part SECONDS LOG NAME COMMAND...: one part under its own time limit
    local limit=$1 log=$2 name=$3
    shift 3
    echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=$?
    [ "$rc" = 124 ] && echo "== $name: ran out of its ${limit}s" | tee -a "$log"
    echo "== $name: exit $rc" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total \
      --format=csv; nproc
  $py -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
} 2>&1 | tee "$out/env.txt"

part 90 "$out/tests.log" "fused stacks on CUDA: torch loop and Triton kernels" \
    $py -m pytest -q -p no:cacheprovider -n 0 tests/flows/test_fused.py -k cuda
part 60 "$out/tests.log" "Triton kernels against the torch loop" \
    $py -m pytest -q -p no:cacheprovider -n 0 tests/test_native_gpu.py
part 75 "$out/tests.log" "CUDA graph, device, binarization" \
    $py -m pytest -q -p no:cacheprovider -n 0 \
    tests/test_compile.py::test_cuda_graph_steps_match_eager_steps \
    tests/test_runtime.py tests/data/test_binarize.py

bench=("$py" benchmarks/bench_gpu.py --steps 1000 --warmup 30)
[ ${#data[@]} -gt 0 ] && bench+=(--set "${data[@]}")
part 100 "$out/bench.log" "bench K=80 graph, eager (Triton kernels, torch loop)" "${bench[@]}" \
    --K 80 --modes cuda_graph eager cuda_graph_loop eager_loop
part 50 "$out/bench.log" "bench K=0 graph, eager" "${bench[@]}" --K 0 --modes cuda_graph eager

for extra in "" "trainer.cuda_graph=true"; do
    t0=$(date +%s.%N)
    part 50 "$out/cli.log" "nfvi train device=cuda $extra" \
        $py -c "from nfvi.cli import main; main()" train device=cuda $extra
    echo "== wall $(awk "BEGIN {print $(date +%s.%N) - $t0}") s" | tee -a "$out/cli.log"
done
find "$out/runs" -name summary.json | sort | while read -r f; do
    echo "== $f"; cat "$f"; echo
done >> "$out/cli.log"

part 120 "$out/bench.log" "bench compiled" "${bench[@]}" --K 0 80 --modes compiled
grep -h '^| [0-9]' "$out/bench.log"
