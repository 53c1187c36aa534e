"""The results table: named experiment configs, a cached resumable runner, the report generator.

    configs.py   every row as a named `TrainConfig` override + the question it answers
    baseline.py  TF-IDF + logistic regression on the same split (needs scikit-learn)
    runner.py    `run(names, seeds)`: one JSON per (row, seed) under experiments/results/
    report.py    docs/RESULTS.md + bar charts, from the cached results only

CLI: `gptclf experiments list | run [NAMES...|--all] | report`.
"""
