#!/usr/bin/env bash
# The image's ENTRYPOINT: runs its command (CMD, `make all` by default) in a working tree.
#
# Without a folder at /state (MNCLGLF_STATE_DIR) the tree is the image's own, as in
# `docker run --gpus all repro make all`: outputs stay in the container (docker cp them out).
#
# With a host folder mounted there (`make docker-run`, or the README's docker run line) the tree
# lives in that folder, so data/, runs/ (checkpoints), metrics/, results/, dvc.lock and the DVC
# cache outlive the container and a second run resumes where an interrupted one stopped:
#   - first run: the image's source (everything in its tree but .venv) is copied there;
#   - a run of an image with other source: the source files are updated (files the new source
#     drops are removed), outputs are left alone, and the folder's dvc.lock is kept, since it
#     records the folder's outputs (`dvc repro` then reruns what the new code changes);
#   - any other run: nothing is copied; what the folder holds is resumed;
#   - every run: .venv links to the image's venv (installed for the same lock, so `make` does
#     not reinstall) and the folder's src/ comes first on PYTHONPATH.
# The image's .dvc/config.local (core.no_scm: no .git here) comes along with the source.
set -euo pipefail

image=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${MNCLGLF_STATE_DIR:-/state}
[[ $# -gt 0 ]] || set -- make all

if [[ ! -d $state ]]; then
  cd "$image"
  exec "$@"
fi

# shellcheck source=scripts/image_tree.sh
source "$image/scripts/image_tree.sh"

if [[ ! -w $state ]]; then
  # Docker creates a missing host folder owned by root.
  echo "error: $state is not writable by uid $(id -u); create the host folder yourself before" \
       "docker run (mkdir -p repro-state, as make docker-run does) or chown it" >&2
  exit 1
fi

# One container per state folder: the lock is held (fd 9, inherited through exec) for the
# command's lifetime, so DVC's read/write lock entries left by a killed container are stale.
exec 9>> "$state/.docker-state.lock"
if flock -n -E 75 9; then
  rm -f "$state/.dvc/tmp/rwlock"
else
  rc=$?
  if [[ $rc == 75 ]]; then
    echo "error: another container is running on $state" >&2
    exit 1
  fi
  echo "warning: cannot lock $state; a stale .dvc/tmp/rwlock is left as it is" >&2
fi

# The source: the image's tree but its venv, build leftovers and .gitignore (the state folder
# gets its own, below).
manifest=$(cd "$image" && find . \( -name .venv -o -name __pycache__ -o -name '*.egg-info' -o -path ./.gitignore \) \
  -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
synced=$state/.image-source
if [[ ! -f $synced || $(< "$synced") != "$manifest" ]]; then
  first=1
  [[ -f $synced ]] && first=0
  paths() { sed 's/^[0-9a-f]*  //'; }
  if [[ $first == 0 ]]; then
    # Source files the image no longer has; outputs are in no manifest, so never removed here.
    LC_ALL=C comm -23 <(paths < "$synced" | LC_ALL=C sort) <(paths <<< "$manifest" | LC_ALL=C sort) \
      | while IFS= read -r rel; do rm -f "$state/$rel"; done
  fi
  n=0
  while IFS= read -r rel; do
    [[ $rel == ./dvc.lock && -e $state/dvc.lock ]] && continue
    mkdir -p "$(dirname "$state/$rel")"
    cp --preserve=mode,timestamps "$image/$rel" "$state/$rel"
    n=$((n + 1))
  done < <(paths <<< "$manifest")
  # Written last: an interrupted sync is redone on the next start.
  printf '%s\n' "$manifest" > "$synced.tmp" && mv "$synced.tmp" "$synced"
  if [[ $first == 1 ]]; then
    echo "state: copied the image's source ($n files) to $state" >&2
  else
    echo "state: updated the source in $state to the image's ($n files); outputs and dvc.lock kept" >&2
  fi
fi
# So that the host checkout's git ignores the whole folder (its own .gitignore does not).
[[ -e $state/.gitignore ]] || printf '*\n' > "$state/.gitignore"

require_installed "$state" "$image/.venv" "rebuild the image (make docker) for this lock" || exit 1
use_venv "$state" "$image/.venv"
cd "$state"
exec "$@"
