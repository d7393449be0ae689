#!/usr/bin/env bash
# The MNIST one-shot runs quoted in docs/results.md and the closing notes of issues 4 and 5:
# 1000 clients; DOSFL, DENSE and DP-MERF under Dirichlet 0.1 label skew and quantity 0.1
# skew (iid as DOSFL's control), without DP and at epsilon 10 / 1 (delta 1e-5), each
# followed by every attack that applies to it (experiments/attack.py).
# Usage: scripts/mnist_one_shot_sweep.sh DATA_DIR OUT_ROOT [only-these-run-names...]
set -euo pipefail
data_dir=${1:?tfds data dir with mnist}; root=${2:?output root}; shift 2
only=" $* "
common=(--dataset mnist --data-dir "$data_dir" --clients 1000 --overwrite)
run() {  # run NAME SCRIPT FLAGS...: train, then attack the run directory
  local name=$1 script=$2; shift 2
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  echo "== $name: experiments/$script.py $*"
  python "experiments/$script.py" "${common[@]}" --out "$root/$name" "$@"
  python experiments/attack.py --run "$root/$name" --num-queries 1000
}
run dosfl_dir dosfl --partition dirichlet:0.1
run dosfl_quantity dosfl --partition quantity:0.1
run dosfl_iid dosfl --partition iid
run dosfl_dir_eps10 dosfl --partition dirichlet:0.1 --dp example --epsilon 10 --delta 1e-5 --clip 1
run dosfl_dir_eps1 dosfl --partition dirichlet:0.1 --dp example --epsilon 1 --delta 1e-5 --clip 1
run dense_dir dense --partition dirichlet:0.1
run dense_quantity dense --partition quantity:0.1
run dense_dir_eps10 dense --partition dirichlet:0.1 --dp example --epsilon 10 --delta 1e-5 --clip 1
run dense_dir_eps1 dense --partition dirichlet:0.1 --dp example --epsilon 1 --delta 1e-5 --clip 1
run dp_merf_quantity_eps1 dp_merf --partition quantity:0.1 --epsilon 1 --delta 1e-5
run dp_merf_dir_eps1 dp_merf --partition dirichlet:0.1 --epsilon 1 --delta 1e-5
run dp_merf_dir_eps10 dp_merf --partition dirichlet:0.1 --epsilon 10 --delta 1e-5
