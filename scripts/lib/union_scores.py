#!/usr/bin/env python3
"""Joins the scores.csv of several `libre evaluate` runs over the same images and models into
one CSV (the clean rows once), so that `libre metrics --robust` takes the worst case per image
over every attack of every run. Refuses runs whose clean rows disagree (other images or models).

    union_scores.py OUT.csv RUN_DIR...
"""
import csv
import sys

out, runs = sys.argv[1], sys.argv[2:]
if not runs:
    sys.exit("usage: union_scores.py OUT.csv RUN_DIR...")
header, rows, clean = None, [], None
for run in runs:
    with open(f"{run}/scores.csv", newline="") as f:
        r = csv.reader(f)
        h = next(r)
        if header is None:
            header = h
        elif h != header:
            sys.exit(f"{run}/scores.csv: other columns than {runs[0]}")
        ai = h.index("attack")
        this_clean = []
        for row in r:
            if row[ai] == "clean":
                this_clean.append(row)
            else:
                rows.append(row)
        key = sorted(tuple(x) for x in this_clean)
        if clean is None:
            clean = key
        elif key != clean:
            sys.exit(f"{run}: its clean rows differ from {runs[0]}'s (other images, models or scores)")
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(list(clean) + rows)
