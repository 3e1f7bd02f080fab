#!/usr/bin/env bash
# The GPU figures in one call (a GPU machine may be at hand for minutes, not hours):
#
#   OUT=/tmp/gpu DATA=../shared/mnist bash scripts/gpu_check.sh [CONFIG ...]   # default: mnist
#
# For each configs/CONFIG.py: seed 0 trains alone on the GPU (its seconds per epoch, images/s
# and training seconds to 99.4 % are the timing figures), then seeds 1-4 train at once on the
# same GPU (their accuracy counts; their seconds do not: they shared the chip). Then
# bench/bench.py times JAX beside PyTorch on that GPU (same net, batch 128, data on the GPU).
# Writes under OUT: env.txt (GPU, versions), CONFIG.md (seed table, then the timing row the
# README's GPU table quotes), bench.json, and runs.tar.gz (every run's metrics, summary and log;
# no checkpoints).
#
# Settings (environment): PYTHON, the interpreter (default python3); TRAIN_ARGS, added to every
# train.py; BENCH_ARGS, added to bench.py; SOLO=1 trains seeds 1-4 one after another, each
# alone, so every seed's seconds count; SEEDS='1 2' picks the seeds after 0 (SEEDS=' ': seed 0
# only); BENCH=0 skips the benchmark. A dry run on a CPU:
#   OUT=/tmp/dry DATA=../shared/mnist PYTHON=python TRAIN_ARGS='--config.num_epochs=1' \
#     BENCH_ARGS='--rounds=1 --round_steps=8' bash scripts/gpu_check.sh
# A machine with no package index: wheels in WHEELS (default .whl/, ignored by git; the H200
# image lacked ml_collections and tensorboardX) are installed to a temporary folder first, and
# those in WHEELS/pins/ (this repo's tested flax/optax/orbax/chex) only if a first run fails
# without them.
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the results}
DATA=${DATA:-../shared/mnist}
PY=${PYTHON:-python3}
TRAIN_ARGS=${TRAIN_ARGS:-}
export PYTHONUNBUFFERED=1
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(mnist)
mkdir -p "$OUT"
W=$(mktemp -d)

WHEELS=${WHEELS:-.whl}
install_wheels() {  # install_wheels DIR: its wheels into /tmp/site, first on the import path.
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$1"/*.whl || return
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  install_wheels "$WHEELS" || exit 1
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY - <<'EOF'
import importlib, platform
print('python', platform.python_version())
for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'chex', 'ml_collections', 'torch'):
  try:
    print(m, getattr(importlib.import_module(m), '__version__', '?'))
  except Exception as e:  # noqa: BLE001 - a report, not a check
    print(m, 'missing:', e)
import jax
print('devices', jax.devices())
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

train() {  # train CONFIG SEED SECONDS [ROOT]: one run into ROOT/seedSEED (ROOT: $W/CONFIG).
  local dir=${4:-$W/$1}/seed$2
  mkdir -p "$dir"
  timeout "$3" $PY train.py --config="configs/$1.py" --workdir="$dir" \
    --config.data_dir="$DATA" --config.seed="$2" --config.plots=False $TRAIN_ARGS \
    </dev/null >"$dir/log.txt" 2>&1  # Its log beside it.
}

for c in "${configs[@]}"; do
  t0=$(date +%s%N)
  if ! train "$c" 0 240; then
    echo "$c seed 0 failed:"; tail -30 "$W/$c/seed0/log.txt"
    # The machine's flax/optax/orbax may not be the versions this repo was tested with: if
    # .whl/pins/ holds those, put them first on the path and try once more.
    compgen -G "$WHEELS/pins/*.whl" >/dev/null && [ -z "${PINNED:-}" ] || continue
    install_wheels "$WHEELS/pins"
    export PINNED=1
    echo "retrying with the pinned wheels of $WHEELS/pins: $(ls "$WHEELS/pins" | tr '\n' ' ')"
    rm -rf "$W/$c/seed0"
    train "$c" 0 240 || {
      tail -30 "$W/$c/seed0/log.txt"; continue; }
  fi
  echo "$c seed 0 alone: $(( ($(date +%s%N) - t0) / 1000000 )) ms wall, process start to end"
  grep -E 'Compiled|epoch +[0-9]+ ' "$W/$c/seed0/log.txt" | sed 's/^.*\] //'
  for s in ${SEEDS:-1 2 3 4}; do  # At once: each takes a slice of the GPU's memory, not 75 % of it.
    if [ -n "${SOLO:-}" ]; then  # Or one after another, alone: every seed's seconds count.
      train "$c" "$s" 240
    else
      XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 train "$c" "$s" 300 &
    fi
  done
  wait
  done_seeds=()
  for s in 0 ${SEEDS:-1 2 3 4}; do
    if [ -f "$W/$c/seed$s/summary.json" ]; then done_seeds+=("$s"); else
      echo "$c seed $s did not finish:"; tail -5 "$W/$c/seed$s/log.txt"
    fi
  done
  seed_list=$(IFS=,; echo "${done_seeds[*]}")
  $PY -m scripts.seeds --table_only --timings --seeds="$seed_list" --root="$W/$c" | tee "$OUT/$c.md"
  tar czf "$OUT/runs.tar.gz" -C "$W" --exclude=checkpoints .  # Now: a later step may time out.

  if [ "$c" = "${configs[0]}" ] && [ "${BENCH:-1}" != 0 ]; then  # Once, after the first.
    timeout 240 $PY -m bench.bench --data_dir="$DATA" --rounds=5 ${BENCH_ARGS:-} \
      --out="$OUT/bench.json" 2>&1 | grep -v -E '^(I|W)[0-9]{4} '
  fi
done
if [ -n "${XLA_SETS:-}" ]; then  # Seed 0 of the first config again, alone, per XLA flag set.
  c=${configs[0]}
  echo "# configs/$c.py, seed 0 alone, once per line of $XLA_SETS" | tee "$OUT/xla_sets.md"
  while read -r name flags; do
    case $name in '' | '#'*) continue ;; esac
    root=$W/xla/$name
    if XLA_FLAGS="$flags" train "$c" 0 240 "$root"; then
      printf '\n## %s: XLA_FLAGS=%s\n\n' "$name" "$flags"
      $PY -m scripts.seeds --table_only --timings --seeds=0 --root="$root" | sed -n '/^| params /,$p'
    else
      printf '\n## %s: XLA_FLAGS=%s FAILED\n' "$name" "$flags"; tail -5 "$root/seed0/log.txt"
    fi
  done <"$XLA_SETS" | tee -a "$OUT/xla_sets.md"
  tar czf "$OUT/runs.tar.gz" -C "$W" --exclude=checkpoints .
fi
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
