#!/usr/bin/env bash
# The comparison's cells as local parallel jobs (the SLURM array's local twin), then the table.
# Usage: scripts/compare_local.sh [-j JOBS] -- COMPARE_ARGS...   (COMPARE_ARGS must include --out ROOT)
#   e.g. scripts/compare_local.sh -j 2 -- --dataset mnist --data-dir DIR --clients 1000 --out runs/cmp
set -euo pipefail
jobs=1
if [[ "${1:-}" == "-j" ]]; then jobs="$2"; shift 2; fi
[[ "${1:-}" == "--" ]] && shift
cd "$(dirname "$0")/.."
n=$(python experiments/compare.py "$@" --list-jobs | head -1)
root=""
prev=""
for a in "$@"; do [[ "$prev" == "--out" ]] && root="$a"; prev="$a"; done
[[ -n "$root" ]] || { echo "error: pass --out ROOT among the compare arguments" >&2; exit 2; }
seq 0 $((n - 1)) | xargs -P "$jobs" -I{} python experiments/compare.py "$@" --job-index {}
python experiments/compare.py --collect "$root"
