#!/usr/bin/env bash
# One GPU, about 10 minutes: the full-width ResNet-18 ME-Net of Table 9's top row (Soft-Impute,
# p 0.8 -> 1, ME inside the train step) trained on a folder of CIFAR-10 photographs, then the
# default CIFAR-10 evaluation (the paper's and AutoAttack's budgets) on 500 test images.
# Prints the clean accuracy, the headline and the training rate in images/s.
#
#   launch/gpu_check.sh --subset CIFAR_FOLDER PHOTOS   # once: 800 train / 100 test photos per
#                                                      # class from a full image folder (~36 MB)
#   launch/gpu_check.sh PHOTOS [WORKDIR [--config.KEY=VALUE ...]]
#                                      # train and evaluate (configs/cifar10.py:gpu_check)
#
# CIFAR_FOLDER is ROOT/{train,test}/<class>/*.jpg|png (the image_folder dataset). The virtualenv:
#   python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[cuda13]'   (or .[cuda12])
set -euo pipefail

if [ "${1:-}" = "--subset" ]; then
  SRC=${2:?usage: launch/gpu_check.sh --subset CIFAR_FOLDER PHOTOS}
  DST=${3:?usage: launch/gpu_check.sh --subset CIFAR_FOLDER PHOTOS}
  for split_count in train:800 test:100; do
    split=${split_count%%:*}
    count=${split_count##*:}
    for class_dir in "$SRC/$split"/*/; do
      class=$(basename "$class_dir")
      mkdir -p "$DST/$split/$class"
      find "$class_dir" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
        | sort | awk -v n="$count" 'NR <= n' | xargs -r cp -t "$DST/$split/$class"
    done
  done
  du -sh "$DST"
  exit 0
fi

PHOTOS=${1:?usage: launch/gpu_check.sh PHOTOS [WORKDIR]}
WORKDIR=${2:-/tmp/menet_gpu_check}
shift $(( $# < 2 ? $# : 2 ))
PYTHON=${PYTHON:-python}
start=$(date +%s)
"$PYTHON" -m menet_jax.main --config=configs/cifar10.py:gpu_check --config.dataset=image_folder \
  --config.data_dir="$PHOTOS" --workdir="$WORKDIR" "$@"
"$PYTHON" - "$WORKDIR" "$start" <<'PY'
import json, sys, time
workdir, start = sys.argv[1], float(sys.argv[2])
summary = json.load(open(f"{workdir}/summary.json"))
results = json.load(open(f"{workdir}/results.json"))
c = summary["config"]
images = summary["steps"] * c["batch_size"]
h = results["headline"]
# The rate of the logged windows after the first (which holds the compilation).
rates = [r["images_per_s"] for r in map(json.loads, open(f"{workdir}/metrics.jsonl"))
         if "images_per_s" in r][1:]
rate = sum(rates) / len(rates) if rates else images / summary["train_time_s"]
print(f"device {summary['devices']}")
print(f"clean accuracy {summary['clean_accuracy']:.4f} on {summary['num_eval_examples']} test photos")
print(f"headline {h['accuracy']:.4f} (95% CI {h['interval'][0]:.4f}-{h['interval'][1]:.4f}) on {h['n']}")
print(f"training {rate:.0f} images/s after compiling ({images} images in "
      f"{summary['train_time_s']:.0f} s, online {c['me']['method']}, ResNet-18 width "
      f"{c['model_width']}, batch {c['batch_size']})")
print(f"wall time {time.time() - start:.0f} s")
PY
