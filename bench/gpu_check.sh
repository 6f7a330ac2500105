#!/usr/bin/env bash
# Issue 43 on a lent GPU: the one-shot device check, then training the explicit densities on.
#
# 1. Here, first: `scripts/gpu-carry` fills .whl/ (the serving stack's wheels the device image
#    lacks) and says whether the tree that travels fits the device's 64 MiB; `--data` adds
#    .gpu-data/ (Fashion-MNIST, 31 MB) for step 3. It refuses while the tree does not fit.
# 2. The check, one device call: its stages stop within 420 s (`--budget-s`), under 8 minutes with
#    the wheels' install; the timeout is a backstop, and if it is cut short, rerun it with less:
#      run(command="bench/gpu_check.sh", carry=[".whl"], timeout_s=480)
#    It writes $OUT/gpu_check.json and $OUT/gpu_check.log (bench/gpu_check.py says what is in them).
# 3. With the device time left (`status`: budget_left_s; the machine still warm), train both
#    families on from the shipped weights, side by side on the one GPU, for M minutes of training
#    each, M = (budget_left_s - 150) / 60 rounded down, into $OUT/pixelcnn/ and $OUT/pixelrnn/
#    (model.safetensors, card.json, samples.png) and $OUT/train-FAMILY.log; for instance, 6 min left:
#      run(command="bench/gpu_check.sh --train 3", carry=[".whl", ".gpu-data"], timeout_s=300)
#    Then here, on the CPU: evaluate each (`python -m models.evaluate DIR`) and ship only what
#    measures better than the shipped card (docs/benchmarks.md, "On a lent GPU").
#
# Here (no CUDA) the check says "no CUDA device", writes its JSON under ./out/gpu_check and exits 0;
# `bench/gpu_check.sh --on-cpu` runs its stages on the CPU, shortened, to try the plumbing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
PYTHON=python3
[[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
export PYTHONUNBUFFERED=1

# Into the interpreter's own environment, not a --target folder on PYTHONPATH: the benches start
# their servers with PYTHONPATH set to the repository alone (bench/process.py).
if ! "$PYTHON" -c "import fastapi, pydantic_settings, uvicorn, swagger_ui_bundle" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check .whl/*.whl \
      || echo "installing the carried wheels failed: the serving stages will be skipped" >&2
  else
    echo "no wheels in .whl/ (scripts/gpu-carry, then carry .whl): the serving stages will be skipped" >&2
  fi
fi

if [[ "${1:-}" != "--train" ]]; then
  exec "$PYTHON" -m bench.gpu_check --out "$OUT" "$@"
fi

minutes=${2:?usage: bench/gpu_check.sh --train MINUTES}
data=.gpu-data/fashion-mnist
[[ -f $data/train-images-idx3-ubyte.gz ]] || { echo "no $data: run scripts/gpu-carry --data and carry .gpu-data" >&2; exit 2; }
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# The recipe of the shipped PixelCNN's last leg (its card), on the GPU: the rate 5e-4 falling
# linearly to zero over the budget; the PixelRNN at the batch of its H200 run. The state stays on
# the device; a checkpoint reaches $OUT whole or not at all, every --save-minutes. Eight files come
# back at most: two logs and three files a checkpoint.
train() {  # FAMILY [more flags]
  local family=$1; shift
  "$PYTHON" -m models.train "$family" --init-from "weights/$family" --lr 5e-4 --lr-schedule linear \
    --minutes "$minutes" --epochs 100 --save-minutes 1 --device cuda --data-dir "$data" --quiet "$@" \
    --name "$family" --out "$OUT/$family" --state-dir "/tmp/state-$family" >"$OUT/train-$family.log" 2>&1
}
train pixelcnn & cnn=$!
train pixelrnn --batch-size 128 & rnn=$!
wait $cnn; cnn_rc=$?
wait $rnn; rnn_rc=$?
tail -n 5 "$OUT"/train-*.log
echo "pixelcnn exit $cnn_rc, pixelrnn exit $rnn_rc"
ls -l "$OUT"/pixelcnn "$OUT"/pixelrnn
