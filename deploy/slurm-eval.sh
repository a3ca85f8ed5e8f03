#!/usr/bin/env bash
# A sharded qbench evaluation as a Slurm array job: each task answers its
# shard of the questions on one GPU into its own directory; a second job,
# run after the array (--dependency=afterok), merges them.
#
#   sbatch deploy/slurm-eval.sh
#   sbatch --dependency=afterok:<array job id> --wrap \
#     "qbench merge --out $RUN/merged $RUN/shard-*"
#
# qbench takes its shard from SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN and
# SLURM_ARRAY_TASK_COUNT (--shard auto). Edit the paths below.
#SBATCH --job-name=qbench-eval
#SBATCH --array=0-7
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=02:00:00
#SBATCH --output=qbench-eval-%A_%a.log
set -euo pipefail
MODEL=${MODEL:-/models/Qwen2.5-3B-Instruct-bnb-4bit}
ADAPTERS=${ADAPTERS:-/adapters/my-qlora/checkpoint-1000}
QUESTIONS=${QUESTIONS:-/data/questions.jsonl}
RUN=${RUN:-$PWD/qbench-run-$SLURM_ARRAY_JOB_ID}
args=()
for a in $ADAPTERS; do args+=(--adapter "$a"); done
qbench eval --model "$MODEL" "${args[@]}" --questions "$QUESTIONS" \
  --shard auto --out "$RUN/shard-$SLURM_ARRAY_TASK_ID" --quiet
