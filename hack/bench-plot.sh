#!/usr/bin/env bash
# Plots a cluster benchmark's timeline (timeline-N.csv in BENCH_OUT, by default bench/results)
# to a PNG next to it:
# pods done over time per contender, and the throughputs side by side. matplotlib comes from
# PyPI into a venv in the cache; without it the CSV and Markdown results still stand.
set -euo pipefail
n=${1:?usage: hack/bench-plot.sh N}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=plot-venv.sh
source "$repo/hack/plot-venv.sh"
"$venv/bin/python" - "${BENCH_OUT:-$repo/bench/results}" "$n" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out, n = sys.argv[1], sys.argv[2]
series = {}
for row in csv.DictReader(open(f"{out}/timeline-{n}.csv")):
    series.setdefault(row["contender"], []).append((float(row["t_s"]), int(row["pods_done"]), int(row["pods_created"])))
rows = list(csv.DictReader(open(f"{out}/cluster-{n}.csv")))
fig, (a, b, c) = plt.subplots(1, 3, figsize=(19, 5))
for i, (name, pts) in enumerate(series.items()):
    # One colour per contender: solid for pods done, dotted for pods created.
    a.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", label=f"{name}: pods done")
    a.plot([p[0] for p in pts], [p[2] for p in pts], color=f"C{i}", linestyle=":", label=f"{name}: pods created")
a.set_xlabel("seconds since the first submission"); a.set_ylabel("pods"); a.legend(fontsize=7)
a.set_title(f"{n} one-pod jobs, 1 s each")
names = [r["contender"] for r in rows]
x = range(len(names))
b.bar([i - 0.2 for i in x], [float(r["admission_pods_per_s"]) for r in rows], width=0.4, label="admission (pods/s)")
b.bar([i + 0.2 for i in x], [float(r["end_to_end_per_s"]) for r in rows], width=0.4, label="end-to-end (jobs/s)")
b.set_xticks(list(x)); b.set_xticklabels(names, fontsize=8, rotation=20, ha="right"); b.legend(); b.set_title("throughput")
# Barge's end-to-end rate over each peer's, measured in this one run.
by = {r["contender"]: float(r["end_to_end_per_s"]) for r in rows}
barge = by.get("Barge BatchJob")
# The ceiling: the mean of its two runs (before and after the others), as in the table.
ceilings = [by[k] for k in ("ceiling (pods)", "ceiling again (pods)") if k in by]
if ceilings:
    by["ceiling (pods)"] = sum(ceilings) / len(ceilings)
peers = [p for p in ("ceiling (pods)", "batch/v1 Job", "Kueue + batch/v1 Job") if p in by and barge]
c.bar(range(len(peers)), [barge / by[p] for p in peers], color="C2")
for i, p in enumerate(peers):
    c.text(i, barge / by[p], f"{barge / by[p]:.2f}", ha="center", va="bottom")
c.axhline(1, color="grey", linewidth=0.8)
c.set_xticks(range(len(peers))); c.set_xticklabels(peers, fontsize=8, rotation=20, ha="right")
c.set_title("end-to-end, Barge / peer")
fig.tight_layout()
fig.savefig(f"{out}/cluster-{n}.png", dpi=110)
print(f"wrote {out}/cluster-{n}.png")
PY
