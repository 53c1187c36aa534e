"""Python API: train, load, predict, evaluate — the code path the CLI and the HTTP server use.

clf = Classifier.train(data="reviews.csv", text_columns=["title", "body"], label_column="stars",
                       model="gpt2-small", out="runs/reviews")   # same options as `gptclf train`
clf = Classifier.load("runs/reviews")
clf.predict(["great value", "broke after a week"])     # [Prediction(label, probability, ...)]
clf.predict_file("new.csv", "scored.csv")              # streams; keeps the input columns

A multi-label classifier (`train(multi_label=True)`) predicts for each text every label whose
sigmoid probability reaches its threshold (`Prediction.labels`, the checkpoint's thresholds).
`Classifier.load` of a directory made by `gptclf ensemble` returns an `ensemble.Ensemble`: the
same interface over the mean of its members' probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gptclf import batching, tables
from gptclf.checkpoint import ClassifierInfo, load_classifier
from gptclf.choices import INFERENCE_PRECISIONS
from gptclf.classifier import SequenceClassifier
from gptclf.data import (
    DEFAULT_LABEL_COLUMN,
    DEFAULT_TEXT_COLUMNS,
    LabeledTexts,
    align_labels,
    load_dataset,
    splits_from_config,
)
from gptclf.errors import GptclfError
from gptclf.fileio import read_json_object
from gptclf.inference import predict_logits, resolve_precision
from gptclf.metrics import logit_metrics, multilabel_logit_metrics, sigmoid
from gptclf.quantize import quantize_linears
from gptclf.tokenizer import Tokenizer
from gptclf.train_config import AT_LEAST_1, check_number

log = logging.getLogger(__name__)

FILE_CHUNK_ROWS = 256  # rows read, classified and written at a time by predict_file


@dataclass
class Prediction:
    """One text's prediction. Single-label: `label` (the most probable class), its
    `probability` and every class's (softmax, summing to 1). Multi-label: `labels`, every label
    whose probability reaches its threshold, most probable first (possibly none), and each
    label's own probability (sigmoid); `label`/`probability` are then the first of `labels`
    (None when no label is chosen)."""

    text: str
    label: str | None
    probability: float | None  # of `label`
    probabilities: dict[str, float]
    labels: list[str] | None = None  # multi-label only

    def to_dict(self) -> dict[str, Any]:
        """What `gptclf predict` prints and the server returns (without the text)."""
        if self.labels is not None:
            return {"labels": self.labels, "probabilities": self.probabilities}
        return {
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
        }


class Classifier:
    """A trained classifier: `Classifier.load(DIR).predict(["text", ...])`."""

    def __init__(
        self,
        model: SequenceClassifier,
        tokenizer: Tokenizer,
        info: ClassifierInfo,
        directory: Path | None = None,
        precision: str | None = None,
    ):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.directory = directory
        # Inference precision: fp32, bf16 (autocast) or int8 (dynamic quantization of every
        # nn.Linear, CPU only); default: the precision the checkpoint was trained with, except
        # bf16 where this machine only emulates it (several times slower than fp32 there).
        self.precision = precision or info.train_config.get("precision", "fp32")
        if self.precision not in INFERENCE_PRECISIONS:
            raise GptclfError(
                f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {self.precision!r}"
            )
        device = next(model.parameters()).device
        if self.precision == "auto" or (precision is None and self.precision == "bf16"):
            self.precision = resolve_precision("auto", device)
            log.info(
                "predicting in %s on %s (bf16 only where it is native)", self.precision, device
            )
        if self.precision == "int8":
            self.model = quantize_linears(model)

    @classmethod
    def load(cls, directory: str | Path, precision: str | None = None) -> Classifier:
        """Load a checkpoint directory written by `gptclf train` / `Classifier.train`, or an
        ensemble written by `gptclf ensemble` (an `ensemble.Ensemble`: the same interface)."""
        from gptclf import ensemble  # it builds on this class

        if ensemble.is_ensemble(Path(directory)):
            return ensemble.load_ensemble(Path(directory), precision)
        return Classifier(
            *load_classifier(Path(directory)), directory=Path(directory), precision=precision
        )

    @classmethod
    def train(cls, recipe: str | None = None, **options: Any) -> Classifier:
        """Train like `gptclf train` into `out` (default runs/latest) and return the kept (best or
        last) checkpoint, loaded. `recipe`: book, smollm2 or auto (default: smollm2, but book when a
        `model` is given); options = `TrainConfig` fields, e.g. data, text_columns, label_column,
        model, epochs, out."""
        from gptclf.out_dir import prepare_out
        from gptclf.train import TrainConfig, fit
        from gptclf.train_config import config_for

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown := sorted(set(options) - known):
            raise GptclfError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        cfg = config_for(recipe, **options)
        if cfg.out is None:
            raise GptclfError("Classifier.train needs an out directory to load the result from")
        prepare_out(cfg)  # as `gptclf train`: a bad `out` fails before any model loads
        if recipe == "auto":
            from gptclf.auto import fit_auto

            fit_auto(cfg)
        else:
            fit(cfg)
        return cls.load(cfg.out)

    @staticmethod
    def cross_validate(recipe: str | None = None, folds: int = 5, **options: Any) -> dict[str, Any]:
        """Stratified k-fold cross-validation of a training config, like `gptclf cv` (cv.py):
        the options of `train`; returns what `out`/cv.json holds (per fold, `mean`, `std`,
        `pooled`); `out=None` writes nothing."""
        from gptclf.cv import cross_validate
        from gptclf.train_config import TrainConfig, config_for

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown := sorted(set(options) - known):
            raise GptclfError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        if recipe == "auto":
            raise GptclfError("cross_validate takes one configuration, not recipe 'auto'")
        return cross_validate(config_for(recipe, **options), folds=folds)

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def multi_label(self) -> bool:
        """Whether each text gets zero or more labels (sigmoid outputs, `thresholds`)."""
        return self.info.multi_label

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: each label's decision threshold (0.5, or tuned on validation)."""
        if not self.multi_label:
            return None
        return list(self.info.thresholds or [0.5] * len(self.labels))

    @property
    def label_sep(self) -> str | None:
        """Multi-label: the separator of the labels in a table cell (None: single-label)."""
        return self.info.train_config.get("label_sep", "|") if self.multi_label else None

    @property
    def text_columns(self) -> list[str]:
        """The text column(s) it was trained on (the default for files to evaluate or predict)."""
        return list(self.info.train_config.get("text_columns") or DEFAULT_TEXT_COLUMNS)

    @property
    def label_column(self) -> str:
        return self.info.train_config.get("label_column") or DEFAULT_LABEL_COLUMN

    @property
    def truncation(self) -> str:
        return self.info.train_config.get("truncation", "head")

    @property
    def prompt(self) -> str | None:
        """The template each text was classified inside during training (None: the bare text)."""
        return self.info.train_config.get("prompt")

    def model_card(self) -> dict[str, Any]:
        """What the server's /info says about the model (the page's model card)."""
        return {
            "base": self.info.base,
            "train_model": self.info.train_config.get("model"),
            "pool": self.info.pool,
            "max_length": self.info.max_length,
            "truncation": self.truncation,
            "trainable": self.info.train_config.get("trainable"),
        }

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The run's metrics.json, if the directory has one."""
        path = self.directory / "metrics.json" if self.directory else None
        if path is None or not path.is_file():
            return None
        return read_json_object(path)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise GptclfError(f"text #{i + 1} is empty")
        return batching.encode(
            self.tokenizer, texts, self.info.max_length, self.truncation, self.prompt
        )

    def _pad_length(self) -> int | None:
        # Pad as in training: the stored length for longest/max_context, per batch for dynamic.
        return None if self.info.padding == "dynamic" else self.info.max_length

    def _logits(self, texts: list[str], batch_size: int) -> torch.Tensor:
        # 0 made range() fail; a negative size gave no rows at all, silently
        check_number("batch_size", batch_size, AT_LEAST_1)
        return predict_logits(
            self.model,
            self._encode(texts),
            batch_size=batch_size,
            pad_id=self.tokenizer.pad_id,
            length=self._pad_length(),
            precision="bf16" if self.precision == "bf16" else "fp32",
        )

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(N, num_classes) class probabilities, columns in the order of `labels` (multi-label:
        each label's own probability, the sigmoid of its logit)."""
        logits = self._logits(texts, batch_size)
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

    def chosen(self, probabilities: list[float]) -> list[str]:
        """Multi-label: the labels at or above their thresholds, most probable first."""
        hits = [
            c for c, (p, t) in enumerate(zip(probabilities, self.thresholds, strict=True)) if p >= t
        ]
        return [self.labels[c] for c in sorted(hits, key=lambda c: -probabilities[c])]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        """The most probable label of each text, with every class's probability."""
        if isinstance(texts, str):
            raise GptclfError("predict takes a list of texts, not one string")
        probs = self.predict_proba(texts, batch_size)
        out = []
        for text, row in zip(texts, probs.tolist(), strict=True):
            probabilities = dict(zip(self.labels, row, strict=True))
            if self.multi_label:
                labels = self.chosen(row)
                top = labels[0] if labels else None
                out.append(
                    Prediction(text, top, probabilities.get(top), probabilities, labels=labels)
                )
                continue
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                Prediction(
                    text, self.labels[best], row[best], dict(zip(self.labels, row, strict=True))
                )
            )
        return out

    def load_data(
        self,
        path: str | Path,
        text_columns: list[str] | None = None,
        label_column: str | None = None,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
    ) -> LabeledTexts:
        """A labelled file, read with the columns it was trained on unless others are given
        (multi-label: label cells split by the training's --label-sep). ``encoding``,
        ``delimiter``: as --encoding, --delimiter (default: UTF-8 and by suffix, see tables.py)."""
        return load_dataset(
            path,
            text_columns or self.text_columns,
            label_column or self.label_column,
            self.label_sep,
            encoding=encoding,
            delimiter=delimiter,
        )

    def training_splits(
        self, *, encoding: str | None = None, delimiter: str | None = None
    ) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
        """The train, validation and test splits it was trained on, read with its table options
        unless ``encoding`` or ``delimiter`` is given (`gptclf evaluate` without --data)."""
        if not self.info.train_config.get("data"):  # e.g. a classifier gptclf did not train
            raise GptclfError(
                f"{self.directory or 'this classifier'} does not record the data it was trained on: give the texts to "
                "evaluate (--data FILE)"
            )
        given = {"encoding": encoding, "delimiter": delimiter}
        given = {k: v for k, v in given.items() if v is not None}
        return splits_from_config({**self.info.train_config, **given})

    def evaluate(
        self,
        data: LabeledTexts | str | Path,
        batch_size: int = 32,
        errors: int = 0,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
    ) -> dict[str, Any]:
        """Metrics on labelled texts whose label names match the checkpoint's: ``data``, or the
        file at that path (``load_data`` with ``encoding`` and ``delimiter``).

        ``errors=N`` adds ``errors``: the N most confident mistakes (highest probability given to
        a wrong label), each with its row number, text, true and predicted label.
        Multi-label: multi-label metrics at the checkpoint's thresholds; see
        ``most_confident_multilabel_errors``.
        """
        if not isinstance(data, LabeledTexts):
            data = self.load_data(data, encoding=encoding, delimiter=delimiter)
        elif encoding is not None or delimiter is not None:
            raise GptclfError("encoding and delimiter are for a file, not for LabeledTexts")
        if self.multi_label:
            return self._evaluate_multilabel(data, batch_size, errors)
        labels = align_labels(data, self.labels, "the data", integer_indices=True).labels
        logits = self._logits(data.texts, batch_size).numpy()
        metrics = logit_metrics(logits, labels, self.labels)
        if errors:
            metrics["errors"] = most_confident_errors(
                data.texts, labels, logits, self.labels, errors
            )
        return metrics

    def _evaluate_multilabel(
        self, data: LabeledTexts, batch_size: int, errors: int
    ) -> dict[str, Any]:
        if not data.multi_label:
            raise GptclfError(
                "the classifier is multi-label: read the data with Classifier.load_data"
            )
        targets = align_labels(data, self.labels, "the data").targets
        logits = self._logits(data.texts, batch_size).numpy()
        metrics = multilabel_logit_metrics(logits, targets, self.labels, self.thresholds)
        if errors:
            metrics["errors"] = most_confident_multilabel_errors(
                data.texts, targets, sigmoid(logits), self, errors
            )
        return metrics

    def predict_file(
        self,
        input: str | Path,
        output: str | Path,
        text_columns: list[str] | None = None,
        batch_size: int = 32,
        progress: bool = False,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
    ) -> dict[str, Any]:
        """Classify every row of a CSV/TSV/JSONL/Parquet file into a CSV/TSV/JSONL file.

        Rows are streamed in chunks of `FILE_CHUNK_ROWS`; the output keeps the input columns and
        adds ``predicted_label``, ``predicted_probability`` and, per class, ``probability_<label>``
        (JSONL: a ``probabilities`` object). Multi-label: ``predicted_labels`` (CSV/TSV: joined
        by the label separator, most probable first; JSONL: a list) instead of the first two.
        Rows with an empty text keep empty predictions. The output appears only once complete
        (temporary file, renamed). Returns counts. ``encoding``, ``delimiter``: the input's, as
        --encoding, --delimiter (the output is UTF-8, delimited by its suffix).
        """
        tables.table_format(output, tables.WRITE_FORMATS)  # fail before reading anything
        check_number("batch_size", batch_size, AT_LEAST_1)
        if Path(output).resolve() == Path(input).resolve():
            raise GptclfError("--output must differ from --input")
        wanted = text_columns or self.text_columns
        rows = empty = 0
        with tables.open_table(input, encoding, delimiter) as table:
            columns = tables.resolve_columns(table.columns, wanted, input)
            jsonl = tables.table_format(output) == "jsonl"
            added = (
                ["predicted_labels"]
                if self.multi_label
                else ["predicted_label", "predicted_probability"]
            )
            added += ["probabilities"] if jsonl else [f"probability_{n}" for n in self.labels]
            if clash := [c for c in added if c in table.columns]:
                log.warning("input columns %s are replaced by the predictions", clash)
            out_columns = [c for c in table.columns if c not in added] + added
            bar = tqdm(
                total=table.size, unit="B", unit_scale=True, desc="predict", disable=not progress
            )
            with bar, tables.TableWriter(output, out_columns) as writer:
                chunk: list[tuple[dict[str, Any], str]] = []
                for where, row in table:
                    text = tables.row_text(row, columns, where, empty_ok=True)
                    chunk.append((row, text))
                    if len(chunk) == FILE_CHUNK_ROWS:
                        empty += self._write_chunk(chunk, writer, jsonl, batch_size)
                        rows += len(chunk)
                        chunk = []
                        bar.update(table.bytes_read - bar.n)
                if chunk:
                    empty += self._write_chunk(chunk, writer, jsonl, batch_size)
                    rows += len(chunk)
                bar.update(table.bytes_read - bar.n)
        if empty:
            log.warning("%d of %d rows have an empty text and were not classified", empty, rows)
        return {"rows": rows, "empty": empty, "output": str(output)}

    def _write_chunk(self, chunk, writer: tables.TableWriter, jsonl: bool, batch_size: int) -> int:
        texts = [text for _, text in chunk if text]
        probs = iter(self.predict_proba(texts, batch_size).tolist() if texts else [])
        for row, text in chunk:
            p = next(probs) if text else None
            row = dict(row)
            if self.multi_label:
                chosen = self.chosen(p) if p else None
                row["predicted_labels"] = (
                    chosen if jsonl or chosen is None else self.label_sep.join(chosen)
                )
            else:
                best = max(range(len(p)), key=p.__getitem__) if p else None
                row["predicted_label"] = self.labels[best] if p else None
                row["predicted_probability"] = p[best] if p else None
            if jsonl:
                row["probabilities"] = dict(zip(self.labels, p, strict=True)) if p else None
            else:
                for name, value in zip(self.labels, p or [None] * len(self.labels), strict=True):
                    row[f"probability_{name}"] = value
            writer.write(row)
        return len(chunk) - len(texts)


def most_confident_errors(
    texts: list[str], labels: list[int], logits: np.ndarray, names: list[str], n: int
) -> list[dict[str, Any]]:
    """The `n` misclassified examples whose wrong prediction had the highest probability."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != np.asarray(labels))
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:n]
    return [
        {
            "row": int(i) + 1,
            "text": texts[i],
            "label": names[labels[i]],
            "predicted": names[preds[i]],
            "probability": float(probs[i, preds[i]]),
            "probability_of_label": float(probs[i, labels[i]]),
        }
        for i in wrong
    ]


def most_confident_multilabel_errors(
    texts: list[str], targets: np.ndarray, probs: np.ndarray, clf: Classifier, n: int
) -> list[dict[str, Any]]:
    """The `n` texts whose predicted label set is wrong, most confidently wrong first: by the
    largest distance from its threshold of a wrong decision (a label predicted that the text
    does not have, or missed)."""
    limits = np.asarray(clf.thresholds)
    chosen = probs >= limits
    wrong = chosen != np.asarray(targets).astype(bool)
    margin = np.where(wrong, np.abs(probs - limits), -1.0).max(axis=1)
    rows = np.flatnonzero(wrong.any(axis=1))
    rows = rows[np.argsort(-margin[rows], kind="stable")][:n]
    names = clf.labels
    return [
        {
            "row": int(i) + 1,
            "text": texts[i],
            "labels": [names[c] for c in np.flatnonzero(targets[i])],
            "predicted": clf.chosen(probs[i].tolist()),
            "wrong": {names[c]: float(probs[i, c]) for c in np.flatnonzero(wrong[i])},
        }
        for i in rows
    ]
