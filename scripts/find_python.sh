#!/usr/bin/env bash
# Prints the Python that `make setup` makes the project's environment with: $PYTHON3 if set, else
# the first of python3, python3.13, python3.12, python3.11 on PATH whose version the pinned
# requirements install on (the arguments: supported versions; scripts/requirements.txt pins torch
# 2.13.0 and numpy 2.4.6, which has no wheel for 3.10). Says clearly when there is none.
# Usage: scripts/find_python.sh 3.13 3.12 3.11
set -euo pipefail
supported=("$@")
version_of() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null; }
is_supported() { local v; for v in "${supported[@]}"; do [ "$v" = "$1" ] && return 0; done; return 1; }
if [ -n "${PYTHON3:-}" ]; then
    version=$(version_of "$PYTHON3") || { echo "PYTHON3=$PYTHON3 does not run" >&2; exit 1; }
    is_supported "$version" && { echo "$PYTHON3"; exit 0; }
    echo "PYTHON3=$PYTHON3 is Python $version; the pinned requirements (scripts/requirements.txt: torch 2.13.0, numpy 2.4.6) install on Python ${supported[*]} only" >&2
    exit 1
fi
for candidate in python3 "${supported[@]/#/python}"; do
    command -v "$candidate" >/dev/null || continue
    version=$(version_of "$candidate") || continue
    is_supported "$version" && { echo "$candidate"; exit 0; }
done
echo "no Python ${supported[*]} found (python3 is $(version_of python3 || echo missing)): the pinned" \
    "requirements (scripts/requirements.txt: torch 2.13.0, numpy 2.4.6) install on those only. Install one (Debian/Ubuntu: apt install python3.X-venv; or pyenv) and run" \
    "make setup, or name it: make setup PYTHON3=/path/to/python3.X" >&2
exit 1
