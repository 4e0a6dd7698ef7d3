#!/usr/bin/env bash
# The pipeline on a Slurm cluster: one data-preparation job, one job array of chains (one GPU
# each, --gres=gpu:1) that starts after it (afterok), one tabulate job after the whole array.
# Run from a work tree on a file system every node mounts (the DVC cache .dvc/cache inside it;
# on NFS first `dvc config core.hardlink_lock true`). Only the chains that are not up to date
# are submitted, so after a failure the same command finishes what is missing.
#   scripts/slurm/submit.sh                  every stage (as `make all`)
#   scripts/slurm/submit.sh tabulate-smoke   a target and what it needs
# Environment: SBATCH_ARGS (options for every job, e.g. "--partition=gpu --time=12:00:00"),
# CHAIN_ARGS (for the array's jobs only, e.g. "--cpus-per-task=8 --mem=64G"), GRES (gpu:1),
# MAX_PARALLEL (at most this many chains at once), MNCLGLF (default .venv/bin/mnclglf),
# WAIT=1 (wait for the tabulate job; exit 0 only if it COMPLETED).
set -euo pipefail
cd "$(dirname "$0")/../.."
MNCLGLF=${MNCLGLF:-$PWD/.venv/bin/mnclglf}
read -r -a mnclglf <<<"$MNCLGLF"
GRES=${GRES:-gpu:1}
read -r -a common <<<"${SBATCH_ARGS:-}"
read -r -a chain_args <<<"${CHAIN_ARGS:-}"
logs=.dvc/tmp/lanes/slurm
mkdir -p "$logs"
targets=()
for t in "$@"; do targets+=(--target "$t"); done
plan=$logs/plan.json  # the array's jobs read the chains from this file

todo=$("${mnclglf[@]}" lanes "${targets[@]}" --step plan --plan "$plan")
prep=$(sbatch --parsable --job-name=mnclglf-prep --output="$logs/prep-%j.out" "${common[@]}" \
    --wrap "$MNCLGLF lanes ${targets[*]} --step shared --plan $plan.shared")
after=$prep
if [[ -n $todo ]]; then
    chains=$(sbatch --parsable --job-name=mnclglf-chain \
        --array="$todo${MAX_PARALLEL:+%$MAX_PARALLEL}" \
        --gres="$GRES" --dependency="afterok:$prep" --kill-on-invalid-dep=yes \
        --output="$logs/chain-%A_%a.out" "${common[@]}" "${chain_args[@]}" \
        --wrap "$MNCLGLF lanes --step chain --plan $plan --index \$SLURM_ARRAY_TASK_ID")
    after=$chains
fi
final=$(sbatch --parsable --job-name=mnclglf-tabulate --dependency="afterok:$after" \
    --kill-on-invalid-dep=yes --output="$logs/tabulate-%j.out" "${common[@]}" \
    --wrap "$MNCLGLF lanes --step final --plan $plan")
echo "submitted: prep $prep, chains ${chains:-none} (array ${todo:-empty}), tabulate $final"
echo "logs in $logs/"

[[ ${WAIT:-0} == 1 ]] || exit 0
# `sbatch --wait` would return 0 for a job cancelled by a failed dependency: poll its JobState.
while true; do
    state=$(scontrol -o show job "$final" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case $state in
    COMPLETED) exit 0 ;;
    PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | "") sleep 2 ;;
    *)
        echo "tabulate job $final: $state; \`mnclglf status\` and $logs/ say which chain failed" >&2
        exit 1
        ;;
    esac
done
