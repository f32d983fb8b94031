# The stock HTTPS clients the end-to-end tests run through the egress proxy, pinned:
# tests/clients/requirements.txt (requests, httpx, openai) into the project's virtualenv (.venv)
# and tests/clients/package-lock.json (undici) into tests/clients/node_modules.
# Source it, then: install_clients.

install_clients() {
  local venv=.venv dir=tests/clients failed=
  if ! { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } \
    || ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"; then
    failed="the Python clients ($dir/requirements.txt into $venv)"
  fi
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    if command -v npm >/dev/null 2>&1 \
      && npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2; then
      # npm ci may keep the directory's old time stamp: mark it as newer than the lock file.
      touch "$dir/node_modules"
    else
      failed="${failed:+$failed and }the Node client (npm ci in $dir)"
    fi
  fi
  if [ -n "$failed" ]; then
    if [ "${CI:-}" = true ]; then
      echo "error: could not install $failed; CI needs the test clients" >&2
      return 1
    fi
    echo "warning: could not install $failed:" \
      "the end-to-end tests that run the test clients will fail" >&2
    return 0
  fi
  echo "HTTPS test clients ($dir) in $venv and $dir/node_modules" >&2
}
