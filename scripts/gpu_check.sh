#!/usr/bin/env bash
# The GPU check of TCURLoRA: one run, at most about 8 minutes on one H100-class GPU, everything
# written to one output folder. See the README section "GPU check" and --help.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/gpu_check.sh [options]

Runs, on CUDA, each step with its own time limit, recording its exit code, time and log:
  1. env        nvidia-smi and the versions of python, torch, peft
  2. install    the wheels it needs (monai, SimpleITK, nibabel, pytest, ...) from a folder, offline:
                pip install --no-index --find-links WHEELS --no-deps -r scripts/gpu_check_requirements.txt
                (skipped when the python imports them already)
  3. cuda-tests the tests marked @pytest.mark.cuda (Testing/test_cuda.py)
  4. finetune-* every method (tcur, lora, decoder, head, full) on CUDA with bf16 autocast for
                ITERATIONS iterations on real hippocampus cases (DATA/hippocampus)
  5. segment    two hippocampus volumes on CUDA with the tCURLoRA adapter of step 4
  6. oom        a provoked out-of-memory: full fine-tuning of UNETR at the paper's 128^3 patch,
                batch 8, under a forced cap of GPU memory (TCURLORA_CUDA_MEMORY_FRACTION); passes
                when tcurlora exits with code 4 and says "CUDA out of memory"
  7. bench      tcurlora bench configs/bench/paper-size-gpu.json (step time, peak memory per method)
  8. pretrain   configs/pretrain/unetr-gpu.json for PRETRAIN_MINUTES minutes, a checkpoint every minute
  with --transfer-minutes N (does a pretrained base beat starting over?):
  9. transfer-pretrain   configs/pretrain/segresnet-mri-gpu.json for N minutes (a CNN base)
 10. transfer-*          configs/bench/transfer-{left_atrium,hippocampus}-val.json on that base: tCURLoRA,
                         decoder, full and scratch, scored on validation cases only (never a test split)

Options:
  --wheels DIR            folder of wheels to install from (default: $TCURLORA_WHEELS)
  --out DIR               output folder (default: $OUT, else ./gpu_check_out); must be empty or new
  --data DIR              folder holding hippocampus/, acdc/, brats2013/ (default: $TCURLORA_DATA,
                          else ../shared/data next to the repository)
  --python PY             python with torch and peft (default: python3)
  --base-model REF        base model of the fine-tuning steps (default: unetr-small-acdc-brats)
  --iterations N          fine-tuning iterations per method (default 10)
  --pretrain-minutes N    minutes of pretraining (default 2)
  --oom-fraction F        share of GPU memory allowed in the oom step (default 0.02)
  --transfer-minutes N    also pretrain the CNN base for N minutes and run the transfer benches (default: off)
  --only-transfer         run only env, install and the transfer steps (needs --transfer-minutes)
  --dry-run               print the plan (every command and its limit) and exit; nothing runs
  -h, --help              this help

Output: OUT/summary.tsv (step, expected and actual exit code, seconds, PASS/FAIL), OUT/logs/STEP.log,
and the step outputs (finetune/, segment/, oom/, bench/, pretrain/). Exit code 0 when every step
passed, 1 when one failed, 2 for bad arguments or a missing prerequisite.

Building the wheel folder (on a machine with internet, for the GPU machine's python, e.g. 3.11):
  pip download --only-binary=:all: --no-deps --python-version 3.11 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -r scripts/gpu_check_requirements.txt -d wheels/
  (a pure-Python package without a wheel: pip wheel --no-deps -w wheels/ PACKAGE)
EOF
}

die() { echo "gpu_check: $*" >&2; exit 2; }

positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"; }
positive_number() { [[ "$2" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && awk "BEGIN{exit !($2 > 0)}" \
  || die "$1 needs a positive number, got '$2'"; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${TCURLORA_WHEELS:-}"
OUT_DIR="${OUT:-}"
DATA="${TCURLORA_DATA:-$ROOT/../shared/data}"
PY="python3"
BASE="unetr-small-acdc-brats"
ITERATIONS=10
PRETRAIN_MINUTES=2
OOM_FRACTION=0.02
TRANSFER_MINUTES=0
ONLY_TRANSFER=0
DRY_RUN=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --only-transfer) ONLY_TRANSFER=1; shift ;;
    --wheels|--out|--data|--python|--base-model|--iterations|--pretrain-minutes|--oom-fraction|--transfer-minutes)
      [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"
      case "$1" in
        --wheels) WHEELS="$2" ;;
        --out) OUT_DIR="$2" ;;
        --data) DATA="$2" ;;
        --python) PY="$2" ;;
        --base-model) BASE="$2" ;;
        --iterations) positive_int "$1" "$2"; ITERATIONS="$2" ;;
        --pretrain-minutes) positive_number "$1" "$2"; PRETRAIN_MINUTES="$2" ;;
        --oom-fraction) positive_number "$1" "$2"; OOM_FRACTION="$2" ;;
        --transfer-minutes) positive_number "$1" "$2"; TRANSFER_MINUTES="$2" ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

OUT_DIR="${OUT_DIR:-$PWD/gpu_check_out}"
awk "BEGIN{exit !($OOM_FRACTION <= 1)}" || die "--oom-fraction must be at most 1, got '$OOM_FRACTION'"
[[ $ONLY_TRANSFER -eq 0 || $TRANSFER_MINUTES != 0 ]] || die "--only-transfer needs --transfer-minutes N"
HIPPO="$DATA/hippocampus"
PRETRAIN_LIMIT=$(awk "BEGIN{printf \"%d\", $PRETRAIN_MINUTES * 60 + 240}")

if [[ $DRY_RUN -eq 0 ]]; then
  [[ -f "$HIPPO/dataset.json" ]] || die "no real data at $HIPPO (give --data or TCURLORA_DATA)"
  if [[ -e "$OUT_DIR" && -n "$(ls -A "$OUT_DIR" 2>/dev/null)" ]]; then
    die "output folder $OUT_DIR is not empty"
  fi
  mkdir -p "$OUT_DIR/logs" || die "cannot create $OUT_DIR"
  printf 'step\texpected_rc\trc\tseconds\tresult\n' > "$OUT_DIR/summary.tsv"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || die "cannot enter $ROOT"
FAILED=0

# step NAME EXPECTED_RC TIMEOUT_S CMD...: run CMD with a limit, log it, record PASS/FAIL.
step() {
  local name="$1" expected="$2" limit="$3"; shift 3
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '[plan] %-16s limit %4ss, expect exit %s: %s\n' "$name" "$limit" "$expected" "$*"
    return 0
  fi
  local log="$OUT_DIR/logs/$name.log" start rc result
  echo "== $name: $*" | tee "$log"
  start=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  result=PASS
  [[ "$rc" == "$expected" ]] || result=FAIL
  if [[ $result == PASS && -n "${CHECK_TEXT:-}" ]] && ! grep -q "$CHECK_TEXT" "$log"; then
    result=FAIL
    echo "gpu_check: expected '$CHECK_TEXT' in the output" >>"$log"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$expected" "$rc" "$(( $(date +%s) - start ))" "$result" \
    | tee -a "$OUT_DIR/summary.tsv"
  [[ $result == PASS ]] || FAILED=1
}

TCUR=("$PY" -m tcurlora)

step env 0 60 bash -c "nvidia-smi; $PY -c 'import sys, torch, peft; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0)); print(\"peft\", peft.__version__); assert torch.cuda.is_bf16_supported()'"

if [[ $DRY_RUN -eq 1 ]] || ! "$PY" -c "import monai, SimpleITK, nibabel, pytest, scipy, einops" 2>/dev/null; then
  if [[ $DRY_RUN -eq 0 && ( -z "$WHEELS" || ! -d "$WHEELS" ) ]]; then
    die "monai/SimpleITK/nibabel/pytest missing and no wheel folder (give --wheels or TCURLORA_WHEELS; see --help)"
  fi
  step install 0 180 "$PY" -m pip install --no-index --find-links "${WHEELS:-WHEELS}" --no-deps \
    -r "$ROOT/scripts/gpu_check_requirements.txt"
fi

if [[ $ONLY_TRANSFER -eq 0 ]]; then
step cuda-tests 0 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider "$ROOT/Testing/test_cuda.py"

for method in tcur lora decoder head full; do
  step "finetune-$method" 0 120 "${TCUR[@]}" finetune --base-model "$BASE" --data "$HIPPO" --num-cases 4 \
    --method "$method" \
    --iterations "$ITERATIONS" --batch-size 2 --device cuda --seed 0 --output "$OUT_DIR/finetune/$method"
done

step segment 0 90 "${TCUR[@]}" segment "$HIPPO/imagesTr/hippocampus_001.nii.gz" \
  "$HIPPO/imagesTr/hippocampus_003.nii.gz" --base-model "$BASE" --adapter "$OUT_DIR/finetune/tcur" --device cuda \
  --output "$OUT_DIR/segment"

CHECK_TEXT="CUDA out of memory" step oom 4 120 env TCURLORA_CUDA_MEMORY_FRACTION="$OOM_FRACTION" \
  "${TCUR[@]}" finetune --base-model preset:unetr-base --data "$HIPPO" --num-cases 1 --method full \
  --iterations 1 --batch-size 8 --device cuda --output "$OUT_DIR/oom/adapter"

step bench 0 240 "${TCUR[@]}" bench "$ROOT/configs/bench/paper-size-gpu.json" --device cuda \
  --output "$OUT_DIR/bench"

step pretrain 0 "$PRETRAIN_LIMIT" "${TCUR[@]}" pretrain --config "$ROOT/configs/pretrain/unetr-gpu.json" \
  --data-root "$DATA" --output "$OUT_DIR/pretrain/model" --device cuda \
  --max-minutes "$PRETRAIN_MINUTES" --checkpoint-minutes 1
fi

if [[ $TRANSFER_MINUTES != 0 ]]; then
  TRANSFER_BASE="$OUT_DIR/transfer/segresnet-mri-gpu"
  TRANSFER_LIMIT=$(awk "BEGIN{printf \"%d\", $TRANSFER_MINUTES * 60 + 240}")
  step transfer-pretrain 0 "$TRANSFER_LIMIT" "${TCUR[@]}" pretrain \
    --config "$ROOT/configs/pretrain/segresnet-mri-gpu.json" --data-root "$DATA" --output "$TRANSFER_BASE" \
    --device cuda --max-minutes "$TRANSFER_MINUTES" --checkpoint-minutes 1
  for dataset in left_atrium hippocampus; do
    step "transfer-$dataset" 0 600 "${TCUR[@]}" bench "$ROOT/configs/bench/transfer-$dataset-val.json" \
      --data "$DATA/$dataset" --base-model "$TRANSFER_BASE" --device cuda --output "$OUT_DIR/transfer/$dataset"
  done
fi

if [[ $DRY_RUN -eq 1 ]]; then
  echo "[plan] output: ${OUT_DIR} (summary.tsv, logs/, finetune/, segment/, oom/, bench/, pretrain/, transfer/)"
  exit 0
fi
echo "gpu_check: $([[ $FAILED -eq 0 ]] && echo 'every step passed' || echo 'a step FAILED'); see $OUT_DIR/summary.tsv"
exit "$FAILED"
