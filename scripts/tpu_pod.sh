#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: creates the TPU VM slice, copies this checkout to every
# worker, installs it there, runs train.py on all workers at once (train.py --distributed=auto:
# JAX reads the slice's layout from the TPU metadata), then deletes the slice, also when a step
# fails or the script is interrupted (unless --keep).
#
#   WORKDIR=gs://my-bucket/s6jax/run1 bash scripts/tpu_pod.sh [OPTION ...] [-- TRAIN_FLAG ...]
#   bash scripts/tpu_pod.sh --dry-run --workdir=gs://my-bucket/s6jax/run1 -- --config.seed=3
#
# --dry-run prints every command, one per line, shell-quoted, and runs none. --help lists the
# settings.
set -euo pipefail

PROG=tpu_pod.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
usage: bash scripts/tpu_pod.sh [OPTION ...] [-- TRAIN_FLAG ...]

Creates a Cloud TPU VM slice, copies this checkout to every worker, installs it (a venv with
`pip install '.[gcs]' 'jax[tpu]'`), runs train.py on all workers with --distributed=auto, and
deletes the slice at the end, also on failure or Ctrl-C, unless --keep.

Each option has an environment variable; the option wins over the variable.
  --name=NAME          TPU_NAME      TPU VM name (default s6jax-pod)
  --zone=ZONE          ZONE          zone (default us-central2-b, where v4 slices are)
  --accelerator=TYPE   ACCELERATOR   accelerator type (default v4-16: 2 hosts, 8 chips)
  --runtime=VERSION    RUNTIME       TPU VM runtime version (default: from the accelerator:
                                     v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                                     v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --project=PROJECT    PROJECT       GCP project (default: gcloud's configured one)
  --workdir=gs://...   WORKDIR       required: the run's folder, on GCS (the workers share no disk)
  --config=FILE        CONFIG        train.py config (default configs/mnist.py)
  --data-dir=DIR       DATA_DIR      IDX folder on the workers (default empty: each worker
                                     downloads MNIST itself)
  --jax-tpu=SPEC       JAX_TPU       pip requirement for JAX on TPU (default 'jax[tpu]')
  --no-create          CREATE=0      use an existing slice of that name (one kept with --keep);
                                     it is deleted at the end too, unless --keep
  --keep               KEEP=1        leave the slice running at the end
  --dry-run            DRY_RUN=1     print the commands, one per line, and run none
  -h, --help                         this text
Extra train.py flags: after `--`, each kept as one argument (spaces and quotes intact), or in
TRAIN_ARGS (split on whitespace), which come first.
EOF
}

die() {  # die MESSAGE: one line on stderr, exit status 2.
  echo "$PROG: error: $*" >&2
  exit 2
}

quote1() {  # quote1 ARG: ARG for a shell line; bare if safe, else single-quoted.
  local a=$1 s="'"
  if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$a"
    return
  fi
  while [[ $a == *"'"* ]]; do  # Each ' becomes '\'' (close, escaped quote, reopen).
    s+="${a%%"'"*}'\\''"
    a=${a#*"'"}
  done
  printf '%s' "$s$a'"
}

q() {  # q ARG ...: the arguments as one shell line; in --flag=V and NAME=V only V is quoted.
  local a line=''
  for a in "$@"; do
    if [[ $a =~ ^(--[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.*)$ ]]; then
      line+=" ${BASH_REMATCH[1]}$(quote1 "${BASH_REMATCH[2]}")"
    else
      line+=" $(quote1 "$a")"
    fi
  done
  printf '%s\n' "${line# }"
}

run() {  # run CMD ...: prints CMD (dry run), or echoes it to stderr and runs it.
  if [ "$DRY_RUN" = 1 ]; then
    q "$@"
  else
    echo "+ $(q "$@")" >&2
    "$@"
  fi
}

TPU_NAME=${TPU_NAME:-s6jax-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-16}
RUNTIME=${RUNTIME:-}
PROJECT=${PROJECT:-}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-configs/mnist.py}
DATA_DIR=${DATA_DIR:-}
JAX_TPU=${JAX_TPU:-jax[tpu]}
CREATE=${CREATE:-1}
KEEP=${KEEP:-0}
DRY_RUN=${DRY_RUN:-0}
read -r -a train_args <<<"${TRAIN_ARGS:-}"

while [ $# -gt 0 ]; do
  case $1 in
    --name=*) TPU_NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --runtime=*) RUNTIME=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --data-dir=*) DATA_DIR=${1#*=} ;;
    --jax-tpu=*) JAX_TPU=${1#*=} ;;
    --no-create) CREATE=0 ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) die "unknown option '$1' (train.py flags go after '--'; see --help)" ;;
  esac
  shift
done

[ -n "$WORKDIR" ] || die "set WORKDIR (or --workdir) to a gs:// folder, e.g. gs://my-bucket/s6jax/run1"
[[ $WORKDIR == gs://?* ]] || die "WORKDIR must be a gs:// folder (the TPU workers share no disk), not '$WORKDIR'"
[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "TPU name '$TPU_NAME': lowercase letters, digits and hyphens, starting with a letter"
[ -n "$ZONE" ] || die "set ZONE (or --zone)"
if [ -z "$RUNTIME" ]; then
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) die "no default runtime for accelerator '$ACCELERATOR': set RUNTIME (or --runtime)" ;;
  esac
fi
[ -f "$REPO/$CONFIG" ] || die "no config file $CONFIG in $REPO"
if [ "$DRY_RUN" != 1 ]; then
  command -v gcloud >/dev/null || die "gcloud not found on PATH (the Google Cloud CLI)"
fi

where=(--zone="$ZONE")
[ -z "$PROJECT" ] || where+=(--project="$PROJECT")
tarball=${TMPDIR:-/tmp}/tpu_pod-$TPU_NAME.tgz
# train.py's command on each worker, run from its copy of the repo (relative to the home folder).
train=(.venv/bin/python train.py --config="$CONFIG" --workdir="$WORKDIR" --distributed=auto)
[ -z "$DATA_DIR" ] || train+=(--config.data_dir="$DATA_DIR")
train+=(${train_args[@]+"${train_args[@]}"})
# The install, as the Makefile's (`python3 -m venv .venv`, then pip install .), with gcsfs
# (the `gcs` extra, for the gs:// workdir) and JAX's TPU wheels. Some TPU VM images lack python3-venv: it is installed only if the venv fails.
apt='sudo DEBIAN_FRONTEND=noninteractive apt-get -qy -o DPkg::Lock::Timeout=300'
setup="mkdir -p s6jax && tar -xzf s6jax.tgz -C s6jax && cd s6jax && \
{ [ -x .venv/bin/pip ] || python3 -m venv .venv || \
{ $apt update && $apt install python3-venv && python3 -m venv --clear .venv; }; } && \
.venv/bin/python -m pip install -q '.[gcs]' $(q "$JAX_TPU")"

pack() {  # The checkout as git sees it, without what it ignores (.venv, workdirs): one archive.
  local list=(git -C "$REPO" ls-files -z --cached --others --exclude-standard)
  local tar=(tar -czf "$tarball" -C "$REPO" --null -T -)
  if [ "$DRY_RUN" = 1 ]; then
    echo "$(q "${list[@]}") | $(q "${tar[@]}")"
  else
    echo "+ $(q "${list[@]}") | $(q "${tar[@]}")" >&2
    "${list[@]}" | "${tar[@]}"
  fi
}

up=0        # 1 once the slice is ours to delete: created by this run, or named by --no-create.
creating=0  # 1 while `create` runs: interrupted or failed, it may still have made the slice.
cleanup() {  # On every exit: delete the slice (unless KEEP=1) and the local archive.
  local status=$?
  trap - EXIT
  local delete=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet)
  if [ "$up" = 1 ] && [ "$KEEP" = 1 ]; then
    echo "$PROG: keeping TPU VM $TPU_NAME; delete it with: $(q "${delete[@]}")" >&2
  elif [ "$up" = 1 ]; then
    if ! run "${delete[@]}"; then
      echo "$PROG: error: could not delete TPU VM $TPU_NAME, which may still be running (and" \
        "billed): $(q gcloud compute tpus tpu-vm list "${where[@]}")" >&2
      [ "$status" != 0 ] || status=1
    fi
  elif [ "$creating" = 1 ]; then  # Not deleted here: the name may be another run's slice.
    echo "$PROG: the create step did not finish; if TPU VM $TPU_NAME exists and is yours," \
      "delete it with: $(q "${delete[@]}")" >&2
  fi
  run rm -f "$tarball"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The copy is this checkout, sent with scp, rather than a `git clone` on each worker: it runs
# exactly the code here (uncommitted changes included), and the workers need neither access to
# a git host nor its credentials. One archive of the files git tracks or would track is one
# transfer per worker (not one per file, as `scp --recurse` would make) and leaves out .venv
# and workdirs/.
pack
if [ "$CREATE" = 1 ]; then
  creating=1
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
  creating=0
fi
up=1
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:s6jax.tgz" "${where[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$setup"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all \
  --command="cd s6jax && $(q "${train[@]}")"
