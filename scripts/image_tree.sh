# Sourced, not run: how a copy of the repository uses a virtual environment installed elsewhere
# without `make` reinstalling into it. Shared by smoke_in_image_copy.sh (a copy of this checkout
# on this venv) and docker-entrypoint.sh (the state folder's tree on the image's venv).

# The Makefile's install stamp for TREE's lock in VENV (the same digest as its STAMP).
install_stamp() {  # TREE VENV
  printf '%s/.installed-%s\n' "$2" "$(cd "$1" && cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
}

# Refuse, rather than let `make` reinstall into VENV (and point its editable install at TREE).
require_installed() {  # TREE VENV HINT
  local stamp
  stamp=$(install_stamp "$1" "$2")
  if [[ ! -e $stamp ]]; then
    echo "error: $2 is not installed for $1/requirements.lock (no $stamp)${3:+; $3}" >&2
    return 1
  fi
}

# VENV at TREE/.venv, the Makefile's own VENV path, so BIN, PATH and the stamp resolve as in a
# checkout (an absolute VENV= would break the Makefile's $(CURDIR)/$(BIN)); TREE/src first on
# PYTHONPATH, so TREE's code runs, not the one VENV's editable install points at. Removing TREE
# removes the link, never the venv.
use_venv() {  # TREE VENV
  if [[ -e $1/.venv && ! -L $1/.venv ]]; then
    echo "error: $1/.venv exists and is not a link; remove it to use $2" >&2
    return 1
  fi
  ln -sfn "$2" "$1/.venv"
  export PYTHONPATH="$1/src${PYTHONPATH:+:$PYTHONPATH}"
}
