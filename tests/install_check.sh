#!/usr/bin/env bash
# The install paths an operator uses, as CI checks them (issue 17): build a wheel through
# pyproject.toml's PEP 517 backend, then install it
#   1. into a fresh virtual environment, and
#   2. with `pip install --user`,
# and run `legampi demo` from each, outside the source tree, so nothing comes from the checkout.
#
# The --user install goes into a temporary PYTHONUSERBASE (nothing under ~ is touched) from a
# `--system-site-packages` venv: the one Python in which pip accepts --user whatever the machine's
# Python is (Debian's refuses it, PEP 668). sys.prefix is then the venv, not where --user puts files,
# which is exactly the case that broke when the SQL schema shipped as data_files under sys.prefix.
#
#   bash tests/install_check.sh            # PYTHON=python3.12 to check another interpreter
# Environment: PYTHON (default python3), INSTALL_CHECK_FILES (demo files, default 6),
# INSTALL_CHECK_KEEP=1 keeps the work folder for a look afterwards.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
files="${INSTALL_CHECK_FILES:-6}"
work="$(mktemp -d "${TMPDIR:-/tmp}/legampi-install-check.XXXXXX")"
if [ -n "${INSTALL_CHECK_KEEP:-}" ]; then
  echo "work folder kept: $work"
else
  trap 'rm -rf "$work"' EXIT
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
failed=()

# quiet LOG CMD...: run CMD with its output in LOG, shown only if it fails (pip is chatty).
quiet() {
  local log="$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "FAILED: $*"
    sed 's/^/    /' "$log"
    exit 1
  fi
}

echo "== wheel, built by the PEP 517 backend from a copy of the source (the checkout stays clean)"
mkdir "$work/src"
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
  --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
"$python" -m venv "$work/build-venv"
quiet "$work/wheel.log" "$work/build-venv/bin/pip" wheel --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/legampi-*.whl)"
echo "built $(basename "$wheel")"
"$work/build-venv/bin/python" - "$wheel" <<'EOF'
import sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    text = z.read(meta).decode()
need = ["Requires-Python: >=3.10", "Classifier: Programming Language :: Python :: 3 :: Only"]
missing = [line for line in need if line not in text.splitlines()]
if missing:
    sys.exit(f"wheel METADATA lacks: {missing}")
print("wheel metadata: Requires-Python and classifiers present")
EOF

# demo LABEL PYTHON LEGAMPI_SCRIPT EXPECTED_PREFIX: run the demo with that install, from $work.
demo() {
  local label="$1" py="$2" script="$3" prefix="$4" out="$work/demo-$1.log"
  local where
  where="$(cd "$work" && "$py" -c 'import legampi; print(legampi.__file__)')"
  case "$where" in
    "$prefix"/*) echo "$label: legampi imported from $where" ;;
    *) echo "$label: FAILED: legampi imported from $where, not from $prefix"; failed+=("$label"); return ;;
  esac
  if (cd "$work" && "$script" demo "$work/demo-$label" --files "$files") >"$out" 2>&1 &&
    grep -q "$files file(s), $files available, 0 failed" "$out"; then
    echo "$label: legampi demo OK ($files files archived)"
  else
    echo "$label: FAILED: legampi demo; its output:"
    sed 's/^/    /' "$out"
    failed+=("$label")
  fi
}

echo "== 1. fresh virtual environment: pip install WHEEL"
"$python" -m venv "$work/venv"
quiet "$work/pip-venv.log" "$work/venv/bin/pip" install "$wheel"
demo venv "$work/venv/bin/python" "$work/venv/bin/legampi" "$work/venv"

echo "== 2. pip install --user WHEEL (PYTHONUSERBASE=$work/userbase)"
"$python" -m venv --system-site-packages "$work/user-venv"
export PYTHONUSERBASE="$work/userbase"
quiet "$work/pip-user.log" "$work/user-venv/bin/python" -m pip install --user --no-warn-script-location "$wheel"
demo user "$work/user-venv/bin/python" "$PYTHONUSERBASE/bin/legampi" "$PYTHONUSERBASE"
unset PYTHONUSERBASE

if [ ${#failed[@]} -gt 0 ]; then
  echo "install check FAILED: ${failed[*]}"
  exit 1
fi
echo "install check passed: wheel, venv, --user"
