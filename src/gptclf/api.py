"""Python API over a saved classifier: the same code path the CLI (and later the server) uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptclf import batching
from gptclf.checkpoint import ClassifierInfo, load_classifier
from gptclf.classifier import SequenceClassifier
from gptclf.data import LabeledTexts
from gptclf.errors import GptclfError
from gptclf.inference import evaluate, predict_logits
from gptclf.tokenizer import Tokenizer


@dataclass
class Prediction:
    text: str
    label: str
    probability: float  # of the predicted label
    probabilities: dict[str, float]


class Classifier:
    """A trained classifier: `Classifier.load(DIR).predict(["text", ...])`."""

    def __init__(self, model: SequenceClassifier, tokenizer: Tokenizer, info: ClassifierInfo):
        self.model, self.tokenizer, self.info = model, tokenizer, info

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        return cls(*load_classifier(Path(directory)))

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def _encode(self, texts: list[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise GptclfError(f"text #{i + 1} is empty")
        return batching.encode(self.tokenizer, texts, self.info.max_length)

    def _pad_length(self) -> int | None:
        # Pad as in training: the stored length for longest/max_context, per batch for dynamic.
        return None if self.info.padding == "dynamic" else self.info.max_length

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(N, num_classes) class probabilities."""
        logits = predict_logits(
            self.model,
            self._encode(texts),
            batch_size=batch_size,
            pad_id=self.tokenizer.pad_id,
            length=self._pad_length(),
        )
        return logits.softmax(dim=-1)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        probs = self.predict_proba(texts, batch_size)
        out = []
        for text, row in zip(texts, probs.tolist(), strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                Prediction(
                    text, self.labels[best], row[best], dict(zip(self.labels, row, strict=True))
                )
            )
        return out

    def evaluate(self, data: LabeledTexts, batch_size: int = 32) -> dict[str, Any]:
        """Metrics on labelled texts whose label names match the checkpoint's."""
        index = {name: i for i, name in enumerate(self.labels)}
        # Integer labels (e.g. the 0/1 of `gptclf data split` files) are class indices.
        index.update({str(i): i for i in range(len(self.labels)) if str(i) not in index})
        unknown = sorted(set(data.label_names[y] for y in data.labels) - set(index))
        if unknown:
            raise GptclfError(f"labels {unknown} are not among the classifier's {self.labels}")
        labels = [index[data.label_names[y]] for y in data.labels]
        return evaluate(
            self.model,
            self._encode(data.texts),
            labels,
            batch_size=batch_size,
            pad_id=self.tokenizer.pad_id,
            length=self._pad_length(),
        )
