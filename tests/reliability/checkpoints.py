"""Damages to a run directory, for checkpoints.toml: each `setup(tmp, run)` breaks one file of
`run` (a copy of the tiny classifier) in one way; `check(tmp, output)` asserts what must not
have happened (a pickle run)."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

PICKLE_RAN = "pickle-ran"  # the file a malicious pickle creates in tmp when it is unpickled


# --- helpers -----------------------------------------------------------------------------------


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(edit(data) or data, indent=2), encoding="utf-8")


def _edit_config(run: Path, edit: Callable[[dict], Any]) -> None:
    _edit_json(run / "config.json", edit)


def _edit_model_config(run: Path, **fields: Any) -> None:
    _edit_config(run, lambda c: c["model_config"].update(fields))


def _edit_weights(run: Path, edit: Callable[[dict], Any]) -> None:
    """Rewrite model.safetensors with `edit` applied to its tensors (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    edit(state)
    save_file(state, str(path), metadata=metadata)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


class _Touch:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _write_pickle(tmp: Path, run: Path) -> None:
    (run / "pytorch_model.bin").write_bytes(pickle.dumps(_Touch(tmp / PICKLE_RAN)))


# --- config.json -------------------------------------------------------------------------------


def config_missing(tmp: Path, run: Path) -> None:
    (run / "config.json").unlink()


def config_empty(tmp: Path, run: Path) -> None:
    _empty(run / "config.json")


def config_truncated(tmp: Path, run: Path) -> None:
    _truncate(run / "config.json")


def config_binary(tmp: Path, run: Path) -> None:
    (run / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")


def config_not_object(tmp: Path, run: Path) -> None:
    (run / "config.json").write_text("[1, 2, 3]\n")


def config_other_format(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(format="transformers"))


def config_labels_string(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(labels="negative,neutral,positive"))


def config_fewer_labels(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(labels=c["labels"][:2]))


def config_n_layer(tmp: Path, run: Path) -> None:
    _edit_model_config(run, n_layer=3)


def config_d_model(tmp: Path, run: Path) -> None:
    _edit_model_config(run, d_model=64, head_dim=16)


def config_vocab_size(tmp: Path, run: Path) -> None:
    _edit_model_config(run, vocab_size=50000)


def config_n_layer_string(tmp: Path, run: Path) -> None:
    _edit_model_config(run, n_layer="2")


def config_n_head_zero(tmp: Path, run: Path) -> None:
    _edit_model_config(run, n_head=0, n_kv_head=0)


def config_pool_unknown(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(pool="middle"))


def config_max_length_over_context(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(max_length=4096))


def config_thresholds_short(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(multi_label=True, thresholds=[0.5]))


def config_lora_unknown(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c.update(lora={"rank": 4, "alpha": 8, "bogus": 1}))


def config_precision_unknown(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c["train_config"].update(precision="fp64"))


def config_no_data(tmp: Path, run: Path) -> None:
    _edit_config(run, lambda c: c["train_config"].update(data=None))


def config_other_save(tmp: Path, run: Path) -> None:
    """config.json from another save than model.safetensors: what a save interrupted between
    its renames, or a file copied from another run, leaves."""
    _edit_config(run, lambda c: c.update(save_id="0" * 32))


# --- model.safetensors -------------------------------------------------------------------------


def weights_missing(tmp: Path, run: Path) -> None:
    (run / "model.safetensors").unlink()


def weights_empty(tmp: Path, run: Path) -> None:
    _empty(run / "model.safetensors")


def weights_truncated(tmp: Path, run: Path) -> None:
    _truncate(run / "model.safetensors")


def weights_header_corrupt(tmp: Path, run: Path) -> None:
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"#" * 16  # the JSON header's first bytes
    path.write_bytes(bytes(data))


def weights_header_huge(tmp: Path, run: Path) -> None:
    path = run / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])


def weights_tensor_missing(tmp: Path, run: Path) -> None:
    _edit_weights(run, lambda s: s.pop("head.bias"))


def weights_tensor_extra(tmp: Path, run: Path) -> None:
    import torch

    _edit_weights(run, lambda s: s.update({"backbone.h.0.attn.extra": torch.zeros(4)}))


def weights_integer_dtype(tmp: Path, run: Path) -> None:
    _edit_weights(run, lambda s: s.update({"head.weight": s["head.weight"].long()}))


def weights_pickle_only(tmp: Path, run: Path) -> None:
    (run / "model.safetensors").unlink()
    _write_pickle(tmp, run)


def weights_pickle_beside(tmp: Path, run: Path) -> None:
    _write_pickle(tmp, run)


def weights_only_temp(tmp: Path, run: Path) -> None:
    """What a kill during the very first save leaves: a temporary file, no model.safetensors."""
    (run / "model.safetensors").rename(run / ".model.safetensors.k1ll3d.tmp")


def temps_beside(tmp: Path, run: Path) -> None:
    """Half-written temporary files of a killed later save beside an intact checkpoint."""
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        data = (run / name).read_bytes()
        (run / f".{name}.k1ll3d.tmp").write_bytes(data[: len(data) // 2])


# --- tokenizer.json, tokenizer_meta.json -------------------------------------------------------


def tokenizer_missing(tmp: Path, run: Path) -> None:
    (run / "tokenizer.json").unlink()


def tokenizer_empty(tmp: Path, run: Path) -> None:
    _empty(run / "tokenizer.json")


def tokenizer_truncated(tmp: Path, run: Path) -> None:
    _truncate(run / "tokenizer.json")


def tokenizer_not_a_tokenizer(tmp: Path, run: Path) -> None:
    (run / "tokenizer.json").write_text('{"model": 5}')


def tokenizer_over_embedding(tmp: Path, run: Path) -> None:
    """A token id beyond the embedding's rows (50257): it would index past the matrix."""
    token = {"content": "<|extra|>", "single_word": False, "lstrip": False, "rstrip": False}
    extra = {"id": 50300, **token, "normalized": False, "special": True}
    _edit_json(run / "tokenizer.json", lambda t: t["added_tokens"].append(extra))


def meta_missing(tmp: Path, run: Path) -> None:
    (run / "tokenizer_meta.json").unlink()


def meta_pad_unknown(tmp: Path, run: Path) -> None:
    _edit_json(run / "tokenizer_meta.json", lambda m: m.update(pad_token="<pad>"))


def meta_wrong_types(tmp: Path, run: Path) -> None:
    _edit_json(run / "tokenizer_meta.json", lambda m: m.update(eos_token=50256))


# --- metrics.json ------------------------------------------------------------------------------


def metrics_truncated(tmp: Path, run: Path) -> None:
    _truncate(run / "metrics.json")


def metrics_not_object(tmp: Path, run: Path) -> None:
    (run / "metrics.json").write_text('["accuracy", 0.9]\n')


# --- checks ------------------------------------------------------------------------------------


def no_pickle_ran(tmp: Path, output: str) -> None:
    assert not (tmp / PICKLE_RAN).exists(), "a pickle in the run directory was unpickled"
