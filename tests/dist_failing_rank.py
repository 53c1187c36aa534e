"""`gptclf` under torchrun with rank 1 failing at its first evaluation (used by test_distributed)."""

import os
import sys

import gptclf.train
from gptclf.cli import main
from gptclf.errors import GptclfError

if os.environ.get("RANK") == "1":

    def fail(*args, **kwargs):
        raise GptclfError("simulated failure on this rank")

    gptclf.train.predict_logits = fail

sys.exit(main(sys.argv[1:]))
