# Sampling benchmark + GPU sample tests on a CUDA machine without diffusers, run from the repo root; each part
# stays under 10 minutes. .whl/ holds the diffusers, importlib_metadata, fa3-fwd and cache-dit wheels (README: GPU
# benchmarks; PyAV is not needed: the benchmark skips writing the mp4).
#   PART=1: GPU tests (PyAV must already be in /tmp/site: a previous call carrying .whl-av or .whl-prep installs
#           it), stock (inline) and the exact, VAE, fp8 and fp8-fixed modes -> $OUT/sample_gpu_h200.json
#   PART=2: the eager, fixed-schedule and cache modes and cache-dit, merged with part 1's results: copy part 1's
#           JSON to benchmarks/results/sample_gpu_h200.json first (PREV overrides that path)
# MODES overrides a part's mode list; the whole log is also kept as $OUT/sample_gpu_part$PART.log.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__)"
if [ "${PART:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_sample_gpu.py tests/test_step_cache.py tests/test_attention.py \
    tests/test_host_timesteps.py} 2>&1 | tee $OUT/gpu_tests.log | tail -8
  python3 benchmarks/sample_gpu.py --stock inline --modes ${MODES:-exact,fp8,fp8-fixed,exact-vae-cl,exact-vae-compiled} --out $OUT \
    --compile-cache $OUT/compile_cache.bin 2>&1 | grep -v -i "warn\|deprec" | tee $OUT/sample_gpu_part1.log | tail -40
else
  python3 benchmarks/sample_gpu.py --stock ${PREV:-benchmarks/results/sample_gpu_h200.json} --out $OUT \
    --modes ${MODES:-exact-eager,fixed,fixed-k2,cachedit-fixed-F1B0,cachedit-F8B0-taylorseer,taylorseer,fastercache,pab,fbc,cachedit-F8B8} \
    2>&1 | grep -v -i "warn\|deprec\|Cache-DiT" | tee $OUT/sample_gpu_part2.log | tail -40
fi
