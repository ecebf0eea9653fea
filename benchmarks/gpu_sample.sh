# Sampling benchmark + GPU sample tests on a CUDA machine without diffusers/PyAV, run from the repo root.
# .whl/ holds the diffusers, av and importlib_metadata wheels (README: GPU benchmarks); STOCK points at
# stock_cogvideox.py when ../shared is not beside the checkout (on the lent GPU: STOCK=.gpu/stock_cogvideox.py).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers, av; print(torch.__version__, diffusers.__version__, av.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_sample_gpu.py 2>&1 | tail -5
python3 ${STOCK:-../shared/bench/stock_cogvideox.py} --parts pipe --out $OUT 2>&1 | grep -v Warn | tail -20
python3 benchmarks/sample_gpu.py --stock $OUT/stock.json --out $OUT 2>&1 | grep -v -i "warn\|deprec" | tail -30
