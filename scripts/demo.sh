#!/bin/bash
# make demo: live-update a running guest and print the pause and checks.
set -euo pipefail
exec python3 "$(dirname "$0")/demo.py"
