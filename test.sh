#!/usr/bin/env bash
# README's second command: install everything the tests need, then run them all (extra arguments go to pytest).
#   ./test.sh                 # as root: also apt-get installs the Debian packages below
#   ./test.sh -k browser      # a subset
set -euo pipefail
cd "$(dirname "$0")"

# chromium: the browser tests' real browser (driven by Playwright; never `playwright install`).
# tuxpaint-stamps-default: ~800 real labelled photos for the retraining tests.
# wrk: the benchmark's load generator (bench/wrk.py), light enough that the server is what it measures.
# nginx: the reverse proxy the sub-path test puts in front (tests/test_proxy.py).
# docker.io, mmdebstrap: the image built and run for real, on a Debian base made here (tests/test_docker.py).
DEBIAN_PACKAGES=(chromium tuxpaint-stamps-default wrk nginx docker.io mmdebstrap)
# What the Docker test makes once and keeps between runs: the Debian base image's tarball, the wheelhouse.
export CLASSIFIER_TEST_CACHE="${CLASSIFIER_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/classifier-tests}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${DEBIAN_PACKAGES[@]}"
  export CLASSIFIER_SYSTEM_PACKAGES=required  # installed above: a test that finds one missing fails, never skips
else
  missing=()
  for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "note: not root, so the Debian packages ${missing[*]} were not installed; the tests that need them are" \
         "skipped. To run them: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

# The tests' lock: every package of serving, Ray Serve and the tests, pinned (tools/lock.sh makes it from pyproject.toml).
# Installed by uv (the lock's own pin of it): on an empty cache it installed the whole lock in 10 s where pip took
# 78 s, the same packages. pip installs it instead wherever uv cannot (no wheel for the platform, no network to
# its index): it reads pip's own configuration, which uv does not.
python="$(python3 -c 'import sys; print(sys.executable)')"  # this environment's (a venv's, if one is active)
lock_install() {
  { python3 -m pip install --disable-pip-version-check -q "$(grep '^uv==' requirements-dev.txt)" &&
    python3 -m uv pip install --python "$python" -q "$@"; } ||
    python3 -m pip install --disable-pip-version-check -q "$@"
}
lock_install -r requirements-dev.txt
lock_install --no-deps -r requirements-nodeps.txt
# Two workers (pytest-xdist; -n 0 for one process): many tests wait on a server, a browser or the clock, so two
# overlap well even on two cores. Each module with a module-scoped fixture runs on one worker (loadgroup).
CLASSIFIER_TESTS_ALONE=exclude python3 -m pytest -n 2 --dist loadgroup -ra --durations=25 "$@"  # the 25 slowest
# Then the Ray cluster test alone (tests/conftest.py says why); exit status 5: a subset that selected none of it.
# Without arguments only its file is collected (collecting them all imports TensorFlow and Gradio: ~12 s).
CLASSIFIER_TESTS_ALONE=only python3 -m pytest -ra --durations=5 "${@:-tests/test_ray_cluster.py}" || [ $? -eq 5 ]
