#!/usr/bin/env bash
# Install vLLM on the GPU machine (no network) from a staged bundle of wheels, next to the package bundle of
# benchmarks/gpu_env.sh: every wheel whose distribution the machine lacks goes into /tmp/s/site, the others
# (torch, transformers, numpy, ...) stay the machine's own. Then `import vllm` is checked.
#   bash benchmarks/gpu_vllm.sh /tmp/models/vllm_bundle.tar
# The bundle, built on a CPU machine (benchmarks/README.md lists the commands): vLLM's wheel (pip download
# --no-deps vllm==0.26.0: it pins the machine's torch 2.11 and is built for CUDA 13) and the cp312 wheels of
# the packages vLLM imports that the GPU machine lacks; staged in parts with ../shared/gpu/stage-file.sh.
cd "$(dirname "$0")/.."
export REFERENCE_MODEL=0
source benchmarks/gpu_env.sh
bundle=${1:?usage: gpu_vllm.sh BUNDLE.tar}
if [ ! -f /tmp/s/.vllm ]; then
  rm -rf /tmp/vw && mkdir -p /tmp/vw && tar xf "$bundle" -C /tmp/vw || exit 1
  python3 - <<'EOF' > /tmp/vw/missing.txt || exit 1
import importlib.metadata as md
import pathlib
import re
for wheel in sorted(pathlib.Path("/tmp/vw").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
EOF
  echo "installing $(wc -l < /tmp/vw/missing.txt) of $(ls /tmp/vw/*.whl | wc -l) wheels: $(xargs -n1 basename < /tmp/vw/missing.txt | cut -d- -f1 | tr '\n' ' ')"
  xargs python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s/site < /tmp/vw/missing.txt || exit 1
  touch /tmp/s/.vllm
fi
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
