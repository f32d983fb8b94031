"""Where the server is and which credentials to present, resolved as the ``runta`` CLI does it,
so a script works in the same place the CLI does: explicit arguments, then ``RUNTA_API_URL`` /
``RUNTA_API_KEY`` / ``RUNTA_OPERATOR_TOKEN``, then the files ``runta serve`` writes into its data
directory (``RUNTA_DATA_DIR``, default ``./runta-data``) and ``http://127.0.0.1:8080``.

Credential files are read when a call first needs them, not at construction: a client made
before the server has written its data directory still works once it has.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Mapping, Optional

from .errors import AuthenticationError

DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "./runta-data"
API_KEY_FILE = "api-key"
OPERATOR_TOKEN_FILE = "operator-token"


class Credential:
    """A bearer credential from an argument, the environment or a data-directory file.

    Its ``repr`` never shows the value, and neither does any error about it: a credential that
    could not go into a header (whitespace or control characters inside, non-ASCII) is refused
    here, before an HTTP library could quote it in its own error.
    """

    def __init__(
        self, given: Optional[str], env_name: str, path: Path, flag: str, environ: Mapping[str, str]
    ) -> None:
        self._flag = flag
        self._env_name = env_name
        self._path = path
        self._lock = threading.Lock()
        self._value: Optional[str] = None
        self._source = ""
        if given:
            self._value, self._source = given, f"the {flag} argument"
        elif environ.get(env_name):
            self._value, self._source = environ[env_name], env_name

    def get(self) -> str:
        """The credential; raises :class:`AuthenticationError` (before any request) when there
        is none or it cannot be sent."""
        with self._lock:
            if self._value is None:
                try:
                    self._value = self._path.read_text(encoding="utf-8")
                except OSError:
                    self._value = ""
                self._source = str(self._path)
            value = self._value.strip()
            if not value:
                raise AuthenticationError(
                    f"no credential: pass {self._flag}=..., set {self._env_name}, or run where "
                    f"`runta serve` keeps its data directory ({self._path} not found)",
                    code="no_credential",
                )
            if not all("!" <= ch <= "~" for ch in value):
                raise AuthenticationError(
                    f"the credential from {self._source} holds whitespace, control or non-ASCII "
                    "characters; it is not a runta key or token",
                    code="invalid_credential",
                )
            return value

    def __repr__(self) -> str:
        return f"<Credential from {self._env_name} or {self._path}>"


class Settings:
    """The resolved API URL and the two credentials (an API key for tenant calls, the operator
    token for tenant management)."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        operator_token: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        env = os.environ if environ is None else environ
        url = api_url or env.get("RUNTA_API_URL") or DEFAULT_API_URL
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"api_url {url!r} must start with http:// or https://")
        self.api_url = url.rstrip("/")
        data_dir = Path(env.get("RUNTA_DATA_DIR") or DEFAULT_DATA_DIR)
        self.api_key = Credential(api_key, "RUNTA_API_KEY", data_dir / API_KEY_FILE, "api_key", env)
        self.operator_token = Credential(
            operator_token, "RUNTA_OPERATOR_TOKEN", data_dir / OPERATOR_TOKEN_FILE, "operator_token", env
        )

    def __repr__(self) -> str:
        return f"Settings(api_url={self.api_url!r})"
