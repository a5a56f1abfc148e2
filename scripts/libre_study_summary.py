#!/usr/bin/env python3
"""Tables of the LiBRe study (scripts/libre_study.sh). Every AUROC / TPR comes from `libre metrics`
on the rows `libre detect` wrote; this script only joins files and formats.

    libre_study_summary.py OUT_DIR            markdown tables of the test split
    libre_study_summary.py OUT_DIR --select   the configuration with the best validation AUROC
"""
import csv, json, os, subprocess, sys

LIBRE = os.environ.get("LIBRE", "target/release/libre")
CONFIGS = ["reference", "relative", "anchored", "alpha0",
           "reference-lr05", "relative-lr05", "anchored-lr05", "alpha0-lr05"]
BNN_SCORES = ["feature-variance", "softmax-variance", "mutual-information"]
DNN_SCORES = ["msp", "entropy"]


def attacks_in(d):
    return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".csv") and f != "clean.csv" and not f.startswith("_"))


def metrics(d, scores):
    """{attack: {score: metrics}} over clean vs each attack's images, via `libre metrics`."""
    clean = list(csv.DictReader(open(os.path.join(d, "clean.csv"))))
    rows = []
    for a in attacks_in(d):
        for lab, src in ((0, clean), (1, list(csv.DictReader(open(os.path.join(d, a + ".csv")))))):
            for r in src:
                rows.append({"attack": a, "label": lab, **{s: r[s] for s in scores}})
    path = os.path.join(d, "_joined.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["attack", "label"] + scores)
        w.writeheader()
        w.writerows(rows)
    out = {}
    for s in scores:
        res = subprocess.run([LIBRE, "--json", "-q", "metrics", "--scores", path, "--score-col", s,
                              "--group-by", "attack"], check=True, capture_output=True, text=True)
        data = json.loads(res.stdout.strip().splitlines()[-1])["data"]
        for g in data["groups"]:
            out.setdefault(g["group"], {})[s] = g
    return out


def robust(d, a):
    p = os.path.join(d, a + ".attack.json")
    if not os.path.exists(p):
        return None
    data = json.loads(open(p).read().strip().splitlines()[-1])["data"]
    return data["clean_accuracy"], data["robust_accuracy"]


def main():
    out = sys.argv[1]
    if "--select" in sys.argv:
        best, best_v = None, -1.0
        for c in CONFIGS:
            d = os.path.join(out, c, "val")
            if c.startswith("alpha0") or not os.path.isdir(d):
                continue  # the ablation is a control, not a candidate
            m = metrics(d, ["feature-variance"])
            v = sum(m[a]["feature-variance"]["auroc"] for a in m) / len(m)
            print(f"{c}: validation mean feature-variance AUROC {v:.4f}", file=sys.stderr)
            if v > best_v:
                best, best_v = c, v
        print(best)
        return
    print("AUROC (TPR at 5% FPR) on the first 1000 MNIST test images, all clean vs all adversarial.\n")
    tables = [("dnn", DNN_SCORES)] + [(c, BNN_SCORES) for c in CONFIGS]
    attacks = None
    for name, scores in tables:
        d = os.path.join(out, name, "test")
        if not os.path.isdir(d):
            continue
        m = metrics(d, scores)
        if attacks is None:
            attacks = [a for a in attacks_in(d)]
            print("| model | score | clean acc | " + " | ".join(attacks) + " |")
            print("|---|---|---|" + "---|" * len(attacks))
        for s in scores:
            cells = []
            for a in attacks:
                g = m.get(a, {}).get(s)
                cells.append(f"{g['auroc']:.3f} ({g['tpr_at_fpr']['0.05']:.2f})" if g else "-")
            ca = robust(d, attacks[0])
            print(f"| {name} | {s} | {100*ca[0]:.2f}% | " + " | ".join(cells) + " |")
        print(f"| {name} | robust acc % | | " + " | ".join(
            f"{100*robust(d, a)[1]:.1f}" if robust(d, a) else "-" for a in attacks) + " |")
    # Extra attacks (adaptive) for any configuration that has them.
    for c in CONFIGS:
        d = os.path.join(out, c, "test")
        if not os.path.isdir(d):
            continue
        extra = [a for a in attacks_in(d) if "adaptive" in a]
        if extra:
            m = metrics(d, ["feature-variance"])
            print(f"\nAdaptive attacks on {c} (PGD 0.3, loss - C * feature-variance):\n")
            print("| attack | robust acc | AUROC | TPR at 5% FPR |\n|---|---|---|---|")
            for a in extra:
                g = m[a]["feature-variance"]
                print(f"| {a} | {100*robust(d, a)[1]:.1f}% | {g['auroc']:.3f} | {g['tpr_at_fpr']['0.05']:.2f} |")


if __name__ == "__main__":
    main()
