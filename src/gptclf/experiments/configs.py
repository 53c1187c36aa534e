"""Every row of the results table as a named config: `TrainConfig` overrides + what it answers.

The seven questions of the book's bonus experiments (chapter 6), asked of the models this machine
has offline: which layers to train, which token feeds the head, BERT vs GPT, the causal mask,
model size, LoRA, padding. Each row varies one factor of a reference and spells out every factor
(`FACTORS`), so `docs/RESULTS.md` can show what differs. `book` is the test accuracy (%) of the
corresponding row of the book's bonus table (GPT-2 small, pretrained, one seed, unless `book_row`
says otherwise): a point of comparison, not a target.

References:
- `SMOLLM2` = `RECIPES["smollm2"]` (the main job: SmolLM2-135M, last two blocks, last real
  token, dynamic padding in random batches, fp32, lr 2e-4, 5 epochs), with the class head's bias
  the rows ran with (the recipe's head has none since); most rows vary one factor of it.
- `BOOK` = the `TrainConfig` defaults (the book's chapter 6: GPT-2 small, last token, longest
  padding, fp32, lr 5e-5); the pretrained GPT-2 rows use it, so they are the book's rows exactly.
- `_SEARCH` = the search that chose the recipe (question `tuning`, once
  `benchmarks/tune_smollm2.py`): SmolLM2-135M in bf16 with length-bucketed batches, as it ran.

Epochs, and what the table costs on a 2-core CPU (`cpu_minutes`, per seed, fp32: the measured time
where the row ran, frozen-prefix cache included: an AVX2 AMD EPYC for most rows, an AVX512 one for
smollm2-all, smollm2-lora, smollm2-pad-longest, minilm-all-full-train, gpt2-small-random and
gpt2-medium-random;
otherwise estimated from `benchmarks/results/tune_smollm2.jsonl` (bf16 on a bf16-native
CPU) times ~2.4, what fp32 costs against native bf16. Rows that train in bf16 (smollm2-bf16,
the search's) give a bf16 time on a bf16-native CPU instead, the search's rows their own seed-123
time in that file; `gptclf experiments list` warns where bf16 is emulated):
- Rows whose trainable part sits on top of frozen blocks (head, last block, last two blocks, LoRA
  in the last blocks, any pooling, padding or mask) are cheap: the prefix cache runs the frozen blocks once per example,
  and each epoch only runs the trainable top. They keep the book's 5 epochs.
- `trainable=all` and LoRA on a 135M model cannot be cached (something trainable sits in block 0),
  so every step runs all 30 blocks forward and backward: about 5 (LoRA) to 7 (all) minutes per
  epoch in fp32 on the AVX512 machine, as measured (the hour per epoch estimated before from the
  bf16 tuning log was far off). They get 2 epochs (the tuning log's larger trainable sets peaked at
  epoch 1-2), and all-layer finetuning of pretrained weights uses the book's lr 5e-5 (2e-4 was
  tuned for one block).
- Random-init rows train every layer from scratch, 2 epochs each, at the recipe's lr 2e-4.
- `gpu_only` rows would take many hours (or days) on that CPU; the runner skips them without CUDA.
- The depth rows (`--layers K`, not run yet) are estimated from the smollm2 row's 5 minutes,
  scaled by the K of its 30 blocks they keep.
Everything runnable offline adds up to about 275 minutes per seed, 72 of them the search's
(`gptclf experiments list` sums the estimates). Pretrained GPT-2 rows run only where their
weights are cached.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from gptclf.config import PRESETS
from gptclf.errors import GptclfError
from gptclf.train_config import RECIPES, TrainConfig


@dataclass(frozen=True)
class Question:
    title: str  # section heading in docs/RESULTS.md
    text: str  # what it asks, one sentence
    references: tuple[str, ...] = ()  # rows of other questions shown in its table for comparison
    # A search: its rows compete on validation accuracy (ties: validation loss) and the report
    # names the winner; test accuracy is shown, never used to choose.
    search: bool = False
    # Its chart: bars per row, or "layers": test accuracy and train time against the blocks
    # kept (`layers`; a row without it reads every block of its model).
    chart: Literal["bars", "layers"] = "bars"


SMOLLM2_DEPTH = PRESETS["smollm2-135m"]["n_layer"]  # 30 blocks
QUESTIONS: dict[str, Question] = {
    "trainable": Question(
        "Which layers should train?",
        "Only the class head, the last block, the last two blocks, or every layer?",
    ),
    "pool": Question(
        "Last token or first token?",
        "Which position's hidden state should feed the class head: the last position (pads "
        "included, the book), the last real token, the first token, or the mean over real tokens?",
        references=("smollm2",),
    ),
    "bert_vs_gpt": Question(
        "BERT or GPT?",
        "Does a small bidirectional encoder (all-MiniLM-L6-v2, 22.7M) classify as well as a "
        "decoder (SmolLM2-135M)?",
        references=("smollm2", "smollm2-all"),
    ),
    "causal_mask": Question(
        "Does the causal mask matter?",
        "What changes when the decoder lets every token attend to every real token?",
        references=("smollm2", "smollm2-pool-first"),
    ),
    "model_size": Question(
        "Does a bigger model help?",
        "Pretrained GPT-2 sizes (the book's rows, where their weights are cached) and GPT-2 "
        "shapes trained from a random init.",
        references=("smollm2",),
    ),
    "lora": Question(
        "Is LoRA as good as finetuning layers?",
        "LoRA adapters on every linear of the last two blocks or of every block, against "
        "finetuning those layers.",
        references=("smollm2", "smollm2-all"),
    ),
    "padding": Question(
        "How should batches be padded?",
        "To the longest training text, to the model's context, per batch (dynamic), or not at "
        "all (batch size 1 with gradient accumulation 8)?",
        references=("smollm2",),
    ),
    "precision": Question(
        "Does lower precision cost accuracy?",
        "The rows train in fp32; the recipe's run under bf16 autocast (fp32 master weights), "
        "which `--precision auto` picks where the CPU or GPU has native bf16, and with its "
        "frozen blocks in int8 (`--int8-prefix`: the prefix cache holds what they compute, and "
        "inference quantizes them the same way).",
        references=("smollm2",),
    ),
    "train_data": Question(
        "Do the messages the book's split leaves out help?",
        "The book undersamples ham to the 747 spam messages before it splits, so 4,078 ham "
        "messages train nothing. `split=book_full` keeps the book's validation and test rows "
        "and trains on every other message (minus copies of held-out texts), with class-weighted "
        "cross-entropy against the 9:1 imbalance. Cross-validated on the same 1,194 texts and "
        "folds as every row, the other messages joining every fold's training texts.",
        references=("smollm2", "minilm-mean"),
    ),
    "prompt": Question(
        "Does an instruction around the text help?",
        "Each text is read inside a fixed prompt that asks whether it is spam, so the pooled "
        "last token is the prompt's, the same in every text, and the frozen blocks compute it "
        "as an answer to the question (PromptEOL-style). Truncation never cuts the prompt.",
        references=("smollm2",),
    ),
    "tuning": Question(
        "Which recipe for SmolLM2?",
        "Which blocks train, the learning rate, the pooling: the search that chose the "
        "`smollm2` recipe, with its settings of the time (bf16, length-bucketed batches; the "
        "recipe later took random batches and `precision=auto`, rows `smollm2-bucket` and "
        "`smollm2-bf16`). Its first pass, seed 123 only and before this runner, is kept in "
        "`benchmarks/results/tune_smollm2.jsonl`.",
        references=("smollm2",),
        search=True,
    ),
}
QUESTIONS["no_finetune"] = Question(
    "Do I need to finetune at all?",
    "No network trains: zero-shot, the pretrained SmolLM2-135M-Instruct's own next-token "
    "probabilities of ' Yes' and ' No' after a prompt asking whether the text is spam (with "
    "the decision threshold chosen on the validation split: 'calibrated'); and a linear probe, "
    "logistic regression (C chosen on validation) on the frozen model's pooled features. "
    "Deterministic: one seed each.",
    references=("smollm2", "smollm2-head"),
)
QUESTIONS["ensemble"] = Question(
    "Does combining models help?",
    "The average of the class probabilities of rows trained separately: model families "
    "(SmolLM2, MiniLM, TF-IDF) seed by seed, and five seeds of one row. Nothing is trained for "
    "them: each result keeps its validation and test probabilities, and the ensemble rows "
    "average them. Their train time and parameters are their members' sums.",
    references=("smollm2", "minilm-all"),
)
QUESTIONS["depth"] = Question(
    "Which layer should the classifier read?",
    f"Only the first K of SmolLM2's {SMOLLM2_DEPTH} blocks are kept (`--layers K`) and the "
    "recipe's two trainable blocks are the top two of those K, so the class head reads "
    'layer K instead of the last. Skean et al. (2025, "Layer by Layer: Uncovering Hidden '
    'Representations in Language Models") find that intermediate layers of decoder LMs '
    "often give better features than the last one; fewer blocks also train and predict "
    "faster. The chart plots test accuracy and train time against K.",
    references=("smollm2",),
    chart="layers",
)
QUESTIONS["schedule"] = Question(
    "Can the recipe take fewer steps?",
    "Batches of 16 with the learning rate doubled (the linear scaling rule: the same step size "
    "per text), or 3 epochs instead of 5: half or three fifths of the recipe's optimizer steps, "
    "and a faster main job, if cross-validation says they cost nothing; and the larger batch "
    "with mean pooling (the pooling question's choice).",
    references=("smollm2",),
)
SPLIT_SEED = 123  # the book's split for every row and seed: seeds measure training noise only
BASELINE_QUESTION = "baseline"  # the TF-IDF row: shown beside every question's rows

# The factors each row spells out; the other TrainConfig fields keep their defaults (data, ...).
FACTORS = (
    "model", "weights", "split", "class_weights", "trainable", "pool", "padding", "causal",
    "lora_rank", "lora_alpha", "lora_targets", "lora_scaling", "lora_blocks", "batch_size",
    "grad_accum", "bucket", "lr", "epochs", "precision", "prompt", "layers",
)  # fmt: skip
_DEFAULTS = TrainConfig()
BOOK: dict[str, Any] = {f: getattr(_DEFAULTS, f) for f in FACTORS}
# The recipe's precision is `auto` (bf16 where native, else fp32); the rows pin fp32, so a row
# means the same run on every machine: bf16 is 7x slower than fp32 on a CPU without native
# bf16 (benchmarks/bf16_matmul.py) and gave the same accuracy (the smollm2-bf16 row).
# The rows also keep the class head's bias: they ran before `head_bias` existed, with one (a
# result without the option in its recorded TrainConfig counts as the default, True), and the
# recipe's bias-free head measured the same accuracy (README, "Export"). Without this pin the
# recipe's `head_bias=False` would make every cached smollm2 result stale.
SMOLLM2: dict[str, Any] = {**BOOK, **RECIPES["smollm2"], "precision": "fp32", "head_bias": True}
SPAM_PROMPT = 'Text message: "{text}"\nIs this text message spam? Answer:'
REFERENCE = "smollm2"  # the row every "setting" column is described against


@dataclass(frozen=True)
class Experiment:
    """One row of the table: how to train it and what it answers."""

    name: str
    question: str  # a key of QUESTIONS, or BASELINE_QUESTION
    label: str  # short, for tables and charts
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    book: str | None = None  # the book's test accuracy in %, e.g. "95.00" or "98.00–98.33"
    book_row: str | None = None  # which row of the book's table that is
    # gptclf.train.fit, the TF-IDF baseline, the average of other rows' probabilities, or a
    # row that trains no network (no_finetune.py: the LM's own answer, a frozen linear probe)
    method: Literal["fit", "tfidf", "ensemble", "zero_shot", "zero_shot_calibrated", "probe"] = (
        "fit"
    )
    # method "ensemble": the rows it averages, seed by seed (`pool_seeds`: one record averaging
    # every seed they share); computed from their cached results (ensembles.py), never trained
    members: tuple[str, ...] = ()
    pool_seeds: bool = False
    gpu_only: str | None = None  # why a CPU cannot run it in reasonable time (skipped without CUDA)
    # Per seed from scratch on a 2-core CPU, fp32, frozen-prefix cache included (measured on an
    # AVX2 AMD EPYC where the row ran there; later seeds that read the shared cache take less).
    cpu_minutes: float | None = None  # None: not on a CPU
    note: str = ""  # one line: why a factor differs from the reference, etc.

    def train_config(self, seed: int = 123, **extra: Any) -> TrainConfig:
        """The TrainConfig of one seed: no checkpoint, no report, no progress bar."""
        # no per-run baseline: the table has its own TF-IDF row
        settings = {**self.overrides, "out": None, "report": False, "progress": False}
        settings = {**settings, "baseline": False, **extra}
        # The seed varies training only: every row and seed uses the book's split (seed 123).
        return TrainConfig(**{**settings, "seed": seed, "split_seed": SPLIT_SEED})

    def book_values(self) -> list[float]:
        """The book's number(s) as floats (a range gives both ends)."""
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", self.book or "")]


def _smollm2(**changes: Any) -> dict[str, Any]:
    return {**SMOLLM2, **changes}


def _book(**changes: Any) -> dict[str, Any]:
    return {**BOOK, **changes}


_ALL_LR = 5e-5  # all-layer finetuning of pretrained weights: the book's lr (see the module doc)
_RANDOM = dict(weights="random", trainable="all", epochs=2)  # from scratch, every layer
# The recipe search as benchmarks/tune_smollm2.py ran it: its BASE on the TrainConfig defaults,
# so length-bucketed batches (`bucket`'s default, then and now), spelled out here.
_SEARCH = dict(
    model="smollm2-135m", pool="last_real", padding="dynamic", precision="bf16", epochs=5,
    bucket=True,
)  # fmt: skip


SMOLLM2_MINUTES = 5  # the smollm2 row's measured minutes per seed (its cpu_minutes)


def _depth(blocks: int) -> Experiment:
    """A row of the depth question: SmolLM2 cut to its first `blocks` blocks, the top two
    trained. Not run yet: its time is the smollm2 row's, scaled by the blocks kept."""
    return Experiment(
        f"smollm2-layers-{blocks}",
        "depth",
        f"first {blocks} of {SMOLLM2_DEPTH} blocks",
        _smollm2(layers=blocks),
        cpu_minutes=round(SMOLLM2_MINUTES * blocks / SMOLLM2_DEPTH, 1),
        note=f"cpu_minutes estimated: smollm2's {SMOLLM2_MINUTES:g} min x {blocks}/"
        f"{SMOLLM2_DEPTH} blocks",
    )


def _search(
    name: str, label: str, seconds: float, measured: bool = True, **changes: Any
) -> Experiment:
    """A row of the recipe search. Like the search it trains in bf16, so its cpu_minutes is a
    bf16 time on a CPU with native bf16, as smollm2-bf16's (the module doc): the search's own."""
    where = (
        "its seed-123 run in the search"
        if measured
        else "not reached by the search; from `tune-last-4-lr2e-4`, the same work:"
    )
    return Experiment(
        name,
        "tuning",
        label,
        {**BOOK, **_SEARCH, **changes},
        cpu_minutes=round(seconds / 30) / 2,
        note=f"cpu_minutes: {where} {seconds:.0f} s in bf16 on a bf16-native CPU "
        "(tune_smollm2.jsonl), a busy shared machine (the same last-block work took 92-332 s "
        "there): an upper estimate",
    )


EXPERIMENTS_LIST: list[Experiment] = [
    # 1. Which layers train
    Experiment(
        "smollm2-head", "trainable", "head only", _smollm2(trainable="head"),
        book="72.00", book_row="last layer (output head) only", cpu_minutes=4,
    ),
    Experiment(
        "smollm2-last-block", "trainable", "last block", _smollm2(trainable="last_block"),
        book="98.33", book_row="last block, last non-padding token", cpu_minutes=3,
    ),
    Experiment(
        "smollm2", "trainable", "last two blocks (the smollm2 recipe)", _smollm2(),
        book="98.33", book_row="last two blocks", cpu_minutes=SMOLLM2_MINUTES,
    ),
    Experiment(
        "smollm2-all", "trainable", "all layers", _smollm2(trainable="all", lr=_ALL_LR, epochs=2),
        book="96.67", book_row="all layers", cpu_minutes=15,
        note="2 epochs (uncached, ~6.5 min each on 2 cores in fp32); lr 5e-5 for all-layer "
        "finetuning",
    ),
    # 2. Which token feeds the head
    Experiment(
        "smollm2-pool-last", "pool", "last position (pads included)",
        _smollm2(pool="last", padding="longest"),
        book="95.00", book_row="last token, last block", cpu_minutes=12,
        note="padding=longest as in the book: with `last`, dynamic padding would make a text's "
        "features depend on its batch-mates (and turn the prefix cache off)",
    ),
    Experiment(
        "smollm2-pool-first", "pool", "first token", _smollm2(pool="first"),
        book="75.00", book_row="first token, last block", cpu_minutes=5,
    ),
    Experiment(
        "smollm2-pool-mean", "pool", "mean over real tokens", _smollm2(pool="mean"),
        book="96.33", book_row="mean over all tokens", cpu_minutes=5,
    ),
    # 3. BERT vs GPT
    Experiment(
        "minilm-cls", "bert_vs_gpt", "MiniLM-L6, [CLS], last block",
        _smollm2(model="minilm-l6", pool="cls"), cpu_minutes=1.5,
    ),
    Experiment(
        "minilm-mean", "bert_vs_gpt", "MiniLM-L6, mean, last block",
        _smollm2(model="minilm-l6", pool="mean"), cpu_minutes=2,
    ),
    Experiment(
        "minilm-all", "bert_vs_gpt", "MiniLM-L6, [CLS], all layers",
        _smollm2(model="minilm-l6", pool="cls", trainable="all", lr=_ALL_LR), cpu_minutes=4,
        note="5 epochs: 22.7M parameters are cheap enough; lr 5e-5 as for smollm2-all",
    ),
    Experiment(
        "minilm-all-mean", "bert_vs_gpt", "MiniLM-L6, mean, all layers",
        _smollm2(model="minilm-l6", pool="mean", trainable="all", lr=_ALL_LR), cpu_minutes=5,
        note="the pooling all-MiniLM-L6-v2 was trained with (sentence-transformers' mean)",
    ),
    # 4. The causal mask
    Experiment(
        "smollm2-no-causal-mask", "causal_mask", "no causal mask", _smollm2(causal=False),
        book="95.33", book_row="no causal mask (last token)", cpu_minutes=5,
    ),
    Experiment(
        "smollm2-no-causal-mask-first", "causal_mask", "no causal mask, first token",
        _smollm2(causal=False, pool="first"), cpu_minutes=5,
        note="without the mask the first token sees the whole text: is the mask what sinks "
        "first-token pooling?",
    ),
    # 5. Model size
    Experiment(
        "gpt2-small", "model_size", "GPT-2 small 124M (book recipe)", _book(),
        book="95.00", book_row="gpt2-small, last token, last block", cpu_minutes=6,
    ),
    Experiment(
        "gpt2-medium", "model_size", "GPT-2 medium 355M (book recipe)", _book(model="gpt2-medium"),
        book="84.67", book_row="gpt2-medium, last block", cpu_minutes=15,
    ),
    Experiment(
        "gpt2-large", "model_size", "GPT-2 large 774M (book recipe)", _book(model="gpt2-large"),
        book="96.67", book_row="gpt2-large, last block", cpu_minutes=35,
    ),
    Experiment(
        "gpt2-xl", "model_size", "GPT-2 XL 1558M (book recipe)", _book(model="gpt2-xl"),
        book="98.33–98.67", book_row="gpt2-xl, last block (98.33) or all layers (98.67)",
        cpu_minutes=75,
    ),
    Experiment(
        "gpt2-tiny-random", "model_size", "GPT-2 tiny shape, random init",
        _smollm2(model="gpt2-tiny", **_RANDOM), cpu_minutes=0.5,
        note="2 layers, d=32 (the test preset): the smallest point of the random-init curve",
    ),
    Experiment(
        "gpt2-small-random", "model_size", "GPT-2 small shape, random init",
        _smollm2(model="gpt2-small", **_RANDOM),
        book="93.67", book_row="gpt2-small, random weights, all layers", cpu_minutes=10,
        note="2 epochs (every layer trains; ~4.5 min per epoch on 2 cores in fp32); the book "
        "trained 5",
    ),
    Experiment(
        "gpt2-medium-random", "model_size", "GPT-2 medium shape, random init",
        _smollm2(model="gpt2-medium", **_RANDOM), cpu_minutes=32.5,
        note="2 epochs, like the small shape (every layer of 355M trains: ~15 min per epoch on "
        "2 cores in fp32)",
    ),
    # 6. LoRA
    Experiment(
        "smollm2-lora", "lora", "LoRA r=8, α=16, all linears", _smollm2(trainable="lora", epochs=2),
        book="96.67", book_row="LoRA (r=16, α=16, scaled by α)", cpu_minutes=12.5,
        note="2 epochs: adapters in block 0 leave nothing to cache (backward runs through all "
        "30 blocks)",
    ),
    Experiment(
        "smollm2-lora-last-two", "lora", "LoRA r=8, α=16, last two blocks",
        _smollm2(trainable="lora", lora_blocks=2), cpu_minutes=5,
        note="the recipe's two blocks, as adapters: the 28 frozen blocks below are cached",
    ),
    # 7. Padding
    Experiment(
        "smollm2-pad-longest", "padding", "pad to the longest training text",
        _smollm2(padding="longest"),
        book="98.33", book_row="longest training text, last non-padding token", cpu_minutes=7,
    ),
    Experiment(
        "smollm2-pad-max-context", "padding", "pad to the context (8,192 tokens)",
        _smollm2(padding="max_context"),
        book="78.33", book_row="pad to the 1,024-token context, last token",
        gpu_only="every text padded to SmolLM2's 8,192-token context (~180x the tokens of dynamic "
        "padding, too large to cache): days per seed on 2 CPU cores",
    ),
    Experiment(
        "smollm2-bucket", "padding", "dynamic padding, length-bucketed batches",
        _smollm2(bucket=True), cpu_minutes=4,
        note="bucketed batches are nearly one class here (spam texts are long); the recipe's "
        "default until this row was measured",
    ),
    Experiment(
        "smollm2-pad-none", "padding", "no padding (batch 1, grad. accumulation 8)",
        _smollm2(batch_size=1, grad_accum=8),
        book="98.00–98.33", book_row="no padding (batch size 1)", cpu_minutes=6,
    ),
    # 8. Precision
    Experiment(
        "smollm2-bf16", "precision", "SmolLM2 recipe in bf16", _smollm2(precision="bf16"),
        cpu_minutes=1.5,
        note="bf16 autocast: 1.5 min per seed where bf16 is native, 7x slower where emulated",
    ),
    Experiment(
        "smollm2-int8-prefix", "precision", "SmolLM2 recipe, frozen blocks in int8",
        _smollm2(int8_prefix=True), cpu_minutes=SMOLLM2_MINUTES,
        note="blocks 0-27 int8 (per-channel weights, per-token activations), the top two fp32",
    ),
    # 9. More training data: the rows the book's undersampling leaves out
    Experiment(
        "smollm2-full-train", "train_data", "SmolLM2 recipe, every other message trains",
        _smollm2(split="book_full", class_weights="auto"), cpu_minutes=17,
        note="5,077 training texts instead of 1,045 (4,032 more ham); class weights n/(2·count)",
    ),
    Experiment(
        "minilm-mean-full-train", "train_data", "MiniLM-L6, mean, every other message trains",
        _smollm2(model="minilm-l6", pool="mean", split="book_full", class_weights="auto"),
        cpu_minutes=7.5,
    ),
    Experiment(
        "minilm-all-full-train", "train_data", "MiniLM-L6, [CLS], all layers, every other message "
        "trains",
        _smollm2(model="minilm-l6", pool="cls", trainable="all", lr=_ALL_LR, epochs=3,
                 split="book_full", class_weights="auto"),
        cpu_minutes=8.5,
        note="the best row on the small split (`minilm-all`) with 5x the texts; 3 epochs (it "
        "peaked at epoch 2-3 on 1,045 texts); class weights n/(2·count)",
    ),
    Experiment(
        "tfidf-logreg-full-train", "train_data", "TF-IDF + logistic regression, every other "
        "message trains", {"split": "book_full", "class_weights": "auto"}, method="tfidf",
        cpu_minutes=0.1, note="the baseline on the same training data, class-weighted",
    ),
    # 10. A prompt around the text
    Experiment(
        "smollm2-prompt", "prompt", "SmolLM2 recipe, text inside a spam question",
        _smollm2(prompt=SPAM_PROMPT), cpu_minutes=6,
        note="chosen before any run, not tuned: the validation split (99-100%) cannot rank "
        "prompts",
    ),
    # 11. The recipe search (seed 123's train time from the search's own log, see _search)
    _search("tune-last-block-lr5e-4", "last block, lr 5e-4", 233, trainable="last_block", lr=5e-4),
    _search("tune-last-block-lr2e-4", "last block, lr 2e-4", 92, trainable="last_block", lr=2e-4),
    _search("tune-last-two-blocks-lr2e-4", "last two blocks, lr 2e-4", 236,
            trainable="last_two_blocks", lr=2e-4),
    _search("tune-last-4-lr2e-4", "last 4 blocks, lr 2e-4", 1008, trainable="last_4", lr=2e-4),
    _search("tune-last-block-lr1e-3", "last block, lr 1e-3", 332, trainable="last_block", lr=1e-3),
    _search("tune-last-block-lr5e-4-mean", "last block, lr 5e-4, mean pooling", 401,
            trainable="last_block", lr=5e-4, pool="mean"),
    _search("tune-last-4-lr1e-4", "last 4 blocks, lr 1e-4", 1008, measured=False,
            trainable="last_4", lr=1e-4),
    _search("tune-last-4-lr5e-4", "last 4 blocks, lr 5e-4", 1008, measured=False,
            trainable="last_4", lr=5e-4),
    # 12. No finetuning (no_finetune.py): deterministic, so one seed is enough
    Experiment(
        "zero-shot", "no_finetune", "zero-shot: the LM's ' Yes' vs ' No'",
        _smollm2(prompt=SPAM_PROMPT), method="zero_shot", cpu_minutes=1.5,
    ),
    Experiment(
        "zero-shot-calibrated", "no_finetune", "zero-shot, threshold chosen on validation",
        _smollm2(prompt=SPAM_PROMPT), method="zero_shot_calibrated", cpu_minutes=1.5,
    ),
    Experiment(
        "linear-probe", "no_finetune", "linear probe on SmolLM2's last real token",
        _smollm2(), method="probe", cpu_minutes=3,
    ),
    Experiment(
        "linear-probe-minilm", "no_finetune", "linear probe on MiniLM-L6's mean embedding",
        _smollm2(model="minilm-l6", pool="mean"), method="probe", cpu_minutes=0.5,
        note="the sentence embedding all-MiniLM-L6-v2 was trained to give",
    ),
    # 13. Ensembles: averages of cached rows' probabilities (ensembles.py), nothing trains
    Experiment(
        "ens-minilm-tfidf", "ensemble", "MiniLM-L6 all layers + TF-IDF",
        method="ensemble", members=("minilm-all", "tfidf-logreg"), cpu_minutes=0,
    ),
    Experiment(
        "ens-smollm2-minilm", "ensemble", "SmolLM2 recipe + MiniLM-L6 all layers",
        method="ensemble", members=("smollm2", "minilm-all"), cpu_minutes=0,
        note="157M parameters together: over the target's 135M",
    ),
    Experiment(
        "ens-smollm2-minilm-tfidf", "ensemble", "SmolLM2 recipe + MiniLM-L6 + TF-IDF",
        method="ensemble", members=("smollm2", "minilm-all", "tfidf-logreg"), cpu_minutes=0,
        note="157M parameters together: over the target's 135M",
    ),
    Experiment(
        "ens-minilm-seeds", "ensemble", "MiniLM-L6 all layers, every seed averaged",
        method="ensemble", members=("minilm-all",), pool_seeds=True, cpu_minutes=0,
        note="one result: the seeds' probabilities averaged (5 seeds: 113M parameters)",
    ),
    Experiment(
        "ens-smollm2-seeds", "ensemble", "SmolLM2 recipe, every seed averaged",
        method="ensemble", members=("smollm2",), pool_seeds=True, cpu_minutes=0,
        note="one result: the seeds' probabilities averaged (673M parameters for 5 seeds)",
    ),
    Experiment(
        "ens-minilm-tfidf-full-train", "ensemble", "MiniLM-L6 all layers + TF-IDF, every other "
        "message trains", method="ensemble",
        members=("minilm-all-full-train", "tfidf-logreg-full-train"), cpu_minutes=0,
    ),
    Experiment(
        "ens-minilm-full-train-seeds", "ensemble", "MiniLM-L6 all layers, every other message "
        "trains, every seed averaged", method="ensemble", members=("minilm-all-full-train",),
        pool_seeds=True, cpu_minutes=0,
        note="one result: the seeds' probabilities averaged (5 seeds: 113M parameters)",
    ),
    # 14. Fewer optimizer steps: what the main job's speed could gain
    Experiment(
        "smollm2-batch16", "schedule", "batches of 16, lr 4e-4",
        _smollm2(batch_size=16, lr=4e-4), cpu_minutes=4,
    ),
    Experiment(
        "smollm2-epochs-3", "schedule", "3 epochs", _smollm2(epochs=3), cpu_minutes=3,
    ),
    Experiment(
        "smollm2-pool-mean-batch16", "schedule", "mean pooling, batches of 16, lr 4e-4",
        _smollm2(pool="mean", batch_size=16, lr=4e-4), cpu_minutes=4,
        note="the pooling question's CV winner with the larger batch",
    ),
    # 15. Which layer the head reads: SmolLM2's first K blocks only (--layers)
    *(_depth(blocks) for blocks in (8, 12, 16, 20, 24)),
    # Baseline: beside every question
    Experiment(
        "tfidf-logreg", BASELINE_QUESTION, "TF-IDF + logistic regression",
        method="tfidf", cpu_minutes=0.1,
        note="word 1-2-gram TF-IDF, L2 logistic regression, C chosen on the validation split",
    ),
]  # fmt: skip
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in EXPERIMENTS_LIST}
assert len(EXPERIMENTS) == len(EXPERIMENTS_LIST), "duplicate experiment names"


def select(names: list[str] | str, experiments: dict[str, Experiment]) -> list[Experiment]:
    """The named experiments, in table order ("all" or ["all"] = every one); unknown → error."""
    names = [names] if isinstance(names, str) else list(names)
    if names == ["all"]:
        return list(experiments.values())
    unknown = [n for n in names if n not in experiments]
    if unknown:
        raise GptclfError(
            f"unknown experiment(s) {', '.join(map(repr, unknown))}; see `gptclf experiments list`"
        )
    if not names:
        raise GptclfError("no experiments named (give names or --all)")
    wanted = set(names)
    return [e for e in experiments.values() if e.name in wanted]


def validate(exp: Experiment, experiments: dict[str, Experiment] | None = None) -> TrainConfig:
    """Check a row without running it: its TrainConfig builds and every option is a known one;
    an ensemble's members are rows of `experiments` (default the table) that train."""
    from gptclf.weights.registry import KNOWN_MODELS

    where = f"experiment {exp.name!r}"
    if exp.question not in (*QUESTIONS, BASELINE_QUESTION):
        raise GptclfError(f"{where}: unknown question {exp.question!r}")
    table = EXPERIMENTS if experiments is None else experiments
    if (exp.method == "ensemble") != bool(exp.members):
        raise GptclfError(f"{where}: members go with method 'ensemble', and it needs members")
    for member in exp.members:
        if member not in table or table[member].method == "ensemble":
            raise GptclfError(f"{where}: member {member!r} is not a row that trains")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = set(exp.overrides) - set(fields)
    if unknown:
        raise GptclfError(f"{where}: not TrainConfig fields: {', '.join(sorted(unknown))}")
    for name, value in exp.overrides.items():  # the choices TrainConfig checks, named per row
        known = fields[name].metadata.get("choices")
        if known is not None and value not in known:
            raise GptclfError(f"{where}: {name} {value!r} is not one of {', '.join(known)}")
    try:
        cfg = exp.train_config()
    except GptclfError as exc:
        raise GptclfError(f"{where}: {exc}") from None
    if exp.method != "tfidf" and cfg.model not in KNOWN_MODELS:
        raise GptclfError(f"{where}: unknown model {cfg.model!r}")
    return cfg
