#!/usr/bin/env bash
# Prints the README's shell blocks that are marked, on the line before the fence, with
# `<!-- run: WHERE -->`, so that CI and the tests run exactly what a user copies:
#   ci          .ci/run runs it as its own steps (make test, make demo)
#   after-demo  .ci/run runs it after the demo: hack/readme-blocks.sh after-demo | bash -e
#   standalone  tests/docs.rs runs it with a cluster directory of its own
#   cluster     tests/docs.rs runs it against the test cluster
#   real-cloud  needs a real AWS account; only the paths it names are checked
#
#   hack/readme-blocks.sh WHERE     the blocks marked WHERE, one after the other
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 ci|after-demo|standalone|cluster|real-cloud" >&2; exit 2; }
awk -v want="$1" '
  /^```/ && inside { inside = 0; next }
  inside { print; next }
  /^```sh$/ { inside = (marker == want); next }
  { marker = ""; if (match($0, /^<!-- run: [a-z-]+ -->$/)) { marker = substr($0, 11, length($0) - 14) } }
' "$repo/README.md"
