#!/usr/bin/env bash
# The main job on the project's own sample corpus, on CPU: set up, binarize, train the one-layer
# masked Transformer (configs/sample.yaml), decode the test set with beam 5 and print its BLEU.
# Usage: scripts/demo.sh [WORK_DIR]   (default: work/demo; re-running starts training afresh)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$root/work/demo}"
bash "$root/scripts/setup.sh"
bin="$root/.venv/bin"
export PYTHONWARNINGS=ignore
start=$SECONDS

mkdir -p "$work"
if [[ ! -f "$work/data-bin/dict.en.txt" ]]; then
  rm -rf "$work/data-bin.tmp"
  "$bin/fairseq-preprocess" --source-lang de --target-lang en \
    --trainpref "$root/data/sample/train" --validpref "$root/data/sample/valid" \
    --testpref "$root/data/sample/test" --destdir "$work/data-bin.tmp" --workers 2 > "$work/preprocess.log"
  mv "$work/data-bin.tmp" "$work/data-bin"
fi

rm -rf "$work/checkpoints"
"$bin/fairseq-hydra-train" --config-dir "$root/configs" --config-name sample \
  task.data="$work/data-bin" common.user_dir="$root/one_layer_lottery" \
  checkpoint.save_dir="$work/checkpoints" hydra.run.dir="$work/hydra" > "$work/train.log" 2>&1 \
  || { tail -n 30 "$work/train.log" >&2; exit 1; }

"$bin/fairseq-generate" "$work/data-bin" --user-dir "$root/one_layer_lottery" \
  --path "$work/checkpoints/checkpoint_last.pt" --beam 5 --batch-size 128 \
  --required-batch-size-multiple 1 > "$work/generate.log" 2>&1 \
  || { tail -n 30 "$work/generate.log" >&2; exit 1; }

grep -E "^Generate test" "$work/generate.log"
echo "demo: $(grep -c '^H-' "$work/generate.log") test sentences decoded; logs in $work; took $((SECONDS - start)) s"
