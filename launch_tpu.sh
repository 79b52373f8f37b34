#!/usr/bin/env bash
# Run a config on every worker of a TPU VM pod slice. Stub: the full launcher (create/reuse the TPU VM, copy the
# code, install, run on all workers with --dry-run) is the scale-out issue's work. Today it prints what it would run.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [extra flags...]  (stub: prints the command; see README)" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3; shift 3
echo "gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command=\"cd ddpm-jax && python -m ddpm_jax.main --config=$CONFIG --workdir=\$WORKDIR $*\""
echo "launch_tpu.sh is a stub: nothing was run" >&2
