"""The child process of test_atomic_writes.py: `python atomic_child.py KIND DIR` writes one kind
of file twice with gptclf's own writer, the second time stopping in the middle of the write
(`DIR/mid-write` appears, then it sleeps) so that the test can SIGKILL it there. The test then
finds every file as the first write left it (`DIR/version-1.json`: their sha256).

Where each kind stops: `checkpoint` while model.safetensors' bytes are written (after the
tokenizer and config.json were staged); `checkpoint-renames` after every file is written, at the
first rename; `export` while the exported model.safetensors is written; `predictions` halfway
through the rows; the others (through `fileio.atomic_write`) with half their bytes in the
temporary file, before the rename.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

MARK = "mid-write"


def pause(directory: Path) -> None:
    """Tell the test we are mid-write, and wait for its SIGKILL."""
    (directory / MARK).touch()
    time.sleep(600)


def stop_in_commit(directory: Path, truncate: bool = True) -> None:
    """Make fileio stop at its first rename, with the temporary file cut to half (`truncate`:
    as if killed while writing it) or whole (killed between writing and renaming)."""
    from gptclf import fileio

    def stopping(tmp: Path, path: Path) -> None:
        if truncate:
            with open(tmp, "rb+") as f:
                f.truncate(tmp.stat().st_size // 2)
        pause(directory)

    fileio.commit = stopping


def stop_in_save_file(module: Any, directory: Path) -> None:
    """`module.save_file` writes the file, cuts it to half its bytes, and stops."""
    real = module.save_file

    def stopping(state, path, metadata=None):
        real(state, path, metadata=metadata)
        with open(path, "rb+") as f:
            f.truncate(Path(path).stat().st_size // 2)
        pause(directory)

    module.save_file = stopping


# --- the kinds: write(directory, version) ------------------------------------------------------


def write_checkpoint(directory: Path, version: int) -> None:
    from fixtures_checkpoint import write_tiny_checkpoint

    write_tiny_checkpoint(directory / "run", seed=version)


def write_metrics(directory: Path, version: int) -> None:
    from gptclf.fileio import write_json

    write_json(directory / "metrics.json", metrics(version))


def metrics(version: int) -> dict[str, Any]:
    return {"version": version, "history": list(range(20_000 * version))}


def write_predictions(directory: Path, version: int) -> None:
    from gptclf.tables import TableWriter

    with TableWriter(directory / "predictions.csv", ["text", "predicted_label"]) as writer:
        for row in prediction_rows(version):
            writer.write(row)
            if version == 2 and row["text"] == "text 5000":
                writer._file.flush()  # half the rows are in the temporary file
                pause(directory)


def prediction_rows(version: int) -> list[dict[str, str]]:
    return [{"text": f"text {i}", "predicted_label": f"v{version}"} for i in range(10_000)]


def write_splits(directory: Path, version: int) -> None:
    from gptclf.data import write_split

    write_split(directory / "split", *splits(version))


def splits(version: int):
    from gptclf.data import LabeledTexts

    def part(n: int) -> LabeledTexts:
        texts = [f"version {version} text {i}" for i in range(n)]
        return LabeledTexts(texts, [i % 2 for i in range(n)], ["ham", "spam"])

    return part(1000), part(200), part(200)


def write_cache(directory: Path, version: int) -> None:
    from gptclf.prefix_cache import PrefixCache, save_store

    save_store(directory / "cache.safetensors", {"train": PrefixCache(cache_states(version), 1)})


def cache_states(version: int):
    import torch

    generator = torch.Generator().manual_seed(version)
    return [torch.randn(n, 16, generator=generator) for n in (5, 9, 12) * 100]


def write_report(directory: Path, version: int) -> None:
    from matplotlib.figure import Figure

    from gptclf.run_report import _save

    fig = Figure()
    fig.add_subplot().plot(range(100 * version))
    _save(fig, directory / "loss.png")


def write_export(directory: Path, version: int) -> None:
    from fixtures_checkpoint import write_tiny_checkpoint
    from gptclf.export import export

    for seed in (1, 2):  # both before the first export: only the export differs afterwards
        if not (directory / f"run{seed}").exists():
            write_tiny_checkpoint(directory / f"run{seed}", seed=seed)
    export(directory / f"run{version}", directory / "exported", "hf", force=True)


WRITERS = {
    "checkpoint": write_checkpoint,
    "checkpoint-renames": write_checkpoint,
    "metrics": write_metrics,
    "predictions": write_predictions,
    "splits": write_splits,
    "cache": write_cache,
    "report": write_report,
    "export": write_export,
}


SNAPSHOT = "version-1.json"


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but the test's own, by relative path."""
    import hashlib

    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in (SNAPSHOT, MARK, "child.log")
    }


def main(kind: str, directory: Path) -> None:
    import json

    WRITERS[kind](directory, 1)
    (directory / SNAPSHOT).write_text(json.dumps(digests(directory)))
    if kind == "checkpoint":
        import gptclf.checkpoint

        stop_in_save_file(gptclf.checkpoint, directory)
    elif kind == "export":
        import gptclf.export

        stop_in_save_file(gptclf.export, directory)
    elif kind != "predictions":  # that one stops itself, halfway through its rows
        stop_in_commit(directory, truncate=kind != "checkpoint-renames")
    WRITERS[kind](directory, 2)
    raise SystemExit("the second write was not stopped")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
