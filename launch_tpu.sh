#!/usr/bin/env bash
# Run a ddpm_jax config on every worker of a Cloud TPU VM (single host such as v3-8, or a multi-host pod slice).
#
#   1. reuse the TPU VM NAME if it is READY, else create it (deleting a preempted/stopped one first);
#   2. copy this working tree to every worker (or --repo: git clone there);
#   3. install jax[tpu] and the package on every worker;
#   4. run `python3 -m ddpm_jax.main --config=CONFIG --workdir=WORKDIR [extra flags]` on all workers at once.
#      Each worker is one JAX process; jax.distributed finds the others from the TPU metadata.
#
# A gs://BUCKET/PATH workdir is passed straight through: every worker reads and writes it directly (config, lock,
# metrics and samples through etils.epath/gcsfs, checkpoints through Orbax/TensorStore), so all hosts share one
# workdir without a mount. --mount-bucket BUCKET mounts gs://BUCKET with gcsfuse at ~/gcs/BUCKET on every worker, for
# prepared datasets larger than a worker's disk (arrayrecord:gs://... datasets are otherwise staged to local disk).
# Rerunning the same command after a preemption resumes from the last checkpoint (the trainer saves on SIGTERM).
#
# Streaming data (--config.data.name=arrayrecord:DIR, made by `python -m ddpm_jax.data.prepare`; DIR on a disk or
# mount every worker reads): each worker decodes only its own slice of every global batch with grain. --grain-threads
# N (a TPU VM host has 96+ vCPUs: 16 is a good start), --grain-prefetch N (batches decoded ahead; given threads but no
# prefetch: 2 x threads) and --grain-workers N (grain worker processes; 0 = threads only) set data.grain.* on every
# worker (not given: the config's values). They change how fast batches come, never which, and may differ between a
# run and its resume.
#
# Example (the DDPM paper's hardware):
#   ./launch_tpu.sh --name ddpm-v3 --zone europe-west4-a --accelerator-type v3-8 \
#       --config configs/ddpm_cifar10.py --workdir gs://my-bucket/ddpm_cifar10 -- --config.model.dtype=bfloat16
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch_tpu.sh --name NAME --zone ZONE --config CONFIG --workdir DIR [options] [-- extra ddpm_jax.main flags]
  --name NAME               TPU VM name (created if it does not exist)
  --zone ZONE               e.g. europe-west4-a (v3), us-central2-b (v4)
  --config PATH             config file, relative to the repository root (configs/ddpm_cifar10.py)
  --workdir DIR             checkpoints/metrics/samples: a path on the workers, or gs://BUCKET/PATH (used directly)
  --accelerator-type TYPE   default v3-8; a pod slice such as v3-32 or v4-16 runs one process per worker
  --version VERSION         TPU VM software version, default tpu-ubuntu2204-base
  --project PROJECT         gcloud project (default: gcloud's configured one)
  --spot                    create a Spot (preemptible) TPU VM
  --repo URL [--ref REF]    git clone URL (at REF) on the workers instead of copying this working tree
  --detach                  run under nohup (log: ~/ddpm_jax_train.log on each worker) and return
  --dry-run                 print the commands, run nothing
  --grain-threads N         arrayrecord:DIR datasets: grain decoding threads per host (16 is a good start)
  --grain-prefetch N        batches decoded ahead per host (with --grain-threads: default 2 x threads)
  --grain-workers N         grain worker processes per host (0: decode in threads)
  --mount-bucket BUCKET     mount gs://BUCKET with gcsfuse at ~/gcs/BUCKET on every worker (e.g. for a dataset:
                            -- '--config.data.name=arrayrecord:$HOME/gcs/BUCKET/PATH')
Flags after -- go to every worker's ddpm_jax.main in double quotes, so '$HOME/...' expands on the workers.
EOF
  exit 2
}

NAME="" ZONE="" CONFIG="" WORKDIR="" ACCEL="v3-8" VERSION="tpu-ubuntu2204-base" PROJECT="" SPOT=0 REPO="" REF=""
DETACH=0 DRY_RUN=0 EXTRA=() GRAIN_THREADS="" GRAIN_PREFETCH="" GRAIN_WORKERS="" MOUNT_BUCKET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --accelerator-type) ACCEL=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --repo) REPO=$2; shift 2 ;;
    --ref) REF=$2; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --grain-threads) GRAIN_THREADS=$2; shift 2 ;;
    --grain-prefetch) GRAIN_PREFETCH=$2; shift 2 ;;
    --grain-workers) GRAIN_WORKERS=$2; shift 2 ;;
    --mount-bucket) MOUNT_BUCKET=${2#gs://}; MOUNT_BUCKET=${MOUNT_BUCKET%%/*}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "launch_tpu.sh: unknown argument $1 (flags for ddpm_jax.main go after --)" >&2; usage ;;
  esac
done
for required in NAME ZONE CONFIG WORKDIR; do
  [ -n "${!required}" ] || { echo "launch_tpu.sh: --$(echo "$required" | tr A-Z a-z) is required" >&2; usage; }
done
for n in GRAIN_THREADS GRAIN_PREFETCH GRAIN_WORKERS; do
  [[ ${!n} =~ ^[0-9]*$ ]] || { echo "launch_tpu.sh: --$(echo "$n" | tr A-Z_ a-z-) must be a whole number, got ${!n}" >&2; exit 2; }
done
[ -n "$GRAIN_THREADS" ] && [ -z "$GRAIN_PREFETCH" ] && GRAIN_PREFETCH=$((2 * GRAIN_THREADS))

# Quote one word for a POSIX shell (plain words stay bare so that printed commands stay readable).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
# Quote a ddpm_jax.main flag for the workers' shell in double quotes: $VARS expand there (e.g. '$HOME/data').
quote_remote() {
  local a=${1//\\/\\\\}
  a=${a//\"/\\\"}; a=${a//\`/\\\`}
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"; else printf '"%s"' "$a"; fi
}
show() {
  local out="" word
  for word in "$@"; do out+="$(quote "$word") "; done
  echo "+ ${out% }"
}
run() { show "$@"; [ "$DRY_RUN" = 1 ] || "$@"; }

GCLOUD_ARGS=(--zone="$ZONE")
[ -n "$PROJECT" ] && GCLOUD_ARGS+=(--project="$PROJECT")
on_all_workers() { run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_ARGS[@]}" --worker=all --command="$1"; }

# 1. the TPU VM: reuse a READY one, replace a preempted or stopped one, create a missing one.
CREATE=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_ARGS[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
[ "$SPOT" = 1 ] && CREATE+=(--spot)
DESCRIBE=(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_ARGS[@]}" --format=value\(state\))
if [ "$DRY_RUN" = 1 ]; then
  show "${DESCRIBE[@]}"
  echo "# if it does not exist (or is PREEMPTED/STOPPED: delete it first):"
  show "${CREATE[@]}"
else
  show "${DESCRIBE[@]}"
  STATE=$("${DESCRIBE[@]}" 2>/dev/null || true)
  echo "TPU VM $NAME: ${STATE:-not found}"
  case "$STATE" in
    READY) ;;
    "") run "${CREATE[@]}" ;;
    PREEMPTED|STOPPED|TERMINATED)
      run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_ARGS[@]}" --quiet
      run "${CREATE[@]}" ;;
    *) echo "launch_tpu.sh: TPU VM $NAME is $STATE; wait until it is READY and rerun" >&2; exit 1 ;;
  esac
fi

# 2. the code, in ~/ddpm-jax on every worker.
if [ -n "$REPO" ]; then
  CLONE="rm -rf ~/ddpm-jax && git clone --depth 1 $([ -n "$REF" ] && echo "--branch $(quote "$REF") ")$(quote "$REPO") ~/ddpm-jax"
  on_all_workers "$CLONE"
else
  ROOT=$(cd "$(dirname "$0")" && pwd)
  TARBALL=${TMPDIR:-/tmp}/ddpm-jax-$NAME.tar.gz
  run tar -czf "$TARBALL" -C "$ROOT" --exclude=.git --exclude=.venv --exclude=__pycache__ .
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME":ddpm-jax.tar.gz "${GCLOUD_ARGS[@]}" --worker=all
  on_all_workers "rm -rf ~/ddpm-jax && mkdir -p ~/ddpm-jax && tar -xzf ~/ddpm-jax.tar.gz -C ~/ddpm-jax"
fi

# 3. install (JAX for TPU first, then the package and its dependencies).
on_all_workers "cd ~/ddpm-jax && python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ."

# 4. --mount-bucket: gcsfuse at ~/gcs/BUCKET on every worker (a gs:// workdir needs no mount).
REMOTE_WORKDIR=$(quote "$WORKDIR")
if [ -n "$MOUNT_BUCKET" ]; then
  BUCKET=$MOUNT_BUCKET
  INSTALL_GCSFUSE="command -v gcsfuse >/dev/null || { \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }"
  on_all_workers "$INSTALL_GCSFUSE && mkdir -p ~/gcs/$BUCKET && { mountpoint -q ~/gcs/$BUCKET || \
gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET ~/gcs/$BUCKET; }"
fi

# 5. train: the same command on all workers.
TRAIN="python3 -m ddpm_jax.main --config=$(quote "$CONFIG") --workdir=$REMOTE_WORKDIR"
# grain's reader settings, when given (in-memory datasets ignore them); flags after -- come later and win
[ -n "$GRAIN_THREADS" ] && TRAIN+=" --config.data.grain.threads=$GRAIN_THREADS"
[ -n "$GRAIN_PREFETCH" ] && TRAIN+=" --config.data.grain.prefetch=$GRAIN_PREFETCH"
[ -n "$GRAIN_WORKERS" ] && TRAIN+=" --config.data.grain.workers=$GRAIN_WORKERS"
for flag in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(quote_remote "$flag")"; done
if [ "$DETACH" = 1 ]; then
  on_all_workers "cd ~/ddpm-jax && nohup $TRAIN > ~/ddpm_jax_train.log 2>&1 < /dev/null &"
  echo "# follow: gcloud compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=0 --command='tail -f ~/ddpm_jax_train.log'"
else
  on_all_workers "cd ~/ddpm-jax && $TRAIN"
fi
[ "$DRY_RUN" = 1 ] && echo "# dry run: nothing was run"
exit 0
