#!/usr/bin/env python3
"""Generate the scikit-learn reference values that libre-reports is tested against.

Run once (CI does not run Python):  pip install scikit-learn numpy && \
    python3 scripts/gen_sklearn_reference.py
Writes tests/fixtures/sklearn/*.csv and tests/fixtures/sklearn/expected.json. The Rust tests in
reports/tests/sklearn_agreement.rs read both and require agreement to 1e-9.

Conventions (docs/design.md section 9): label 1 = adversarial (positive), higher score = more
suspicious.
AUPR-out = average precision with adversarial positive; AUPR-in = average precision with clean
positive on the negated score.
"""
import json
import os

import numpy as np
import sklearn
from sklearn.metrics import (average_precision_score, log_loss, roc_auc_score, roc_curve,
                             top_k_accuracy_score)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sklearn")
FPR_BOUNDS = ["0.01", "0.05", "0.10"]


def detection_reference(y, s):
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ref = {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "tpr_at_fpr": {b: float(tpr[fpr <= float(b)].max()) for b in FPR_BOUNDS},
        "tnr_at_tpr95": float(1.0 - fpr[np.argmax(tpr >= 0.95)]),
        "detection_accuracy": float(np.max(0.5 * (tpr + 1.0 - fpr))),
        # Threshold calibrated on the clean scores for FPR <= 5%: the last ROC point within it.
        "detection_accuracy_at_fpr05": float(
            0.5 * (tpr[fpr <= 0.05][-1] + 1.0 - fpr[fpr <= 0.05][-1])),
        "n_pos": int(y.sum()),
        "n_neg": int((1 - y).sum()),
    }
    if len(y) <= 50:
        # sklearn's first threshold is +inf; JSON has no inf, the test knows.
        ref["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr[1:].tolist()}
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in ref.items()}


def write_scores(name, y, s):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        f.write("label,score\n")
        for yi, si in zip(y, s):
            f.write(f"{int(yi)},{float(si)!r}\n")  # repr of a float round-trips exactly


def ece_reference(conf, correct, n_bins=15):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if lo == 0.0:
            m |= conf == 0.0
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return ece


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20210321)
    cases = []
    specs = [
        # name, n, positive fraction, separation, rounding (None = continuous)
        ("balanced_continuous", 1000, 0.5, 1.0, None),
        ("imbalanced_10pct", 600, 0.1, 1.5, None),
        ("heavy_ties", 800, 0.4, 0.7, 1),
        ("integer_scores", 400, 0.5, 0.5, 0),
        ("well_separated", 1500, 0.3, 4.0, None),
        ("tiny_with_ties", 12, 0.5, 0.8, 1),
        ("inverted", 300, 0.5, -1.2, None),
    ]
    for name, n, frac, sep, rnd in specs:
        y = (rng.random(n) < frac).astype(np.int64)
        y[0], y[1] = 0, 1  # both classes always present
        s = rng.normal(size=n) + sep * y
        if rnd is not None:
            s = np.round(s, rnd)
        fname = f"detection_{name}.csv"
        write_scores(fname, y, s)
        cases.append({"file": fname, **detection_reference(y, s)})

    # Classification: a softmax over K = 10 classes, sharpened so accuracy is non-trivial.
    n, k = 400, 10
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) * 1.5
    logits[np.arange(n), labels] += rng.normal(1.5, 1.0, size=n)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cname = "classification_probs.csv"
    with open(os.path.join(OUT, cname), "w") as f:
        f.write("label," + ",".join(f"p{j}" for j in range(k)) + "\n")
        for yi, row in zip(labels, probs):
            f.write(f"{int(yi)}," + ",".join(repr(float(p)) for p in row) + "\n")
    onehot = np.eye(k)[labels]
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    classification = {
        "file": cname,
        "top1": float(top_k_accuracy_score(labels, probs, k=1, labels=np.arange(k))),
        "top5": float(top_k_accuracy_score(labels, probs, k=5, labels=np.arange(k))),
        "nll": float(log_loss(labels, probs, labels=np.arange(k))),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "ece": float(ece_reference(conf, correct.astype(float))),
    }
    expected = {
        "generator": f"scripts/gen_sklearn_reference.py, scikit-learn {sklearn.__version__}, "
                     f"numpy {np.__version__}",
        "detection": cases,
        "classification": classification,
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
