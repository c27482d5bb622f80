#!/bin/bash
# The GPU checks in one go (run by the device tool): install offline, run tests/test_cuda.py, then the GPU benchmark.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . -e plugins/contrib > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
export PYTHONUNBUFFERED=1
timeout ${TEST_TIMEOUT:-330} python3 -m pytest tests/test_cuda.py -p no:cacheprovider --tb=short --maxfail=60 2>&1 | tee "$OUT/cuda_tests.log" | tail -60
timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/gpu.py --rounds 2 --min-seconds 0.3 2>&1 | tee "$OUT/gpu_bench.log"
