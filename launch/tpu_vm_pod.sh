#!/usr/bin/env bash
# Train ME-Net on a Cloud TPU VM pod slice: every host runs the same command; jax.distributed
# joins them (menet_jax.main calls jax.distributed.initialize() when jax detects the pod; a host
# that cannot join ends with one line) and the global batch is split over every core of every host.
#
#   TPU=my-v4-32 ZONE=us-central2-b CONFIG=configs/cifar10.py WORKDIR=gs://bucket/menet \
#     DATA_DIR=gs://bucket/tfds bash launch/tpu_vm_pod.sh
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (a gs:// path)}"
CONFIG=${CONFIG:-configs/cifar10.py}
DATA_DIR=${DATA_DIR:-}
REPO=${REPO:?set REPO to the git URL of your menet-jax copy}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d menet-jax ] || git clone $REPO menet-jax
  cd menet-jax && python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e '.[tpu]'
  python -m menet_jax.main --config=$CONFIG --workdir=$WORKDIR \
    \${DATA_DIR:+--config.data_dir=$DATA_DIR} --config.me.mode=online
"
