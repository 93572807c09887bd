#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the
# pod from TPU metadata. WORKDIR must be a filesystem every worker mounts (Filestore NFS, or a
# bucket mounted with gcsfuse at the same path on each worker); gs:// URLs are refused (the
# metrics, the report and the workdir lock need a filesystem).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/halftone/nib_unet.py /mnt/runs/nib_unet
# Every argument reaches the workers' shell quoted (printf %q), so override values may hold spaces
# or shell characters.
set -euo pipefail
if (($# < 4)); then
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
printf -v arguments ' %q' --multihost --config "$config" --workdir "$workdir" "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/noise_research && python -m noise_research.main$arguments"
