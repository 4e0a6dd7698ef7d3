#!/usr/bin/env bash
# Run `make smoke` in a copy of the repository as the Docker image holds it: the working tree's
# files (tracked, plus untracked ones git does not ignore) minus what .dockerignore excludes,
# and no .git. DVC runs without git there the way it does in the image: core.no_scm in the
# untracked .dvc/config.local (no `git init`: `dvc repro` works with core.no_scm = true).
#
#   scripts/smoke_in_image_copy.sh                 copy to a temp dir, make smoke there, delete it
#   scripts/smoke_in_image_copy.sh --keep          ... and keep the copy (its path is printed)
#   scripts/smoke_in_image_copy.sh --copy-only DIR only make the copy in DIR (must not exist)
#
# The copy reuses this checkout's virtual environment (VENV, default .venv) without changing
# it: the copy's .venv is a symlink to it, and PYTHONPATH points at the copy's src/, so the
# copy's code runs, not the checkout's editable install. The venv must be installed for the current lock
# (`make install` here first); the script refuses otherwise rather than reinstall into it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$repo/.venv}
venv=$(cd "$venv" 2>/dev/null && pwd) || { echo "error: no virtual environment at ${VENV:-$repo/.venv}" >&2; exit 1; }
python=$venv/bin/python
# shellcheck source=scripts/image_tree.sh
source "$repo/scripts/image_tree.sh"

mode=smoke keep=0 dest=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --copy-only) mode=copy; dest=${2:?--copy-only needs a directory}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [[ $mode == smoke ]]; then
  require_installed "$repo" "$venv" "run 'make install' in $repo first" || exit 1
fi

if [[ -z $dest ]]; then
  dest=$(mktemp -d "${TMPDIR:-/tmp}/mnclglf-image-copy.XXXXXX")
  [[ $keep == 1 ]] || trap 'rm -rf "$dest"' EXIT
elif [[ -e $dest ]]; then
  echo "error: $dest exists" >&2; exit 1
fi

"$python" - "$repo" "$dest" <<'PY'
"""Copy the Docker build context: the working tree's files minus .dockerignore (moby's rules)."""
import os, re, shutil, subprocess, sys
from pathlib import Path

repo, dest = Path(sys.argv[1]), Path(sys.argv[2])

def compile_pattern(p):
    out, i = "", 0
    while i < len(p):
        c = p[i]
        if c == "*":
            if p[i:i + 2] == "**":
                i += 2
                if p[i:i + 1] == "/":
                    out += "(?:.*/)?"; i += 1
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = p.find("]", i)
            if j < 0:
                out += re.escape(c)
            else:
                out += "[" + p[i + 1:j].replace("!", "^", 1) + "]"; i = j
        elif c == "\\" and i + 1 < len(p):
            i += 1; out += re.escape(p[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")

rules = []
ignore = repo / ".dockerignore"
for line in (ignore.read_text().splitlines() if ignore.is_file() else []):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    neg = line.startswith("!")
    pat = os.path.normpath(line[1:].strip() if neg else line).lstrip("/")
    if pat in ("", "."):
        continue
    rules.append((compile_pattern(pat), neg))

def excluded(rel):
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i + 1]) for i in range(len(parts))]
    hit = False
    for rx, neg in rules:
        if any(rx.match(x) for x in prefixes):
            hit = not neg
    return hit

try:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
except (OSError, subprocess.CalledProcessError):  # no git: every file of the tree
    files = [p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() or p.is_symlink()]
dest.mkdir(parents=True, exist_ok=True)
if any(dest.iterdir()):
    sys.exit(f"error: {dest} is not empty")
n = 0
for rel in sorted(set(files)):
    src = repo / rel
    if rel == ".git" or rel.startswith(".git/") or excluded(rel) or not (src.is_file() or src.is_symlink()):
        continue
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest / rel, follow_symlinks=False)
    n += 1
# What the Dockerfile does after COPY: DVC without git, no update check.
if (dest / ".dvc").is_dir():
    (dest / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n    check_update = false\n")
print(f"copied {n} files to {dest}", file=sys.stderr)
PY

if [[ $mode == copy ]]; then
  echo "$dest"
  exit 0
fi


use_venv "$dest" "$venv"
cd "$dest"
echo "make smoke in $dest (no .git; DVC core.no_scm)" >&2
make smoke
# An if, not `[[ ]] && echo`: as the last command that list would be the script's exit status (1).
if [[ $keep == 1 ]]; then echo "kept: $dest"; fi
