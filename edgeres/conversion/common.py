"""What every converter shares."""

from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
