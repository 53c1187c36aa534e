"""What the small one-line benchmarks share: the machine a record was made on, and appending it
to its results file (one JSON line per machine and run; older lines are kept)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import torch

from gptclf.experiments.runner import hardware


def machine() -> dict[str, Any]:
    """When and where: finished (UTC), hardware summary, torch's CPU capability, torch version."""
    return {
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware()["summary"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def append(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line to `path` and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
