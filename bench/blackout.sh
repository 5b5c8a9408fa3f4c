#!/bin/bash
# make bench: blackout of cprsave/cprload next to migrate-to-file.
set -euo pipefail
exec python3 "$(dirname "$0")/blackout.py"
