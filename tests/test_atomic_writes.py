"""Nothing lost: a process killed (SIGKILL) in the middle of writing any kind of file leaves the
previous file whole, byte for byte; a checkpoint still loads, its temporary leftovers ignored.
A save interrupted between its renames is named when loading, never loaded as a mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gptclf
from atomic_child import MARK, SNAPSHOT, WRITERS, digests
from fixtures_checkpoint import tiny_classifier, write_tiny_checkpoint
from gptclf import fileio
from gptclf.checkpoint import load_classifier
from gptclf.errors import GptclfError

CHILD = Path(__file__).with_name("atomic_child.py")
# The child imports this checkout's gptclf and the test fixtures.
PATH = os.pathsep.join([str(Path(gptclf.__file__).parents[1]), str(CHILD.parent)])
ENV = {**os.environ, "PYTHONPATH": PATH + os.pathsep + os.environ.get("PYTHONPATH", "")}


def kill_mid_write(kind: str, directory: Path) -> None:
    """Run the child until it says it is mid-write, then SIGKILL it."""
    log = directory / "child.log"
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), kind, str(directory)], stdout=out, stderr=out, env=ENV
        )
    deadline = time.monotonic() + 180
    try:
        while not (directory / MARK).exists():
            assert child.poll() is None, f"the child exited {child.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX")
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_kill_mid_write_leaves_the_previous_file_whole(kind: str, tmp_path: Path) -> None:
    kill_mid_write(kind, tmp_path)
    before = json.loads((tmp_path / SNAPSHOT).read_text())
    after = digests(tmp_path)
    assert {name: after.get(name) for name in before} == before  # every file: version 1, whole
    leftovers = sorted(set(after) - set(before))
    assert leftovers, "nothing was being written when the child was killed"
    # what the kill left is hidden (a dot name), so no reader takes it for the real file
    assert all(any(part.startswith(".") for part in Path(p).parts) for p in leftovers), leftovers
    if kind.startswith("checkpoint"):
        model, _, _ = load_classifier(tmp_path / "run")
        expected = tiny_classifier(seed=1)[0].state_dict()
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[key]), key


def test_a_save_interrupted_between_renames_is_named_not_mixed(tmp_path, monkeypatch) -> None:
    """Stopped after config.json's rename, before model.safetensors': the two files are from
    different saves, and loading says so."""
    write_tiny_checkpoint(tmp_path, seed=1)
    real = fileio.commit

    def stop_before_the_weights(tmp: Path, path: Path) -> None:
        if path.name == "model.safetensors":
            raise KeyboardInterrupt  # what a kill would have left, within one process
        real(tmp, path)

    monkeypatch.setattr(fileio, "commit", stop_before_the_weights)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_checkpoint(tmp_path, seed=2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # removed on the way out
    with pytest.raises(GptclfError, match="come from different saves"):
        load_classifier(tmp_path)
