"""Every file of a run directory checked on load, through the Python API as through the CLI
(the damages are checkpoints.toml's, applied by tests/reliability/checkpoints.py), and the
save format: matching save ids, readable modes, older checkpoints still loading."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures_checkpoint import tiny_classifier, write_tiny_checkpoint
from gptclf.api import Classifier
from gptclf.checkpoint import load_classifier
from gptclf.errors import GptclfError
from test_reliability import CASES, function

DAMAGES = [c for c in CASES if c.area == "checkpoints" and c.setup]


@pytest.mark.parametrize("case", DAMAGES, ids=lambda c: c.id)
def test_the_api_names_every_damage(case, reviews_run: Path, tmp_path: Path) -> None:
    """`Classifier.load` on each damaged copy: the CLI's one-line error, or a working classifier."""
    run = tmp_path / "run_copy"
    shutil.copytree(reviews_run, run)
    function(case.setup)(tmp_path, run)
    if case.expect == "error":
        with pytest.raises(GptclfError) as error:
            Classifier.load(run)
        assert "\n" not in str(error.value)
        assert case.message.lower() in str(error.value).lower()
    else:
        assert Classifier.load(run).predict(["great value"])[0].label
    if case.check:
        function(case.check)(tmp_path, "")


def test_config_and_weights_share_a_save_id(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path, seed=1)
    config = json.loads((tmp_path / "config.json").read_text())
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata()["save_id"] == config["save_id"]
    write_tiny_checkpoint(tmp_path, seed=2)
    assert json.loads((tmp_path / "config.json").read_text())["save_id"] != config["save_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_meta.json",
    ]  # fmt: skip


def test_saved_files_are_readable_as_a_plain_open_makes_them(tmp_path: Path) -> None:
    """Not the 0o600 of a temporary file: a checkpoint is read by other users (a server)."""
    (tmp_path / "plain").write_bytes(b"")
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    write_tiny_checkpoint(tmp_path / "run")
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == plain, path.name


def test_a_checkpoint_from_before_save_ids_loads(tmp_path: Path) -> None:
    state = write_tiny_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["save_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "model.safetensors"))  # no metadata
    load_classifier(tmp_path)


def test_half_precision_weights_load_as_the_models_float32(tmp_path: Path) -> None:
    state = write_tiny_checkpoint(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    save_file(half, str(tmp_path / "model.safetensors"), metadata=metadata)
    model, _, _ = load_classifier(tmp_path)
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, half[key].float()), key


def test_a_lora_checkpoint_round_trips(tmp_path: Path) -> None:
    """config.json's `lora` (apply_lora's arguments) passes the checks and rebuilds the adapters."""
    from fixtures_checkpoint import tiny_tokenizer
    from gptclf.checkpoint import save_classifier
    from gptclf.lora import apply_lora

    model, info = tiny_classifier()
    info.lora = {"rank": 2, "alpha": 4.0, "targets": "attention", "last_blocks": 1}
    apply_lora(model, **info.lora)
    save_classifier(tmp_path, model.state_dict(), tiny_tokenizer(), info)
    loaded, _, _ = load_classifier(tmp_path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
