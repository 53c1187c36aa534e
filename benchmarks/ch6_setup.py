"""The chapter-6 starting point shared by speed.py and ch6_gap.py: the book's GPT-2-small shape
with random weights (its own `GPTModel`, seeded), converted for gptclf, and gptclf's side of the
comparison (`ours*`: `train.fit` from those weights and the book's class head)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"  # generated weights/splits; not committed
EPOCHS = 5


# The book's GPT_CONFIG_124M with the chapter-6 settings: no dropout, q/k/v biases.
BOOK_GPT2 = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def book_gpt2_classifier(seed: int):
    """The book's GPTModel with random weights (`seed`) and its class head: `out_head` replaced
    by `nn.Linear(768, 2)`, drawn right after the model, as in bench_ch6_book."""
    import torch
    from llms_from_scratch.ch04 import GPTModel

    torch.manual_seed(seed)
    model = GPTModel(BOOK_GPT2)
    model.out_head = torch.nn.Linear(BOOK_GPT2["emb_dim"], 2)
    return model


def book_gpt2_weights(seed: int) -> Path:
    """The book side's starting point for ours: the book model's random weights converted to our
    keys and saved in the HF GPT-2 layout (a model directory `fit` loads), plus its class head."""
    import dataclasses

    from safetensors.torch import save_file

    from gptclf.tokenizer import installed_gpt2_bpe_files
    from gptclf.weights.book import config_from_book, convert_book_gpt
    from gptclf.weights.hf_gpt2 import save_hf_gpt2

    out = WORK / f"gpt2-small-book-random-seed{seed}"
    if not (out / "class_head.safetensors").exists():
        book = book_gpt2_classifier(seed)
        state = convert_book_gpt(
            {k: v for k, v in book.state_dict().items() if not k.startswith("out_head.")}
        )
        # No LM head to save (the class head replaced it): declare it tied, as GPT-2's is.
        config = dataclasses.replace(config_from_book(BOOK_GPT2), tie_embeddings=True)
        save_hf_gpt2(out, config, state)
        encoder, merges = installed_gpt2_bpe_files()
        shutil.copy(encoder, out / "vocab.json")
        shutil.copy(merges, out / "merges.txt")
        save_file(book.out_head.state_dict(), str(out / "class_head.safetensors"))
    return out


def ours(parts=None, **overrides) -> dict:
    """gptclf's `fit` with the chapter-6 epochs; `parts`: a `TrainParts` (e.g. the book's head)."""
    from gptclf.train import TrainConfig, fit

    start = time.perf_counter()
    m = fit(TrainConfig(progress=False, epochs=EPOCHS, out=None, **overrides), parts)
    return {
        "seconds": time.perf_counter() - start,
        "test_accuracy": m["test"]["accuracy"],
        "validation_accuracy": m["validation"]["accuracy"],
        "cache_seconds": m["cache_seconds"],
    }


def ours_from_book_weights(seed: int, parts=None, **overrides) -> dict:
    """`ours` from exactly the book's random weights and class head (book_gpt2_weights)."""
    from safetensors.torch import load_file

    directory = book_gpt2_weights(seed)
    head = load_file(directory / "class_head.safetensors")
    return ours_with_head(head, parts, model=str(directory), seed=seed, **overrides)


def ours_with_head(head: dict, parts=None, **overrides) -> dict:
    """`ours` with the class head's initial weights given (the book side's)."""
    import dataclasses

    from gptclf.classifier import SequenceClassifier
    from gptclf.train import TrainParts

    def classifier(backbone, num_classes, pool):
        # fit() draws a fresh head (as before: same RNG use); the book's was drawn after its
        # model, from another RNG state, so its weights replace the drawn ones.
        model = SequenceClassifier(backbone, num_classes, pool)
        model.head.load_state_dict(head)
        return model

    return ours(dataclasses.replace(parts or TrainParts(), classifier=classifier), **overrides)
