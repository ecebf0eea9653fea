# FlashAttention-4 (flash-attn-4, CuTe DSL) on the lent GPU machine, run from the repo root. A call carries at most
# 64 MiB with the ~19.5 MB tree, and the CUDA 13 libraries wheel of the CuTe DSL is 92 MB, so it travels as a
# tar.xz (63.6 MB, made here from the wheel unpacked with `python -m zipfile -e`: its members are cu13/<site-packages
# tree>) split in two parts, one a call. Each call must follow the previous one within 30 s (the machine stays warm
# 30 s; a fresh one has lost /tmp, so start again at a). Folders, in .git/info/exclude (README: GPU benchmarks says
# how to make them; .whl and .whl-av are the existing ones):
#   .whl-fa4a: cu13.tar.xz.part0, diffusers, importlib_metadata
#   .whl-fa4b: cu13.tar.xz.part1, flash_attn_4, nvidia_cutlass_dsl (+ libs_base, libs_core), apache_tvm_ffi,
#              torch_c_dlpack_ext, quack_kernels (einops, cuda-bindings and protobuf are already on the machine)
# Steps:
#   STEP=a (carry .whl-fa4a): part 1 to /tmp/fa4parts, diffusers into /tmp/site                          ~15 s
#   STEP=b (carry .whl-fa4b): the wheels into /tmp/site, then both parts joined and unpacked over it; a smoke
#          test: imports, and benchmarks/attention_gpu.py --kernels-only (fwd and fwd+bwd of fa4 vs cuDNN SDPA at
#          the CogVideoX shape, gradients' difference) -> $OUT/attention_gpu_kernels.json                  ~2-4 min
#   STEP=c (carry .whl-av: the test modules import PyAV, which does not fit in b's call): the fa4 GPU tests
#          (tests/test_attention.py, tests/test_train_gpu.py, -m gpu -k fa4) -> $OUT/gpu_fa4_tests.log      ~3-5 min
#   STEP=d (carry .whl: diffusers, torchao): benchmarks/train_step.py: stock, the SDPA settings of last time and
#          the best one with fa4 (one more checkpointed block if it goes over stock's memory)
#          -> $OUT/train_step_h200.json (TRAIN_ARGS replaces its arguments)                                ~7-10 min
#   STEP=e (no carry; after d): single train_step variants, `batch:ckpt:selective:compile:warm:n:fp8:attention`
#          (ONE, default: fa4 at 26 checkpointed blocks; fa4 with fp8 linears at 27) -> $OUT/train_step_one.jsonl
#          (one JSON line each; "peak_gib" must stay <= stock's 27.87)                                      ~2 min each
# The wheel's .pth (which puts nvidia_cutlass_dsl/dsl_packages on sys.path) is not read from PYTHONPATH folders,
# so that folder is on PYTHONPATH; FA4's on-disk kernel cache lets train_step's one-process-a-variant runs reuse
# the JIT-compiled kernels (FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=0 before the script turns that cache off).
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD/src PYTHONUNBUFFERED=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=${FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED:-1} FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4cache
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
case "${STEP:?set STEP=a, b, c, d or e}" in
a)
  mkdir -p /tmp/fa4parts && cp .whl-fa4a/cu13.tar.xz.part0 /tmp/fa4parts/ || exit 1
  $PIP .whl-fa4a/*.whl || exit 1
  ls -l /tmp/fa4parts
  ;;
b)
  [ -f /tmp/fa4parts/cu13.tar.xz.part0 ] || { echo "no /tmp/fa4parts/cu13.tar.xz.part0: run STEP=a first (within 30 s)"; exit 1; }
  $PIP .whl-fa4b/*.whl || exit 1  # before the unpacking: pip --upgrade replaces nvidia_cutlass_dsl/ whole
  cat /tmp/fa4parts/cu13.tar.xz.part0 .whl-fa4b/cu13.tar.xz.part1 | tar xJf - -C /tmp/site --strip-components=1 || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import importlib.metadata as m, torch, flash_attn.cute; from ophora.core.attention import fa4_unavailable
print(torch.__version__, 'flash-attn-4', m.version('flash-attn-4'), 'cutlass-dsl', m.version('nvidia-cutlass-dsl-libs-core'),
      'fa4 unavailable:', fa4_unavailable('cuda'))"
  python3 benchmarks/attention_gpu.py --kernels-only --out $OUT 2>&1 | grep -v -i "warn\|deprec" | tee $OUT/attention_gpu_kernels.log | tail -25
  ;;
c)
  [ -d /tmp/site/flash_attn ] || { echo "flash-attn-4 is not in /tmp/site: run STEP=a and STEP=b first"; exit 1; }
  $PIP .whl-av/*.whl || exit 1
  python3 -m pytest -q -p no:cacheprovider -m gpu -k fa4 tests/test_attention.py tests/test_train_gpu.py 2>&1 \
    | tee $OUT/gpu_fa4_tests.log | tail -15
  ;;
d)
  [ -d /tmp/site/flash_attn ] || { echo "flash-attn-4 is not in /tmp/site: run STEP=a and STEP=b first"; exit 1; }
  $PIP .whl/*.whl || exit 1
  python3 benchmarks/train_step.py --out $OUT ${TRAIN_ARGS:---checkpoint-blocks 27 --quick --max-batch 1 --no-fp8} 2>&1 \
    | grep -v -i "warn\|deprec" | tee $OUT/train_step.log | tail -30
  ;;
e)
  [ -d /tmp/site/flash_attn ] && [ -d /tmp/site/diffusers ] || { echo "run STEP=a, b and d first"; exit 1; }
  for spec in ${ONE:-1:26:1:1:2:4:0:fa4 1:27:1:1:2:4:1:fa4}; do
    python3 benchmarks/train_step.py --out $OUT --one $spec 2>>$OUT/train_step_one.err | grep "^{" | tee -a $OUT/train_step_one.jsonl
  done
  ;;
*) echo "STEP must be a, b, c, d or e"; exit 2 ;;
esac
