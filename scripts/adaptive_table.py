#!/usr/bin/env python3
"""The markdown table of docs/results.md ("Adaptive evaluation") from a `libre evaluate` run.

    scripts/adaptive_table.py RUN_DIR/summary.json

One row per detector (model/score): its threshold and source, the clean FPR on the test images,
the non-adaptive PGD AUROC and evaded %, the evaded % of each attack of the strong suite, and the
worst case per image with its 95% bootstrap interval. Only the standard library.
"""
import json
import sys


def main(path):
    s = json.load(open(path))
    rows = s["robust_detection"]
    auroc = {(d["model"], d["attack"], d["eps"]): d["auroc"] for d in s["detection"]}
    suite = ["pgd-restarts", "mimicry-10", "mimicry-100", "mimicry-1000", "mimicry-log-1",
             "mimicry-log-10", "selective", "orthogonal"]
    dets = []
    for r in rows:
        if r["detector"] not in dets:
            dets.append(r["detector"])
    eps_list = sorted({r["eps"] for r in rows if r["eps"]})
    present = [a for a in suite if any(r["attack"] == a for r in rows)]
    head = ["detector", "eps", "clean FPR", "PGD-40 AUROC", "PGD-40 evaded"] + present + [
        "**worst case evaded**"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for d in dets:
        mine = [r for r in rows if r["detector"] == d]
        clean = next(r for r in mine if r["attack"] == "clean")
        for e in eps_list:
            get = lambda a: next((r for r in mine if r["attack"] == a and r["eps"] == e), None)
            pgd = get("pgd")
            worst = get("worst-case")
            if worst is None:
                continue
            cells = [d, e, f'{clean["flagged"]:.1f}%',
                     f'{auroc.get((d, "pgd", e), float("nan")):.3f}' if pgd else "-",
                     f'{pgd["evaded"]:.1f}%' if pgd else "-"]
            for a in present:
                r = get(a)
                cells.append(f'{r["evaded"]:.1f}%' if r else "-")
            ci = ""
            if worst.get("evaded_lo") is not None:
                ci = f' [{worst["evaded_lo"]:.1f}, {worst["evaded_hi"]:.1f}]'
            cells.append(f'**{worst["evaded"]:.1f}%**{ci}')
            print("| " + " | ".join(cells) + " |")
    print()
    for t in s["thresholds"]:
        print(f'- {t["detector"]}: threshold {t["threshold"]:.6g} ({t["source"]})')


if __name__ == "__main__":
    main(sys.argv[1])
