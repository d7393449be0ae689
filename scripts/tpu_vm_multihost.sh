#!/bin/bash
# Multi-host federated GAN training on a Cloud TPU VM slice (e.g. v4-32 = 4 hosts).
#
#   TPU_NAME=my-tpu ZONE=us-central2-b scripts/tpu_vm_multihost.sh [FLAGS...]
#
# FLAGS are appended to experiments/fedgan.py's command line (later flags win).
#
# Mechanism (the same as scripts/slurm_multinode_gpu.sbatch): the same command runs on
# every host (--worker=all); fedjax_gen.distributed.maybe_initialize() calls
# jax.distributed.initialize(), which on Cloud TPU VMs finds the coordinator, process
# count and process id from the TPU metadata (no env vars needed; the runner's
# --coordinator-address/--num-processes/--process-id or JAX_* env vars override it).
# The global mesh spans every chip of the slice; `--execution vmap` shards each round's
# clients over all of them. Every host loads the same data and seed; host 0 alone writes
# the run directory and metrics, while all hosts write their shards of orbax checkpoints,
# so --out must be shared by all hosts (a gs:// bucket: orbax writes to GCS directly).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR=${REPO_DIR:-~/fedjax_gen}              # the repo, cloned/copied on every host
OUT=${OUT:-gs://YOUR_BUCKET/runs/fedgan-tpu-$(date +%Y%m%d-%H%M%S)}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="
  cd $REPO_DIR && python experiments/fedgan.py \
    --dataset mnist --clients 3400 --partition dirichlet:0.5 \
    --model dcgan --clients-per-round 1024 --rounds 1000 \
    --execution vmap --conv-impl xla \
    --out $OUT --no-progress ${*@Q}
"
