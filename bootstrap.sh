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
echo "edgeres is installed in $VENV ($("$VENV/bin/edgeres" --version))"
