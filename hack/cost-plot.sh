#!/usr/bin/env bash
# Plots the cost benchmark (cost-series.csv in BENCH_OUT, by default bench/results) to
# cost.png: provisioned and requested vCPUs over time, one panel per contender.
# matplotlib comes from PyPI into a venv in the cache (as for hack/bench-plot.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=plot-venv.sh
source "$repo/hack/plot-venv.sh"
"$venv/bin/python" - "${BENCH_OUT:-$repo/bench/results}" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out = sys.argv[1]
series = {}
for row in csv.DictReader(open(f"{out}/cost-series.csv")):
    series.setdefault(row["contender"], []).append(
        (float(row["t_s"]), float(row["provisioned_vcpus"]), float(row["requested_vcpus"])))
costs = {r["contender"]: r for r in csv.DictReader(open(f"{out}/cost.csv"))}
fig, axes = plt.subplots(len(series), 1, figsize=(12, 2.6 * len(series)), sharex=True, squeeze=False)
top = max(p[1] for pts in series.values() for p in pts) or 1
for ax, (name, pts) in zip(axes[:, 0], series.items()):
    t = [p[0] for p in pts]
    ax.fill_between(t, [p[1] for p in pts], step="post", alpha=0.3, label="provisioned vCPUs")
    ax.plot(t, [p[2] for p in pts], drawstyle="steps-post", color="C3", label="requested vCPUs (running pods)")
    c = costs.get(name, {})
    ax.set_title(f"{name}: ${float(c.get('cost_usd', 'nan')):.3f}, {float(c.get('cost_over_bound', 'nan')):.2f} × the lower bound", fontsize=9)
    ax.set_ylim(0, top * 1.05); ax.set_ylabel("vCPUs"); ax.legend(fontsize=7, loc="upper right")
axes[-1, 0].set_xlabel("seconds since the replay began")
fig.tight_layout()
fig.savefig(f"{out}/cost.png", dpi=90)
print(f"wrote {out}/cost.png")
PY
