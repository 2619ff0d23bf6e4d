#!/bin/bash
#SBATCH --job-name=hello
#SBATCH --cpus-per-task=1
#SBATCH --time=1:00
echo "Hello from job $SCNS_JOB_ID on $SCNS_WORKER_ID with $SCNS_CPUS CPU(s)"
echo "Slurm-compatible: SLURM_JOB_ID=$SLURM_JOB_ID SLURM_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK"
