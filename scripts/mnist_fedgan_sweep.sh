#!/usr/bin/env bash
# The MNIST dp_fedavg_gan runs quoted in the closing notes: 1000 clients, Dirichlet 0.1,
# without DP and at epsilon 1 / 10 (delta 1e-5), user level and example level.
# Usage: scripts/mnist_fedgan_sweep.sh DATA_DIR OUT_ROOT [extra flags...]
set -euo pipefail
data_dir=${1:?tfds data dir with mnist}; root=${2:?output root}; shift 2
common=(--dataset mnist --data-dir "$data_dir" --clients 1000 --partition dirichlet:0.1
        --algorithm dp_fedavg_gan --no-progress --overwrite "$@")
run() { name=$1; shift; echo "== $name: $*"; python experiments/fedgan.py "${common[@]}" --out "$root/$name" "$@"; }
run nodp
run user_eps10 --dp user --epsilon 10 --delta 1e-5 --clip 0.5
run user_eps1 --dp user --epsilon 1 --delta 1e-5 --clip 0.5
# Example-level DP-SGD costs ~20x a plain step per client on XLA:CPU: fewer rounds/clients.
run example_eps10 --dp example --epsilon 10 --delta 1e-5 --clip 1 --rounds 100 --clients-per-round 20
run example_eps1 --dp example --epsilon 1 --delta 1e-5 --clip 1 --rounds 100 --clients-per-round 20
