#!/usr/bin/env bash
# One machine, every local accelerator (or CPU): the data-parallel backend spreads the batch.
#   launch/local.sh configs/halftone/nib_resnet.py runs/nib_resnet [--config.key=value ...]
# CPU only, N simulated devices (to try the parallel code on a laptop):
#   NUM_CPU_DEVICES=8 launch/local.sh configs/halftone/demo.py runs/demo8
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
if [[ -n "${NUM_CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="--xla_force_host_platform_device_count=${NUM_CPU_DEVICES} ${XLA_FLAGS:-}"
fi
exec python -m noise_research.main --config "$config" --workdir "$workdir" "$@"
