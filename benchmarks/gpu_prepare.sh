# Preparation and training benchmarks on the lent GPU (no diffusers there), run from the repo root; each under
# 10 minutes. Which wheel folder to carry (README: GPU benchmarks):
#   PART=prepare (default): carry .whl-prep (diffusers, importlib_metadata, av: the end-to-end run decodes mp4)
#                           -> $OUT/prepare_gpu_h200.json
#   PART=train:             carry .whl (diffusers, importlib_metadata, torchao for the float8 variant)
#                           -> $OUT/train_step_h200.json (+ train_step_partial.jsonl while it runs)
#   PART=curve:             carry .whl and .gpu/cataract1k_iol_sequence (first, here:
#                           cp -r ../shared/data/real/cataract1k_iol_sequence .gpu/; 128 JPEGs, 5.9 MB); about 6 min
#                           -> $OUT/train_curve_h200.{json,png} (the JSON rewritten every 10 steps)
case "${PART:-prepare}" in train|curve) WHEELS=.whl ;; *) WHEELS=.whl-prep ;; esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ "${PART:-prepare}" = train ]; then
  python3 benchmarks/train_step.py --out $OUT --checkpoint-blocks 27 --max-batch ${MAX_BATCH:-4} ${QUICK:+--quick} 2>&1 | grep -v -i "warn\|deprec" | tee $OUT/train_step.log | tail -30
elif [ "$PART" = curve ]; then
  python3 benchmarks/train_curve.py --out $OUT --data .gpu/cataract1k_iol_sequence --budget-s 330 2>&1 | grep -v -i "warn\|deprec" | tee $OUT/train_curve.log | tail -30
else
  python3 benchmarks/prepare_gpu.py --out $OUT 2>&1 | grep -v -i "warn\|deprec" | tee $OUT/prepare_gpu.log | tail -40
fi
