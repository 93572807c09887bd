#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the
# pod from TPU metadata. WORKDIR must be shared storage (e.g. gs://bucket/run, which orbax writes).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/halftone/nib_unet.py gs://bucket/runs/nib_unet
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]}
zone=${2:?}; config=${3:?}; workdir=${4:?}
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/noise_research && python -m noise_research.main --multihost --config $config --workdir $workdir $*"
