#!/usr/bin/env python3
"""Detection at bf16 vs f32 on the LiBRe study's images (docs/results.md, "bf16 inference").

    python3 scripts/precision_study.py [STUDY_DIR]      (default: runs/libre-study)

Needs a finished `scripts/libre_study.sh` run. For the configuration selected on validation
(STUDY_DIR/best.txt) and the DNN, every image set the study scored at f32 (clean and attacked,
validation and test; the attacks were crafted at f32) is scored again with `libre detect
--precision bf16` into SPLIT-bf16/, and every AUROC is printed for both precisions, as a Markdown
table. Rows files that exist are reused.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libre_study_summary import LIBRE, attacks_in, metrics  # noqa: E402

SCORES = ["feature-variance", "mutual-information", "softmax-variance", "msp"]


def rescore(model, src, dst):
    """Scores every image set of src (clean.csv + one csv per attack) again at bf16 into dst."""
    os.makedirs(dst, exist_ok=True)
    data = {"clean": None}
    for a in attacks_in(src):
        data[a] = os.path.join(src, a + ".safetensors")
    for name, images in data.items():
        out = os.path.join(dst, name + ".csv")
        if os.path.exists(out) and os.path.getsize(out) > 0:
            continue
        if images is None:
            images = clean_spec(src)
        subprocess.run([LIBRE, "-q", "detect", "--weights", model, images, "--format", "csv",
                        "--out", out, "--device", "cpu", "--precision", "bf16"], check=True)


def clean_spec(split_dir):
    """The clean images of a study split (the script's VAL and TEST specs)."""
    return {"val": "mnist:train[50000:51000]", "test": "mnist:test[0:1000]"}[
        os.path.basename(split_dir)]


def main():
    study = sys.argv[1] if len(sys.argv) > 1 else "runs/libre-study"
    best = open(os.path.join(study, "best.txt")).read().strip()
    print("| model | split | attack | score | AUROC f32 | AUROC bf16 | bf16 - f32 |")
    print("|---|---|---|---|---|---|---|")
    for name, model in ((best, os.path.join(study, best, "run", "model.safetensors")),
                        ("dnn", "zoo:lenet5-mnist")):
        for split in ("val", "test"):
            f32 = os.path.join(study, name, split)
            if not os.path.isdir(f32):
                continue
            bf16 = f32 + "-bf16"
            rescore(model, f32, bf16)
            scores = SCORES if name != "dnn" else ["msp", "entropy", "max-logit"]
            m32, m16 = metrics(f32, scores), metrics(bf16, scores)
            for a in sorted(m32):
                for s in scores:
                    x, y = m32[a][s]["auroc"], m16[a][s]["auroc"]
                    print(f"| {name} | {split} | {a} | {s} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")


if __name__ == "__main__":
    main()
