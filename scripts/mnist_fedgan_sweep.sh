#!/usr/bin/env bash
# The MNIST federated GAN runs quoted in docs/results.md and the closing notes: 1000 clients,
# Dirichlet 0.1, without DP and at epsilon 1 / 10 (delta 1e-5), user level and example level,
# each followed by the passive attacks on its synthetic set and final discriminator.
# Usage: scripts/mnist_fedgan_sweep.sh DATA_DIR OUT_ROOT [extra fedgan.py flags...]
#   e.g. --algorithm fedgan (default dp_fedavg_gan). ONLY="nodp user_eps10" runs just those.
set -euo pipefail
data_dir=${1:?tfds data dir with mnist}; root=${2:?output root}; shift 2
only=" ${ONLY:-} "
common=(--dataset mnist --data-dir "$data_dir" --clients 1000 --partition dirichlet:0.1
        --algorithm dp_fedavg_gan --no-progress --overwrite "$@")
run() {
  local name=$1; shift
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  echo "== $name: $*"
  python experiments/fedgan.py "${common[@]}" --out "$root/$name" "$@"
  python experiments/attack.py --run "$root/$name" --attacks fbb,logan --num-queries 1000
}
run nodp
run user_eps10 --dp user --epsilon 10 --delta 1e-5 --clip 0.5
run user_eps1 --dp user --epsilon 1 --delta 1e-5 --clip 0.5
# Example level: fewer rounds and clients, as in the first session's runs (DP-SGD then cost ~20x a plain
# step per client; with ghost clipping ~3x), so the numbers stay comparable.
run example_eps10 --dp example --epsilon 10 --delta 1e-5 --clip 1 --rounds 100 --clients-per-round 20
run example_eps1 --dp example --epsilon 1 --delta 1e-5 --clip 1 --rounds 100 --clients-per-round 20
