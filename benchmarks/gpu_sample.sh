# Sampling benchmark + GPU sample tests on a CUDA machine without diffusers, run from the repo root; each part
# stays under 10 minutes. .whl/ holds the diffusers, importlib_metadata, fa3-fwd and cache-dit wheels (README: GPU
# benchmarks; PyAV is not needed: the benchmark skips writing the mp4).
#   PART=1: GPU tests, stock (inline) and the exact, fp8 and fixed-schedule modes -> $OUT/sample_gpu_h200.json
#   PART=2: the other cache modes and cache-dit, merged with part 1's results: copy part 1's JSON to
#           benchmarks/results/sample_gpu_h200.json first (PREV overrides that path)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__)"
if [ "${PART:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_sample_gpu.py tests/test_step_cache.py tests/test_attention.py 2>&1 | tail -5
  python3 benchmarks/sample_gpu.py --stock inline --modes exact,exact-eager,fp8,fixed,fixed-k2,fp8-fixed,exact-vae-cl,exact-vae-compiled --out $OUT \
    --compile-cache $OUT/compile_cache.bin 2>&1 | grep -v -i "warn\|deprec" | tail -40
else
  python3 benchmarks/sample_gpu.py --stock ${PREV:-benchmarks/results/sample_gpu_h200.json} --out $OUT \
    --modes fbc,taylorseer,pab,fastercache,cachedit-F8B0-taylorseer,cachedit-F8B8,cachedit-fixed-F1B0 2>&1 | grep -v -i "warn\|deprec\|Cache-DiT" | tail -40
fi
