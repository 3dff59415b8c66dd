# Sourced by the GPU scripts: unpack the package bundle (make-bundle.sh) and set up the environment.
set -uo pipefail
# Once per machine: a script sourced by another one (bench_workload_ddp.sh BUILD_MIX_BESIDE=1) finds it done.
if [ ! -f /tmp/s/.unpacked ]; then
  rm -rf /tmp/s && mkdir -p /tmp/s && tar xzf .gpu-bundle/site.tgz -C /tmp/s
  # Extra pure-Python wheels carried in .whl (e.g. liger-kernel), next to the bundle's packages.
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s/site .whl/*.whl
  fi
  touch /tmp/s/.unpacked
fi
export PYTHONPATH=/tmp/s/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
MODEL=/tmp/q3b
if [ ! -f $MODEL/config.json ]; then
  python3 .gpu-ref/qlora_anchor.py build $MODEL > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
fi
# run NAME LIMIT COMMAND...: COMMAND's output to $OUT/NAME.log under a time limit; its RESULT lines printed.
run() {
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name: exit $?"; tail -5 "$OUT/$name.log"; }
  grep -h RESULT "$OUT/$name.log" | cut -c1-500
}
