# The mini experiment (benchmarks/mini_ophora.py) on one H200 through the device tool, in calls under 10 minutes.
# .whl-mini/ (git-ignored through .git/info/exclude) holds the wheels that machine lacks, about 61 MB: av 18.1.0,
# rapidocr-onnxruntime 1.4.4, scenedetect 0.7.2, pyclipper 1.4.0, shapely 2.2.0, platformdirs, diffusers 0.42.1,
# importlib_metadata (pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl-mini NAME==VER).
# Carry .whl-mini and nothing else large: the tree that travels may hold 64 MiB in all. Since the demo model ships
# in the tree (15 MB), .whl-mini no longer fits beside it: install PyAV (36 MB) in a first call carrying only its
# wheel, then, within 30 s, run this with WHEELS naming a folder of the other wheels.
#   run(command="bash benchmarks/gpu_mini.sh", carry=[".whl-mini"], timeout_s=600)
# Each call starts no new step after 6 minutes and SIGINTs a running stage at 9:20 (it saves and stops); call
# again at once (the machine stays warm 30 s) and it continues in /root/mini. The last call, which finishes the
# report, writes mini_ophora.json, mini_ophora.png and mini_ophora_frames.png to $OUT: copy them into
# benchmarks/results/. PACK=1 also writes the state as $OUT/state/state.tar.NNN (to carry to a fresh machine:
# copy them into an ignored folder, carry it, and set UNPACK=that/folder).
# WHEELS names another folder holding these (e.g. .whl-gpu: these plus the evaluate benchmark's); LIMIT (seconds,
# default 560) and MINUTES (default 6) shorten a call that ran something else first.
[ -d /tmp/site/diffusers ] && [ -d /tmp/site/rapidocr_onnxruntime ] || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHEELS:-.whl-mini}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# CONTROL=1, in a call of its own once the report is written (the machine still warm): does this run's VAE keep the
# world's overlays detectable (benchmarks/leakage_control.py on its P2FT pipeline's vae/, a few minutes)? Copy
# $OUT/leakage_control_run.json into benchmarks/results/.
if [ -n "$CONTROL" ]; then
  timeout -s INT 560 python3 benchmarks/leakage_control.py --model /root/mini/p2ft/final --videos 16 --out "$OUT/leakage_control_run.json" \
    2>&1 | grep -v -i "warn\|deprecat" | tail -25
  exit 0
fi
timeout -s INT ${LIMIT:-560} python3 benchmarks/mini_ophora.py --out /root/mini --device cuda --max-minutes ${MINUTES:-6} --results "$OUT" \
  ${PACK:+--pack "$OUT/state"} ${UNPACK:+--unpack "$UNPACK"} 2>&1 | grep -v -i "warn\|deprecat\|it/s\]"
# the finished P2FT model (the demo's weights) and the TPT model (to score its videos again), as parts of at most
# 15 MiB: cat mini_p2ft.tgz.* | tar -xz (likewise mini_tpt.tgz.*)
if [ -f "$OUT/mini_ophora.json" ]; then
  for m in p2ft tpt; do tar -C /root/mini/$m -cz final | split -b 15m -d - "$OUT/mini_$m.tgz."; done
fi
true
