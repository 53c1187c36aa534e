"""Resume after a crash or a signal: kill -9 mid-epoch + --resume ends with the metrics of an
uninterrupted run, bit for bit; SIGINT stops cleanly with the state saved; a mismatched --resume is
one line; --resume with nothing to resume starts fresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from gptclf.data import load_dataset, split_book, write_split
from gptclf.resume import STATE_FILE

# 60 training texts in batches of 2: 30 steps an epoch, the state saved after every step.
FLAGS = [
    "--model", "gpt2-tiny", "--weights", "random", "--epochs", "3", "--lr", "1e-3",
    "--batch-size", "2", "--trainable", "last_block", "--pool", "last_real", "--padding",
    "dynamic", "--no-bucket", "--dropout", "0.1", "--no-report", "--no-progress",
    "--save-every", "1",
]  # fmt: skip
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    train, val, test = split_book(load_dataset("sms-spam"))
    out = tmp_path_factory.mktemp("split")
    write_split(out, train.subset(range(60)), val.subset(range(20)), test.subset(range(20)))
    return out


def command(split: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gptclf",
        "train",
        "--data",
        str(split),
        *FLAGS,
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted(split, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(command(split, out), check=True, capture_output=True, env=ENV, timeout=300)
    assert not (out / STATE_FILE).exists()  # a finished run leaves nothing to resume
    return json.loads((out / "metrics.json").read_text())


def position(out: Path) -> tuple[int, int] | None:
    """(epoch, step) of the saved state, or None while there is none (or it is being replaced)."""
    try:
        with safe_open(str(out / STATE_FILE), "pt") as f:
            meta = json.loads(f.metadata()["gptclf"])
    except Exception:
        return None
    return meta["epoch"], meta["step"]


def start_and_wait(cmd: list[str], out: Path, until: tuple[int, int]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 240
    while (position(out) or (0, 0)) < until:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.005)
    return proc


def same_result(resumed: dict, whole: dict) -> None:
    for split in ("train", "validation", "test"):
        assert resumed[split]["accuracy"] == whole[split]["accuracy"]
        assert resumed[split]["loss"] == whole[split]["loss"]  # bit for bit on the CPU
    assert resumed["history"] == whole["history"]
    assert resumed["train_curve"] == whole["train_curve"]
    assert resumed["best_epoch"] == whole["best_epoch"]


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(split, uninterrupted, tmp_path):
    proc = start_and_wait(command(split, tmp_path), tmp_path, until=(2, 7))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    epoch, step = position(tmp_path)
    assert epoch == 2 and 7 <= step < 30  # killed in the middle of epoch 2
    assert not (tmp_path / "metrics.json").exists()
    done = subprocess.run(
        command(split, tmp_path, "--resume"), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"resuming from epoch {epoch}, step {step}" in done.stderr
    same_result(json.loads((tmp_path / "metrics.json").read_text()), uninterrupted)


def test_sigint_saves_and_exits_cleanly_then_resumes(split, uninterrupted, tmp_path):
    proc = start_and_wait(command(split, tmp_path), tmp_path, until=(1, 5))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gptclf: SIGINT: stopped at epoch") and "--resume" in last, err
    assert position(tmp_path) is not None
    done = subprocess.run(
        command(split, tmp_path, "--resume"), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode == 0, done.stderr
    same_result(json.loads((tmp_path / "metrics.json").read_text()), uninterrupted)


def test_resume_with_other_settings_is_one_line_naming_the_difference(split, tmp_path):
    proc = start_and_wait(command(split, tmp_path), tmp_path, until=(1, 3))
    proc.kill()
    proc.communicate()
    bad = subprocess.run(
        command(split, tmp_path, "--resume", "--lr", "2e-3"), capture_output=True, text=True,
        env=ENV, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"gptclf: error: --resume: {tmp_path} holds a run with other settings: "
        "--lr was 0.001, now 0.002"
    )


def test_resume_with_nothing_to_resume_starts_fresh(split, tmp_path):
    done = subprocess.run(
        command(split, tmp_path, "--resume", "--epochs", "1"), capture_output=True, text=True,
        env=ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "nothing to resume" in done.stderr and "starting fresh" in done.stderr
    assert (tmp_path / "metrics.json").is_file()


def test_a_setting_the_state_predates_counts_as_its_default():
    from gptclf.resume import first_difference

    # a state saved before --head-bias existed: its run had a bias (the option's default)
    assert first_difference({"seed": 1}, {"seed": 1, "head_bias": True}) is None
    assert first_difference({"seed": 1}, {"seed": 1, "head_bias": False}) == (
        "--head-bias was True, now False"
    )
