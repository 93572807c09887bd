#!/usr/bin/env bash
# One machine. By default one process uses every local accelerator (or the CPU):
#   launch/local.sh configs/halftone/nib_resnet.py runs/nib_resnet [--config.key=value ...]
# CPU only, K simulated devices (to try the parallel code on a laptop):
#   NUM_CPU_DEVICES=8 launch/local.sh configs/halftone/demo.py runs/demo8
# N processes joined by jax.distributed (--multihost), as on N hosts:
#   NUM_PROCESSES=2 launch/local.sh configs/halftone/demo.py runs/demo_2proc
#
# Environment:
#   NUM_CPU_DEVICES=K  run on the CPU with K devices per process (JAX_PLATFORMS=cpu).
#   NUM_PROCESSES=N    start N processes with a coordinator on a free port of 127.0.0.1. On the CPU
#                      (NUM_CPU_DEVICES set, JAX_PLATFORMS=cpu, or no NVIDIA GPU) each process gets
#                      NUM_CPU_DEVICES devices (default 1); on GPUs each process gets its own equal
#                      share of the visible GPUs (CUDA_VISIBLE_DEVICES). Process 0 writes to this
#                      terminal, process i to WORKDIR/logs/process_i.log (appended: a rerun, or a
#                      second run refused by the workdir lock, keeps what is there). SIGTERM or SIGINT is
#                      passed to every process as SIGTERM (the preemption path: save and stop). If
#                      a process fails, the others get SIGTERM, then SIGKILL after
#                      KILL_GRACE_SECONDS (default 30), and this script exits with the failure's
#                      status; 75 (preempted: every process saved and stopped) stops no one.
#   PYTHON             the interpreter (default: python).
set -euo pipefail

usage() {
  echo "usage: [NUM_PROCESSES=N] [NUM_CPU_DEVICES=K] [PYTHON=python] launch/local.sh CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
}

# The value of environment variable $1 as a positive integer, or a usage error.
positive_int() {
  local value=${!1}
  if [[ ! $value =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: $1=$value: expected a positive integer" >&2
    usage
  fi
  echo "$value"
}

# Runs on the CPU with $1 devices per process: replaces any device count already in XLA_FLAGS.
use_cpu_devices() {
  local words=() kept=() word
  read -ra words <<<"${XLA_FLAGS:-}"
  for word in "${words[@]}"; do
    [[ $word == --xla_force_host_platform_device_count=* ]] || kept+=("$word")
  done
  kept+=("--xla_force_host_platform_device_count=$1")
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${kept[*]}"
}

# Prints the usable GPU ids, one a line: those in CUDA_VISIBLE_DEVICES if it is set, else every GPU
# that `nvidia-smi -L` lists; nothing without a working nvidia-smi.
visible_gpus() {
  local count
  count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || return 0
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -v '^ *$' || true
  else
    seq 0 $((count - 1))
  fi
}

(($# >= 2)) || usage
config=$1
workdir=$2
shift 2
python=${PYTHON:-python}
main_args=(--config "$config" --workdir "$workdir" "$@")

if [[ -n ${NUM_CPU_DEVICES:-} ]]; then
  cpu_devices=$(positive_int NUM_CPU_DEVICES)
  use_cpu_devices "$cpu_devices"
fi
if [[ -z ${NUM_PROCESSES:-} ]]; then
  exec "$python" -m noise_research.main "${main_args[@]}"
fi

num_processes=$(positive_int NUM_PROCESSES)
gpus=()
if [[ -z ${NUM_CPU_DEVICES:-} && ${JAX_PLATFORMS:-} != cpu ]]; then
  mapfile -t gpus < <(visible_gpus)
  if ((${#gpus[@]} == 0)); then
    use_cpu_devices 1
  elif ((${#gpus[@]} % num_processes != 0)); then
    echo "local.sh: ${#gpus[@]} GPUs cannot be shared equally by NUM_PROCESSES=$num_processes" >&2
    exit 2
  fi
fi
per_process=$((${#gpus[@]} / num_processes))

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JAX_COORDINATOR_ADDRESS=127.0.0.1:$port
export JAX_NUM_PROCESSES=$num_processes
mkdir -p "$workdir/logs"
echo "local.sh: $num_processes processes, coordinator $JAX_COORDINATOR_ADDRESS; process 0 writes" \
  "here, process i to $workdir/logs/process_i.log" >&2

pids=()
# Sends signal $1 to every process that is still running.
signal_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'echo "local.sh: stopping every process (SIGTERM)" >&2; signal_all TERM' TERM INT

for ((i = 0; i < num_processes; i++)); do
  if ((per_process > 0)); then
    slice=("${gpus[@]:i*per_process:per_process}")
    CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${slice[*]}")
    export CUDA_VISIBLE_DEVICES
  fi
  if ((i == 0)); then
    JAX_PROCESS_ID=$i "$python" -m noise_research.main --multihost "${main_args[@]}" &
  else
    JAX_PROCESS_ID=$i "$python" -m noise_research.main --multihost "${main_args[@]}" \
      >>"$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

# Polls rather than `wait -n`, which cannot tell a finished process from a trapped signal.
preempted=75 # noise_research.main's PREEMPTED_EXIT_CODE: a checkpoint saved, run again to resume
status=0
kill_at=
running=("${!pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      still+=("$i")
      continue
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    if ((rc == preempted && status == 0)); then
      status=$rc # saved at the common stop step; the others are stopping at it too
    elif ((rc != 0 && (status == 0 || status == preempted))); then
      status=$rc
      echo "local.sh: process $i exited with status $rc; stopping the others" >&2
      signal_all TERM
      kill_at=$((SECONDS + ${KILL_GRACE_SECONDS:-30}))
    fi
  done
  running=("${still[@]}")
  if ((${#running[@]} > 0)); then
    if [[ -n $kill_at ]] && ((SECONDS >= kill_at)); then
      echo "local.sh: processes still running after SIGTERM; sending SIGKILL" >&2
      signal_all KILL
      kill_at=
    fi
    sleep 0.2
  fi
done
exit "$status"
