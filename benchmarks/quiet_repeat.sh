#!/usr/bin/env bash
# The quiet-machine repeat of the issue-12 measurement: 1 process x 2 threads against
# 2 processes x 1 thread (Gloo, 127.0.0.1) at n x 512, k = 32, mu, 5 timed iterations, three
# runs; time per iteration and bytes all-reduced per rank per iteration.
#
#   benchmarks/quiet_repeat.sh            # n = 1,000,000 (about 3 minutes on a quiet 2-core VM)
#   benchmarks/quiet_repeat.sh 20000      # smoke test
#
# Run it when nothing else runs (uptime load < 0.5). Writes benchmarks/results/quiet_repeat/
# parallel_n<N>_run<i>.json (raw, with the load average at start and end of each run) and
# summary_n<N>.json (medians over the runs), and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/main/.venv/bin/python}
N=${1:-1000000}
REPEATS=${REPEATS:-3}
ITERS=${ITERS:-5}
OUT=benchmarks/results/quiet_repeat
mkdir -p "$OUT"
export PYTHONPATH=$PWD
echo "start: $(uptime)"
for i in $(seq 1 "$REPEATS"); do
    # each run is bounded: the whole repeat stays under 8 minutes even on a slow day
    timeout $((450 / REPEATS)) "$PY" benchmarks/bench_distributed.py parallel --n "$N" \
        --iters "$ITERS" --out "$OUT/parallel_n${N}_run$i.json"
done
echo "end: $(uptime)"
"$PY" - "$OUT" "$N" "$REPEATS" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out, n, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
runs = [json.loads((out / f"parallel_n{n}_run{i}.json").read_text()) for i in range(1, repeats + 1)]
one = [r["one_process_two_threads"]["s_per_iter_median"] for r in runs]
two = [max(t["s_per_iter_median"] for t in r["two_processes_one_thread"]) for r in runs]
summary = {
    "n": int(n), "d": 512, "k": 32, "runs": repeats,
    "one_process_two_threads_s_per_iter": statistics.median(one),
    "two_processes_one_thread_s_per_iter": statistics.median(two),
    "ratio_one_over_two": statistics.median(one) / statistics.median(two),
    "bytes_allreduced_per_rank_per_iter": runs[0]["two_processes_one_thread"][0][
        "bytes_allreduced_per_iter"
    ],
    "loadavg_1min_start_end": [[r["loadavg_start"][0], r["loadavg_end"][0]] for r in runs],
    "per_run_s_per_iter": {"one_x2": one, "two_x1": two},
}
(out / f"summary_n{n}.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PYEOF
