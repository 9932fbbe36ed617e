#!/bin/bash
# One check of the project's GPU path, in under 8 minutes on one H100/H200, with one report at the end:
#   bash bench/gpu_check.sh [OUT_DIR]       # default OUT_DIR: $OUT, else runs/gpu_check
# The report is printed and written to OUT_DIR/gpu_check.txt and gpu_check.json; each step's log goes to
# OUT_DIR/logs/, its small outputs (results.json, metrics.jsonl, probes.json) to OUT_DIR/<step>/. Checkpoints and
# models go to WORK_DIR (default: a temporary folder, removed at the end unless KEEP_WORK=1).
#
# Made for one unattended run on a machine without internet, dataset or wandb: CIFAR-sized synthetic data (and a
# small generated folder of JPEGs for 6c-6d), --report-to none. Two processes share the one GPU under gloo (NCCL
# refuses two ranks on one device; Accelerate puts process i on cuda:(i % device_count)). Every step is
# independent: a failing one is reported as FAIL with the tail of its log and the next one runs; each has a time
# limit, and the whole run a budget (BUDGET_S, from the start, pre-flight included). STEP_LIMIT_SCALE (default 1)
# multiplies every step's limit: the tests' CPU-mode runs share 2 cores with other work, and there a limit is only a
# bound on a hang. Exit status: 0 when no step failed, 2 when the pre-flight stopped it.
#
#   1a-1d  both scripts, bf16 and fp16, --eval-at-start and evaluation every epoch, 2 epochs (resnet18: batch norm)
#   2      SIGUSR1: checkpoint and stop (worker exit code 3, "stopping on SIGUSR1 at step N"), then resume to the end
#   3      --deterministic: 12 steps straight, and killed after the step-4 checkpoint then resumed: the two step-12
#          model.safetensors must be bitwise equal
#   4      resume with --compile toggled: N steps eager, then the same output dir with --compile to 2N
#   5      evaluate.py (2 processes) on the encoder of step 1a: probes.json
#   6a-6b  --count-host-syncs, 1 process, bf16: synchronizing CUDA operations per steady step (target 0)
#   6c-6d  the same with the other data placements, on a generated folder of JPEGs: the train split in host memory
#          (--data-placement host, rotation) and decoded from its files batch by batch (stream, siamese)
#   7      bash bench/gpu.sh: the throughput table (2 s a measurement; the compiled row only if time is left)
#
# Before any step, a pre-flight: the Python packages import (with $PYTHON, default python3), and torch sees the GPU
# that nvidia-smi lists (unless DEVICE=cpu); else one line says what to do, the report says so, exit status 2.
#
# Without a GPU (or with DEVICE=cpu) the same steps run at tiny sizes on the CPU (accelerate_configs/cpu.yaml,
# gloo, no mixed precision: the bf16 steps 1a and 1d run as "no", which their titles say), in about 3 minutes on 2
# cores; steps 1b-1c (fp16 needs a GPU: they would be 1d and 1a again), 6a-6d (the scripts count host syncs only on
# CUDA; 6c-6d still check the placement the run took) and 7 are SKIPPED, saying why. Steps 1-6
# run in three concurrent lanes (most of their time is process start-up; PARALLEL=0 runs them one after the
# other), step 7 alone at the end, with at least GPU_SH_MIN_S of the budget kept for it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out/logs" || exit 2
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1

START=$SECONDS
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-auto}

# ----------------------------------------------------------------------------------------------------- pre-flight
# A missing package would fail every step one by one, and a torch that sees no GPU would run the CPU mode on a GPU
# machine and pass: stop at once with one line, and a report that says so.
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037')"; }
preflight_fail() {  # preflight_fail LINE: print it, write it as the report, exit 2 (no step has run)
  echo "gpu_check: $*" >&2
  echo "gpu_check: $*" >"$out/gpu_check.txt"
  printf '{"ok": false, "preflight_error": %s, "device": %s, "steps": [], "pass": 0, "fail": 0, "skipped": 0}\n' \
    "$(json_string "gpu_check: $*")" "$(json_string "$DEVICE")" >"$out/gpu_check.json"
  exit 2
}
[[ $DEVICE =~ ^(auto|cpu|gpu)$ ]] || preflight_fail "DEVICE must be auto, cpu or gpu, not '$DEVICE'"
command -v "$PYTHON" >/dev/null \
  || preflight_fail "no Python interpreter '$PYTHON': set PYTHON to the environment's python (default python3)"
command -v accelerate >/dev/null \
  || preflight_fail "no 'accelerate' command on PATH: activate the environment, or pip install -r requirements.txt"
probe=$("$PYTHON" - 2>"$out/logs/preflight.log" <<'EOF'
import importlib, sys
# leaves first: accelerate imports safetensors, torchvision torch; the first to fail is the one named
for name in ("numpy", "PIL", "safetensors", "torch", "torchvision", "accelerate"):
    try:
        importlib.import_module(name)
    except Exception as e:
        print("missing", name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        sys.exit(1)
import accelerate, torch
print("ok", torch.cuda.device_count(), torch.__version__, torch.version.cuda or "none", accelerate.__version__)
EOF
)
read -r probe_status probe_1 probe_2 probe_3 probe_4 <<<"$(tail -n 1 <<<"$probe")"
if [[ $probe_status == missing ]]; then
  preflight_fail "cannot import $probe_1 with $PYTHON ($probe_2 $probe_3 $probe_4): pip install -r requirements.txt" \
    "(or set PYTHON to the environment's python)"
elif [[ $probe_status != ok ]]; then
  preflight_fail "$PYTHON failed importing torch, torchvision, accelerate, safetensors, numpy, PIL" \
    "($(tail -n 1 "$out/logs/preflight.log")): pip install -r requirements.txt"
fi
TORCH_GPUS=$probe_1 VERSIONS="torch $probe_2, accelerate $probe_4"
if [[ $DEVICE != cpu ]]; then
  listed=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  if ((TORCH_GPUS == 0 && listed == 0)) && [[ $DEVICE == gpu ]]; then
    preflight_fail "DEVICE=gpu but neither torch nor nvidia-smi sees a GPU: run it on a GPU machine, or DEVICE=cpu"
  elif ((TORCH_GPUS == 0 && listed > 0)); then
    if [[ $probe_3 == none ]]; then
      why="torch $probe_2 is a CPU build: pip install -r requirements.txt from a CUDA wheel index"
    elif [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
      why="CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides them: unset it"
    else
      why="torch $probe_2 (CUDA $probe_3) cannot use them: check the driver with nvidia-smi"
    fi
    preflight_fail "nvidia-smi lists $listed GPU(s) but torch sees none: $why (or DEVICE=cpu for the CPU check)"
  fi
  [[ $DEVICE == gpu ]] || DEVICE=$( ((TORCH_GPUS > 0)) && echo gpu || echo cpu)
fi

# ------------------------------------------------------------------------------------------------- mode and sizes
if [[ $DEVICE == cpu ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the scripts pick the CPU (and gloo) when torch sees no GPU
  # 96 images: the siamese pair AUC needs 2 test images (a quarter: 24) of each of the 10 classes
  SIZE=96 BATCH=16 PROBE_EPOCHS=2 BN_MODEL=simple_cnn DET_MODEL=simple_cnn USR1_STEPS=60 USR1_LOG=5
  COMPILE_N=4 SYNC_STEPS=12 SYNC_BATCH=16 EVAL_BATCH=64
  BF16=no  # bf16 would only be slow on the CPU: its steps run without autocast (their titles say "no")
  FP16=fp16  # not supported on the CPU: its steps are SKIPPED (fp16_or_skip)
  BUDGET_S=${BUDGET_S:-600} GPU_SH_MIN_S=0
else
  # 4096 images, 256 per step (128 per process): 16 steps an epoch. resnet18 where batch norm matters (1a-1d:
  # BN buffers under evaluation at start and every epoch; 3: its ~50 ms steps leave time to kill the run between
  # its checkpoints), simple_cnn elsewhere.
  SIZE=4096 BATCH=256 PROBE_EPOCHS=5 BN_MODEL=resnet18 DET_MODEL=resnet18 USR1_STEPS=1000 USR1_LOG=10
  COMPILE_N=20 SYNC_STEPS=60 SYNC_BATCH=128 EVAL_BATCH=512
  BF16=bf16 FP16=fp16
  # Steps 1-6 end by BUDGET_S - GPU_SH_MIN_S, so that step 7 (its eager table at 2 s a measurement) gets that much
  # at least; it gets whatever steps 1-6 leave.
  BUDGET_S=${BUDGET_S:-465} GPU_SH_MIN_S=${GPU_SH_MIN_S:-150}
fi
PARALLEL=${PARALLEL:-1}
DIST=(--dist-backend gloo --dist-timeout 120)
DATA=(--dataset synthetic --synthetic-size "$SIZE" --report-to none)
# 6c-6d: 10 classes of 64 train and 10 test JPEGs at 32 px (batches of SYNC_BATCH leave steady steps in an epoch)
FOLDER_TRAIN=64 FOLDER_TEST=10

if [[ -n ${WORK_DIR:-} ]]; then
  work=$WORK_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  [[ ${KEEP_WORK:-0} == 1 ]] || trap 'rm -rf "$work"' EXIT
fi
work=$(cd "$work" && pwd)
DEADLINE=$((START + BUDGET_S))

# ---------------------------------------------------------------------------------------------------- helpers
# A step is a shell function run in a subshell, its output in OUT_DIR/logs/<id>.log. It writes one line of detail
# with `say`, fails with `die REASON`, is skipped with `skip REASON`, and runs commands with `run_cmd`, which puts
# the step's remaining time on each as a timeout.
say() { printf '%s; ' "$*" >>"$STEP_DIR/detail"; echo "== $*"; }
die() { printf 'FAILED: %s' "$*" >>"$STEP_DIR/detail"; echo "== FAILED: $*"; exit 1; }
skip() { printf '%s' "$*" >>"$STEP_DIR/detail"; echo "== SKIPPED: $*"; exit 99; }
left() { echo $((STEP_END - SECONDS)); }
failed() { case $1 in 124 | 137) echo "timed out (the step's time limit)" ;; *) echo "failed (exit $1)" ;; esac; }

run_cmd() {  # run_cmd COMMAND...: with the step's remaining time as timeout; returns the command's status
  local t
  t=$(left)
  ((t > 0)) || { echo "== no time left in this step"; return 124; }
  echo "\$ $*"
  timeout -k 10 "$t" "$@"
  local rc=$?
  echo "== exit status $rc"
  ((rc == 124 || rc == 137)) && echo "== timed out (the step's limit)"
  return "$rc"
}

# The `accelerate launch` command for N processes in this mode, into the array L.
launcher() {  # launcher NPROC PRECISION
  local n=$1 prec=$2
  if [[ $DEVICE == gpu && $n == 1 ]]; then
    L=(accelerate launch --config_file accelerate_configs/single_gpu.yaml --mixed_precision "$prec")
  elif [[ $DEVICE == gpu ]]; then
    L=(accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes "$n"
       --mixed_precision "$prec" --main_process_port "$PORT")
  else
    L=(accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes "$n"
       --num_cpu_threads_per_process 1 --mixed_precision no --main_process_port "$PORT")
  fi
}

regex_quote() { printf '%s' "$1" | sed -E 's/[][\.*^$+?(){}|]/\\&/g'; }

# Processes whose command line holds PATH (a run's output dir, unique to it): the launcher and its workers.
# torchrun starts workers in sessions of their own, so a timeout does not reach them: this does.
kill_runs_of() { pkill -KILL -f "$(regex_quote "$1")" 2>/dev/null; return 0; }

keep() {  # keep RUN_DIR: copy a run's small outputs next to the log
  local f
  mkdir -p "$out/$STEP_ID"
  for f in results.json metrics.jsonl config.json probes.json probes.md; do
    [[ -f $1/$f ]] && cp "$1/$f" "$out/$STEP_ID/$(basename "$1")-$f"
  done
  return 0
}

run_step() {  # run_step ID LIMIT_S FUNCTION TITLE
  local id=$1 limit=$(($2 * ${STEP_LIMIT_SCALE:-1})) fn=$3 title=$4 rc status t0=$SECONDS
  local dir=$work/$id
  mkdir -p "$dir" "$out/steps"
  rm -f "$dir/detail"
  : >"$dir/detail"
  local end=$((SECONDS + limit))
  ((end > STEP_DEADLINE)) && end=$STEP_DEADLINE
  if ((end - SECONDS < 20)); then
    status=FAIL
    echo "not run: the time budget (BUDGET_S=$BUDGET_S, GPU_SH_MIN_S=$GPU_SH_MIN_S of it kept for step 7) was spent" \
      >"$dir/detail"
    : >"$out/logs/$id.log"
  else
    (STEP_ID=$id STEP_DIR=$dir STEP_END=$end; "$fn" "$dir") >"$out/logs/$id.log" 2>&1 </dev/null
    rc=$?
    kill_runs_of "$dir/"
    case $rc in 0) status=PASS ;; 99) status=SKIPPED ;; *) status=FAIL ;; esac
  fi
  # id, status, seconds, title, detail: one tab-separated line per step
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$status" "$((SECONDS - t0))" "$title" \
    "$(tr '\t\n' '  ' <"$dir/detail" | sed 's/; $//')" >"$out/steps/$id.tsv"
  [[ -f $dir/extra.json ]] && cp "$dir/extra.json" "$out/steps/$id.json"
  echo "[$(date +%T)] $id: $status ($((SECONDS - t0)) s)"
}

# ------------------------------------------------------------------------------------------------------ steps
# 1a-1d: a script, 2 processes, a precision; eval at start, after epoch 1 and at the end.
train_and_eval() {  # train_and_eval DIR SCRIPT PRECISION
  local dir=$1 script=$2 prec=$3 run=$1/run
  launcher 2 "$prec"
  run_cmd "${L[@]}" "train_$script.py" "${DATA[@]}" --model "$BN_MODEL" --batch-size "$BATCH" --epochs 2 \
    --eval-at-start --eval-every 1 --eval-batch-size "$EVAL_BATCH" --linear-probe-epochs "$PROBE_EPOCHS" \
    --log-every 4 --checkpoint-every 1000 --output-dir "$run" "${DIST[@]}" || die "the run $(failed $?)"
  keep "$run"
  "$PYTHON" - "$run" "$script" "$prec" "$dir/extra.json" "$dir/detail" <<'EOF' || exit 1
import json, math, sys
run, script, prec, extra, detail_file = sys.argv[1:]
r = json.load(open(f"{run}/results.json"))
lines = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
from tasks import TASKS  # run from the repository root
task = TASKS[script].headline_metric
number = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
problems, values = [], {}
for key in ("eval/knn_acc", "eval/linear_probe_acc", task):
    for name in (key + "_init", key):
        values[name] = r.get(name)
        if not number(values[name]):
            problems.append(f"results.json {name} = {values[name]}")
evals = sorted({l["step"] for l in lines if "eval/knn_acc" in l or "eval/knn_acc_init" in l} | {r.get("steps")})
if 0 not in evals:
    problems.append("no evaluation at start (step 0) in metrics.jsonl")
if not [s for s in evals if 0 < s < r.get("steps", 0)]:
    problems.append(f"no evaluation after epoch 1 (evaluations at steps {evals})")
if r.get("epochs") != 2 or r.get("world_size") != 2:
    problems.append(f"epochs {r.get('epochs')}, world size {r.get('world_size')} (expected 2, 2)")
losses = [l["train/loss"] for l in lines if "train/loss" in l]
if not losses or not all(map(number, losses)):
    problems.append(f"train/loss not finite: {losses}")
scaler = [l["train/amp_skipped_steps"] for l in lines if "train/amp_skipped_steps" in l]
if prec == "fp16" and not scaler:
    problems.append("fp16 but no train/amp_skipped_steps logged: no GradScaler, was fp16 applied?")
if prec != "fp16" and scaler:
    problems.append(f"{prec} but a GradScaler ran (train/amp_skipped_steps logged)")
f = lambda k: "%.3f" % values[k] if number(values.get(k)) else str(values.get(k))
detail = (f"{r.get('steps')} steps, evaluated at steps {evals}; knn {f('eval/knn_acc')} (init {f('eval/knn_acc_init')}), "
          f"linear {f('eval/linear_probe_acc')} (init {f('eval/linear_probe_acc_init')}), {task[5:]} {f(task)} "
          f"(init {f(task + '_init')})"
          + (f"; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "")
          + (f"; fp16 overflow steps {scaler[-1]}" if scaler else "")
          + f"; {r.get('images_per_s', 0):.0f} images/s, peak {r.get('peak_memory_mb', 0):.0f} MB")
json.dump({"steps": r.get("steps"), "eval_steps": evals, **values, "amp_skipped_steps": scaler[-1] if scaler else None,
           "images_per_s": r.get("images_per_s"), "peak_memory_mb": r.get("peak_memory_mb")}, open(extra, "w"))
detail = "FAILED: " + "; ".join(problems) + "; " + detail if problems else detail
open(detail_file, "a").write(detail)
print(detail)
sys.exit(1 if problems else 0)
EOF
}
step_rotation_bf16() { train_and_eval "$1" rotation "$BF16"; }
fp16_or_skip() {  # fp16_or_skip STEP: fp16 needs CUDA (a GradScaler); on the CPU this step would be STEP's run again
  [[ $DEVICE == gpu ]] || skip "fp16 needs a GPU (on the CPU it would be step $1's run again, without mixed precision)"
}
step_siamese_fp16() { fp16_or_skip 1d; train_and_eval "$1" siamese "$FP16"; }
step_rotation_fp16() { fp16_or_skip 1a; train_and_eval "$1" rotation "$FP16"; }
step_siamese_bf16() { train_and_eval "$1" siamese "$BF16"; }

# 2: SIGUSR1 to the training processes: checkpoint, exit code 3; the same command resumes and finishes.
step_sigusr1() {
  local dir=$1 run=$1/run rc n
  launcher 2 "$BF16"
  local cmd=("${L[@]}" train_rotation.py "${DATA[@]}" --model simple_cnn --batch-size "$BATCH" --skip-eval
             --max-steps "$USR1_STEPS" --log-every "$USR1_LOG" --checkpoint-every 100000 --output-dir "$run" "${DIST[@]}")
  echo "\$ ${cmd[*]}"
  # accelerate launch and torchrun do not forward USR1 and would die of it: they inherit "ignore" from here,
  # the training processes install their own handler.
  (trap '' USR1; exec timeout -k 10 "$(left)" "${cmd[@]}") &
  local pid=$!
  while [[ ! -s $run/metrics.jsonl ]] && kill -0 "$pid" 2>/dev/null && (($(left) > 0)); do sleep 0.05; done
  [[ -s $run/metrics.jsonl ]] || { wait "$pid"; die "no metrics.jsonl line: the run $(failed $?)"; }
  echo "== metrics.jsonl has a line: pkill -USR1 -f $run"
  pkill -USR1 -f "$(regex_quote "$run")"
  wait "$pid"
  rc=$?
  echo "== exit status $rc"
  local log=$out/logs/$STEP_ID.log
  n=$(grep -ao 'stopping on SIGUSR1 at step [0-9]*' "$log" | head -n 1 | grep -o '[0-9]*$')
  [[ -n $n ]] || die "no 'stopping on SIGUSR1 at step N' line (exit status $rc)"
  ((n < USR1_STEPS)) || die "stopped at step $n, the last one: the signal came too late to test a resume"
  # With 2 processes the workers exit 3 and accelerate launch reports them (torchrun's ChildFailedError) with 1.
  if ((rc == 3)); then
    say "stopped at step $n, exit status 3"
  elif ((rc != 0)) && grep -aqE 'exitcode *: 3' "$log"; then
    say "stopped at step $n, workers' exit code 3 (accelerate launch: $rc)"
  else
    die "stopped at step $n but exit status $rc and no worker exit code 3"
  fi
  [[ -d $run/checkpoints/$(printf 'step_%08d' "$n") ]] || die "no checkpoint step_$n after the stop"
  run_cmd "${cmd[@]}" || die "the resumed run $(failed $?)"
  grep -aq "resumed from .* at step $n " "$log" || die "the rerun did not say 'resumed from ... at step $n'"
  keep "$run"
  n=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$run/results.json") \
    || die "no results.json after the resume"
  ((n == USR1_STEPS)) || die "results.json says $n steps, expected $USR1_STEPS"
  say "resumed from that checkpoint, results.json: $n steps"
}

# 3: --deterministic: straight vs killed after the step-4 checkpoint and resumed; step-12 weights bitwise equal.
step_deterministic() {
  local dir=$1 whole=$1/whole cut=$1/cut
  export CUBLAS_WORKSPACE_CONFIG=:4096:8
  launcher 2 "$BF16"
  local opts=(train_rotation.py "${DATA[@]}" --model "$DET_MODEL" --batch-size "$BATCH" --max-steps 12
              --checkpoint-every 4 --log-every 4 --skip-eval --deterministic "${DIST[@]}")
  run_cmd "${L[@]}" "${opts[@]}" --output-dir "$whole" || die "the straight run $(failed $?)"
  echo "\$ ${L[*]} ${opts[*]} --output-dir $cut   (killed after its step-4 checkpoint)"
  timeout -k 10 "$(left)" "${L[@]}" "${opts[@]}" --output-dir "$cut" &
  local pid=$!
  while [[ ! -d $cut/checkpoints/step_00000004 ]] && kill -0 "$pid" 2>/dev/null && (($(left) > 0)); do
    sleep 0.01
  done
  kill_runs_of "$cut"
  wait "$pid"
  echo "== killed (exit status $?)"
  [[ -d $cut/checkpoints/step_00000004 ]] || die "the run to be killed never wrote its step-4 checkpoint"
  [[ ! -e $cut/results.json && ! -d $cut/checkpoints/step_00000012 ]] \
    || die "the run finished before it was killed: nothing was resumed"
  local before
  before=$(ls "$cut/checkpoints" | tr '\n' ' ')
  run_cmd "${L[@]}" "${opts[@]}" --output-dir "$cut" || die "the resumed run $(failed $?)"
  local at
  at=$(grep -aoE 'resumed from [^ ]* at step [0-9]+' "$out/logs/$STEP_ID.log" | tail -n 1 | grep -oE '[0-9]+$')
  [[ -n $at ]] || die "the rerun did not say 'resumed from'"
  say "killed with checkpoints [${before% }], resumed at step $at"
  "$PYTHON" - "$whole/checkpoints/step_00000012/model.safetensors" "$cut/checkpoints/step_00000012/model.safetensors" \
    "$dir/extra.json" "$at" <<'EOF' || die "weights differ or could not be compared (see the log)"
import json, sys
import torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
differ = sorted(n for n in a if n not in b or not torch.equal(a[n], b[n])) + sorted(set(b) - set(a))
json.dump({"compared_tensors": len(a), "equal": not differ, "differing": differ[:20], "resumed_at": int(sys.argv[4]),
           "file": "checkpoints/step_00000012/model.safetensors"}, open(sys.argv[3], "w"))
print(f"{len(a)} tensors compared, {len(differ)} differ: {differ[:5]}")
sys.exit(1 if differ or not a else 0)
EOF
  local compared
  compared=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['compared_tensors'])" "$dir/extra.json")
  say "step-12 model.safetensors: all $compared tensors bitwise equal (torch.equal)"
}

# 4: N steps without --compile, then the same output dir resumed with --compile to 2N.
step_compile() {
  local dir=$1 run=$1/run t0
  launcher 2 "$BF16"
  local opts=(train_rotation.py "${DATA[@]}" --model simple_cnn --batch-size "$BATCH" --skip-eval
              --checkpoint-every "$COMPILE_N" --log-every "$COMPILE_N" --output-dir "$run" "${DIST[@]}")
  run_cmd "${L[@]}" "${opts[@]}" --max-steps "$COMPILE_N" || die "the eager run $(failed $?)"
  t0=$SECONDS
  run_cmd "${L[@]}" "${opts[@]}" --max-steps $((2 * COMPILE_N)) --compile || die "the resume with --compile $(failed $?)"
  grep -aq "resumed from .* at step $COMPILE_N " "$out/logs/$STEP_ID.log" || die "the --compile run did not resume at step $COMPILE_N"
  keep "$run"
  "$PYTHON" - "$run" "$((2 * COMPILE_N))" <<'EOF' || die "results.json: wrong step count or non-finite loss"
import json, math, sys
r = json.load(open(f"{sys.argv[1]}/results.json"))
losses = [json.loads(l).get("train/loss") for l in open(f"{sys.argv[1]}/metrics.jsonl") if l.strip()]
losses = [x for x in losses if x is not None]
print(r["steps"], losses)
sys.exit(0 if r["steps"] == int(sys.argv[2]) and losses and all(map(math.isfinite, losses)) else 1)
EOF
  say "$COMPILE_N steps eager, resumed with --compile to $((2 * COMPILE_N)): it worked ($((SECONDS - t0)) s with compilation)"
}

# 5: evaluate.py, 2 processes, on an exported encoder (step 1a's; a 2-step one of its own if 1a left none).
step_evaluate() {
  local dir=$1 encoder=$work/1a_rotation_bf16/run/final
  launcher 2 "$BF16"
  if [[ ! -f $encoder/config.json ]]; then
    encoder=$dir/pretrain/final
    say "step 1a left no encoder: trained one (2 steps)"
    run_cmd "${L[@]}" train_rotation.py "${DATA[@]}" --model "$BN_MODEL" --batch-size "$BATCH" --max-steps 2 \
      --skip-eval --output-dir "$dir/pretrain" "${DIST[@]}" || die "training an encoder $(failed $?)"
  fi
  run_cmd "${L[@]}" evaluate.py --encoder "$encoder" --dataset synthetic --synthetic-size "$SIZE" \
    --classifier-epochs 2 --eval-batch-size "$EVAL_BATCH" --output "$dir/probes.json" "${DIST[@]}" \
    || die "evaluate.py $(failed $?)"
  keep "$dir"
  "$PYTHON" - "$dir/probes.json" "$dir/extra.json" "$dir/detail" <<'EOF' || exit 1
import json, math, sys
p = json.load(open(sys.argv[1]))
trained, untrained = p.get("trained", {}), p.get("untrained", {})
accs = [a for res in (trained, untrained) for block in res.values() for a in block.values()]
ok = trained and set(trained) == set(untrained) and accs and all(math.isfinite(a) for a in accs) \
     and p.get("world_size") == 2
best = max(((100 * a, b, c) for b, v in trained.items() for c, a in v.items()), default=(float("nan"), "?", "?"))
detail = (f"probes.json: {p.get('model')}, blocks {','.join(trained)}, world size {p.get('world_size')}, "
          f"{p.get('mixed_precision')}; best trained: {best[1]} {best[2]} {best[0]:.1f}%; {p.get('time_s', 0):.1f} s")
json.dump({"model": p.get("model"), "blocks": list(trained), "world_size": p.get("world_size"),
           "trained": trained, "untrained": untrained}, open(sys.argv[2], "w"))
open(sys.argv[3], "a").write(detail if ok else "FAILED: incomplete probes.json: " + detail)
print(detail)
sys.exit(0 if ok else 1)
EOF
}

# 6a-6d: synchronizing CUDA operations per steady step, 1 process, bf16; 6c-6d on the image folder, with the train
# split in host memory or streamed from its files (the placement the run's data line names is checked too).
host_syncs() {  # host_syncs DIR SCRIPT [PLACEMENT]
  local dir=$1 script=$2 placement=${3:-} run=$1/run data=("${DATA[@]}") log=$out/logs/$STEP_ID.log
  if [[ -n $placement ]]; then
    [[ -f $work/images.done ]] || die "no image folder: generating it failed (logs/image_folder.log)"
    data=(--dataset imagefolder --data-dir "$work/images" --cache-dir "$dir/cache" --data-placement "$placement"
          --report-to none)
  fi
  launcher 1 "$BF16"
  run_cmd "${L[@]}" "train_$script.py" "${data[@]}" --model simple_cnn --batch-size "$SYNC_BATCH" --skip-eval \
    --max-steps "$SYNC_STEPS" --log-every 10 --checkpoint-every 25 --output-dir "$run" --count-host-syncs \
    || die "the run $(failed $?)"
  keep "$run"
  local line first steps shown=""
  if [[ -n $placement ]]; then
    first=$(tr '\r' '\n' <"$log" | grep -a -m 1 '^data: ')
    [[ $first == *"; placement $placement (--data-placement $placement)"* ]] \
      || die "the run's data line says '${first:-nothing}': expected 'placement $placement'"
    shown="its data line says placement $placement (--data-placement $placement), "
  fi
  steps=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$run/results.json") \
    || die "no results.json (or no steps in it)"
  ((steps == SYNC_STEPS)) || die "results.json says $steps steps, expected $SYNC_STEPS"
  shown+="results.json: $steps steps"
  line=$(tr '\r' '\n' <"$log" | grep -a '^host syncs' | tail -n 1)
  [[ -n $line ]] || die "no log line starting 'host syncs'"
  # Without CUDA the scripts count nothing ("host syncs: not counted"): the run checked the rest only.
  [[ $DEVICE == gpu ]] || skip "GPU only (the CPU run of the same command passed: $shown; $line)"
  "$PYTHON" - "$run/results.json" "$dir/extra.json" "$dir/detail" "$line" "$shown" <<'EOF' || exit 1
import json, math, sys
r = json.load(open(sys.argv[1]))
mean, worst = r.get("host_syncs_per_step"), r.get("host_syncs_max_step")
json.dump({k: v for k, v in r.items() if k.startswith("host_syncs")} | {"log_line": sys.argv[4]},
          open(sys.argv[2], "w"))
if not isinstance(mean, (int, float)) or not isinstance(worst, (int, float)) or math.isnan(mean):
    problem = f"results.json: host_syncs_per_step {mean}, host_syncs_max_step {worst} (no steady steps?)"
elif mean > 0 or worst > 0:
    problem = "target 0 per steady step missed"
else:
    problem = None
detail = (f"{sys.argv[5]}; host_syncs_per_step {mean}, host_syncs_max_step {worst} over "
          f"{r.get('host_syncs_steady_steps')} steady steps ({r.get('host_syncs_other_steps_total')} in the other "
          f"steps; target 0)")
open(sys.argv[3], "a").write(("FAILED: " + problem + ": " if problem else "") + detail)
print(detail)
sys.exit(1 if problem else 0)
EOF
}
step_syncs_rotation() { host_syncs "$1" rotation; }
step_syncs_siamese() { host_syncs "$1" siamese; }
step_placement_host() { host_syncs "$1" rotation host; }
step_placement_stream() { host_syncs "$1" siamese stream; }

# The image folder of 6c-6d: JPEGs, seeded; each class a colour of its own under the noise.
make_image_folder() {  # make_image_folder DIR
  "$PYTHON" - "$1" "$FOLDER_TRAIN" "$FOLDER_TEST" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
root, counts = sys.argv[1], {"train": int(sys.argv[2]), "test": int(sys.argv[3])}
rng = np.random.default_rng(0)
for split, per_class in counts.items():
    for c in range(10):
        os.makedirs(f"{root}/{split}/class{c}", exist_ok=True)
        tint = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(tint + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(f"{root}/{split}/class{c}/{i}.jpg", quality=90)
print(f"{root}: {10 * counts['train']} train and {10 * counts['test']} test JPEGs, 10 classes, 32 px")
EOF
}

# 7: the existing throughput table, alone on the GPU: 2 s a measurement, and bench/gpu.sh given the step's time but
# a margin, so that it ends by itself (the compiled row only if enough is left) and this step still reports.
step_gpu_sh() {
  local dir=$1 note
  run_cmd env MEASURE_S=2 BUDGET_S=$(($(left) - 15)) PYTHON="$PYTHON" bash bench/gpu.sh "$dir" \
    || die "bench/gpu.sh $(failed $?)"
  mkdir -p "$out/$STEP_ID"
  cp "$dir"/throughput_gpu*.json "$dir"/throughput_gpu*.txt "$out/$STEP_ID/" 2>/dev/null
  note=$(grep -a -m 1 '^compiled row: ' "$out/logs/$STEP_ID.log")
  "$PYTHON" - "$dir" "$dir/extra.json" "$dir/detail" "$note" <<'EOF' || exit 1
import json, os, sys
rows = json.load(open(os.path.join(sys.argv[1], "throughput_gpu.json")))["rows"]
compiled = os.path.join(sys.argv[1], "throughput_gpu_compiled.json")
rows += [dict(r, model=r["model"] + "+compile") for r in json.load(open(compiled))["rows"]] if os.path.exists(compiled) else []
parts = [f"{r['script']} {r['model']}: {r['project']['samples_per_s']:.0f} samples/s, efficiency {r['efficiency']:.2f}, "
         f"{r['project']['samples_per_s'] / r['tutorial']['samples_per_s']:.1f}x tutorial" for r in rows]
parts += [sys.argv[4]] if sys.argv[4] else []  # why the compiled row is missing
json.dump({"rows": rows}, open(sys.argv[2], "w"))
open(sys.argv[3], "a").write("; ".join(parts))
print("; ".join(parts))
EOF
}

# --------------------------------------------------------------------------------------------------- the run
STEPS=(1a_rotation_bf16 1b_siamese_fp16 1c_rotation_fp16 1d_siamese_bf16 2_sigusr1_resume 3_deterministic_resume
       4_compile_resume 5_evaluate 6a_host_syncs_rotation 6b_host_syncs_siamese 6c_placement_host
       6d_placement_stream 7_gpu_sh)
lane_a() {
  PORT=$1
  run_step 1a_rotation_bf16 90 step_rotation_bf16 "rotation, $BF16, $BN_MODEL, eval at start + every epoch"
  run_step 1b_siamese_fp16 90 step_siamese_fp16 "siamese, $FP16, $BN_MODEL, eval at start + every epoch"
  run_step 1c_rotation_fp16 90 step_rotation_fp16 "rotation, $FP16, $BN_MODEL, eval at start + every epoch"
  run_step 1d_siamese_bf16 90 step_siamese_bf16 "siamese, $BF16, $BN_MODEL, eval at start + every epoch"
  run_step 5_evaluate 90 step_evaluate "evaluate.py, 2 processes"
  run_step 6d_placement_stream 60 step_placement_stream "host syncs per step, --data-placement stream, siamese, $BF16"
}
lane_b() {
  PORT=$1
  run_step 4_compile_resume 200 step_compile "resume with --compile toggled"
  run_step 6a_host_syncs_rotation 60 step_syncs_rotation "host syncs per step, rotation, 1 process, $BF16"
  run_step 6b_host_syncs_siamese 60 step_syncs_siamese "host syncs per step, siamese, 1 process, $BF16"
}
lane_c() {
  PORT=$1
  run_step 2_sigusr1_resume 120 step_sigusr1 "SIGUSR1: checkpoint, stop, resume"
  run_step 3_deterministic_resume 120 step_deterministic "--deterministic: kill + resume = straight run, bitwise"
  run_step 6c_placement_host 60 step_placement_host "host syncs per step, --data-placement host, rotation, $BF16"
}

rm -rf "$out/steps"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
echo "gpu_check: device $DEVICE${gpu:+ ($gpu)}, lanes $([[ $PARALLEL == 1 ]] && echo concurrent || echo sequential)," \
     "budget ${BUDGET_S} s; logs in $out/logs, runs in $work"
make_image_folder "$work/images" >"$out/logs/image_folder.log" 2>&1 && touch "$work/images.done"
STEP_DEADLINE=$((DEADLINE - GPU_SH_MIN_S))
if [[ $PARALLEL == 1 ]]; then
  lane_a 29610 &
  lane_b 29620 &
  lane_c 29630 &
  wait
else
  lane_a 29610
  lane_c 29610
  lane_b 29610
fi
STEP_DEADLINE=$DEADLINE
if [[ $DEVICE == gpu ]]; then
  run_step 7_gpu_sh 330 step_gpu_sh "bench/gpu.sh: throughput table"
else
  printf '7_gpu_sh\tSKIPPED\t0\tbench/gpu.sh: throughput table\tno GPU: bench/gpu.sh measures GPU throughput\n' \
    >"$out/steps/7_gpu_sh.tsv"
fi
TOTAL=$((SECONDS - START))

# ---------------------------------------------------------------------------------------------------- report
log_tail() {  # the errors a log holds (each once), then its last lines; progress bars left out
  local lines
  lines=$(tr '\r' '\n' <"$1" 2>/dev/null | grep -avE '^\s*$|[0-9]+/[0-9]+ \[[0-9:]+<')
  grep -aE '(^|: )(error: |[A-Za-z_.]*(Error|Exception): )' <<<"$lines" | grep -v ChildFailedError \
    | sed -E 's/^\[rank[0-9]+\]: //' | awk '!seen[$0]++' | head -n 6 | sed 's/^/  error> /'
  tail -n 25 <<<"$lines"
}
count() {  # steps with this status; a step without a result counts as FAIL
  local id n=0
  for id in "${STEPS[@]}"; do
    if [[ -f $out/steps/$id.tsv ]]; then
      [[ $(cut -f2 "$out/steps/$id.tsv") == "$1" ]] && n=$((n + 1))
    elif [[ $1 == FAIL ]]; then
      n=$((n + 1))
    fi
  done
  echo "$n"
}
{
  echo "GPU check of $(git rev-parse --short HEAD 2>/dev/null)$([[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && echo ' (dirty)')," \
       "$(date -u +%Y-%m-%dT%H:%M:%SZ), device: $DEVICE${gpu:+, $gpu}"
  echo "$VERSIONS"
  echo
  printf '%-26s %-7s %6s  %s\n' step status time detail
  for id in "${STEPS[@]}"; do
    if [[ -f $out/steps/$id.tsv ]]; then
      IFS=$'\t' read -r _ status secs title detail <"$out/steps/$id.tsv"
    else
      status=FAIL secs=0 title="" detail="not run"
    fi
    printf '%-26s %-7s %5ss  %s: %s\n' "$id" "$status" "$secs" "$title" "$detail"
  done
  echo
  echo "total: ${TOTAL} s ($(count PASS) PASS, $(count FAIL) FAIL, $(count SKIPPED) SKIPPED);" \
       "steps 1-6 ran $([[ $PARALLEL == 1 ]] && echo 'in 3 concurrent lanes (times overlap)' || echo 'one after the other')"
  for id in "${STEPS[@]}"; do
    if [[ -s $out/logs/$id.log ]] && grep -q $'\tFAIL\t' "$out/steps/$id.tsv" 2>/dev/null; then
      echo
      echo "--- $id FAILED; last lines of logs/$id.log:"
      log_tail "$out/logs/$id.log"
    fi
  done
} >"$out/gpu_check.txt"

"$PYTHON" - "$out" "$DEVICE" "$TOTAL" "$BUDGET_S" "$PARALLEL" "${gpu:-}" "$VERSIONS" "${STEPS[@]}" <<'EOF'
import json, os, subprocess, sys
out, device, total, budget, parallel, gpu, versions, *ids = sys.argv[1:]
steps = []
for i in ids:
    try:
        _, status, secs, title, detail = open(f"{out}/steps/{i}.tsv").read().rstrip("\n").split("\t")
    except (OSError, ValueError):
        status, secs, title, detail = "FAIL", 0, "", "not run"
    step = {"id": i, "title": title, "status": status, "seconds": int(secs), "detail": detail,
            "log": f"logs/{i}.log"}
    if os.path.exists(f"{out}/steps/{i}.json"):
        try:
            step["results"] = json.load(open(f"{out}/steps/{i}.json"))
        except ValueError:
            pass
    steps.append(step)
versions = dict(v.split(" ", 1) for v in versions.split(", "))  # "torch X, accelerate Y" from the pre-flight
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
counts = {s: sum(step["status"] == s for step in steps) for s in ("PASS", "FAIL", "SKIPPED")}
json.dump({"device": device, "gpu": gpu, "git_commit": commit, **versions, "total_s": int(total),
           "budget_s": int(budget), "concurrent_lanes": parallel == "1", **{k.lower(): v for k, v in counts.items()},
           "ok": counts["FAIL"] == 0, "steps": steps}, open(f"{out}/gpu_check.json", "w"), indent=2)
EOF

cat "$out/gpu_check.txt"
echo "(written: $out/gpu_check.txt, $out/gpu_check.json)"
(($(count FAIL) == 0))
