#!/usr/bin/env bash
# Set up .venv with edgeres and everything its converters and tests need.
# Re-running is cheap: dependencies are reinstalled only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
stamp="$VENV/.edgeres-deps-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml: on this project's
    # machines pip takes them from local disk instead of downloading gigabytes.
    # constraints.txt pins every package to the set the tests last passed with.
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]" -c constraints.txt
    touch "$stamp"
else
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
fi
# OpenVINO Model API, to check that it runs edgeres' IRs: it pins opencv-python-headless
# 4.x, but runs beside the OpenCV 5 installed here, so it goes in without its dependencies.
"$VENV/bin/python" -c "import model_api" 2>/dev/null ||
    "$VENV/bin/python" -m pip install --quiet --no-deps openvino-model-api==0.4.7
# MediaPipe Tasks, a client no one here wrote, checks that the .tflite files run from their
# metadata alone (tests/targets/test_tflite.py). It pulls opencv-contrib-python, which would
# replace the OpenCV above, so it gets a venv of its own.
MEDIAPIPE_VENV=.venv-mediapipe
if [ ! -f "$MEDIAPIPE_VENV/.edgeres-mediapipe-1.2.3" ]; then
    rm -rf "$MEDIAPIPE_VENV"
    "$PYTHON" -m venv "$MEDIAPIPE_VENV"
    "$MEDIAPIPE_VENV/bin/python" -m pip install --quiet mediapipe==1.2.3
    touch "$MEDIAPIPE_VENV/.edgeres-mediapipe-1.2.3"
fi
echo "edgeres is installed in $VENV ($("$VENV/bin/edgeres" --version))"
