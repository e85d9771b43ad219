"""Resolving the API key, base URL and data plane: arguments, then ``use_sandbox()``, then
:func:`configure`, then environment variables.

What is typed in the session wins over what the environment holds: a notebook that calls
``configure(api_key=...)`` uses that key even with a stale ``NARRATIVE_API_KEY`` exported.
``use_sandbox()`` (see :mod:`narrative_pandas.sandbox`) installs a process-wide target that wins
over both, so a notebook that says "use the sandbox" never sends a real key anywhere;
``configure()`` removes it again. :attr:`Settings.key_source` says where the key came from, so
an authentication error can name it (never the key).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiKey",
    "Settings",
    "configure",
    "resolve_settings",
]

DEFAULT_BASE_URL = "https://api.narrative.io"
ENV_API_KEY = "NARRATIVE_API_KEY"
ENV_BASE_URL = "NARRATIVE_BASE_URL"
ENV_DATA_PLANE_ID = "NARRATIVE_DATA_PLANE_ID"


class ApiKey:
    """An API key that never shows itself: its repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApiKey, (self._value,))


@dataclass(frozen=True)
class Settings:
    """Where to send requests and with which key; safe to print."""

    api_key: ApiKey | None
    base_url: str
    data_plane_id: str | None
    allow_insecure_http: bool = False
    source: str = field(default="default", compare=False)
    key_source: str = field(default="unknown", compare=False)
    """Where the key came from, in words: e.g. "NARRATIVE_API_KEY (environment variable)"."""

    def require_key(self) -> ApiKey:
        """The key, or a ConfigurationError that says how to provide one."""
        if self.api_key is None or not self.api_key.reveal():
            raise ConfigurationError(
                "No Narrative API key. Call narrative_pandas.configure(api_key=...) (e.g. with "
                "getpass.getpass()), pass api_key=..., or set the NARRATIVE_API_KEY environment "
                "variable. To try the library without a key, call narrative_pandas.use_sandbox()."
            )
        return self.api_key

    def require_data_plane(self) -> str:
        """The data plane id, or a ConfigurationError that says how to provide one."""
        if not self.data_plane_id:
            raise ConfigurationError(
                "No data plane id. Pass data_plane_id=..., set NARRATIVE_DATA_PLANE_ID, or call "
                "narrative_pandas.configure(data_plane_id=...)."
            )
        return self.data_plane_id


@dataclass
class _Defaults:
    api_key: str | None = None
    base_url: str | None = None
    data_plane_id: str | None = None
    allow_insecure_http: bool = False


_configured = _Defaults()
_sandbox_target: _Defaults | None = None


def configure(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    data_plane_id: str | None = None,
    allow_insecure_http: bool = False,
) -> None:
    """Set process-wide defaults: they win over environment variables, arguments win over them.

    Calling it also stops using a sandbox installed by ``use_sandbox()``.

    Examples
    --------
    >>> import narrative_pandas as npd
    >>> npd.configure(data_plane_id="fef9904e-d263-4930-85f7-1e28cce40f89")
    """
    global _configured, _sandbox_target
    _configured = _Defaults(api_key, base_url, data_plane_id, allow_insecure_http)
    _sandbox_target = None


def set_sandbox_target(api_key: str, base_url: str, data_plane_id: str) -> None:
    """Make a running sandbox the default target (``use_sandbox`` calls this)."""
    global _sandbox_target
    _sandbox_target = _Defaults(api_key, base_url, data_plane_id, allow_insecure_http=True)


def sandbox_target_active() -> bool:
    """True while ``use_sandbox()`` is in force."""
    return _sandbox_target is not None


KEY_SOURCES = (
    "the api_key= argument",
    "the sandbox (use_sandbox())",
    "narrative_pandas.configure(api_key=...)",
    f"{ENV_API_KEY} (environment variable)",
)
"""Where a key may come from, in the order they win."""


def _first(*values: str | None) -> str | None:
    for value in values:
        if value:
            return value
    return None


def _key_and_source(*values: str | ApiKey | None) -> tuple[ApiKey | None, str]:
    """The first key given, masked at once (never a plain local), and where it came from."""
    for value, source in zip(values, KEY_SOURCES, strict=True):
        key = value if isinstance(value, ApiKey) else ApiKey(value) if value else None
        if key is not None and key.reveal():
            return key, source
    return None, "none"


def resolve_settings(
    api_key: str | ApiKey | None = None,
    base_url: str | None = None,
    data_plane_id: str | None = None,
    *,
    allow_insecure_http: bool | None = None,
) -> Settings:
    """Resolve settings: arguments, then ``use_sandbox()``, then ``configure()``, then environment.

    Raises ConfigurationError for a plain ``http://`` URL to a host that is not loopback, unless
    ``allow_insecure_http`` is set, so a key never crosses a network in clear text by accident.
    """
    sandbox = _sandbox_target or _Defaults()
    key, key_source = _key_and_source(
        api_key, sandbox.api_key, _configured.api_key, os.environ.get(ENV_API_KEY)
    )
    url = (
        _first(base_url, sandbox.base_url, _configured.base_url, os.environ.get(ENV_BASE_URL))
        or DEFAULT_BASE_URL
    )
    plane = _first(
        data_plane_id,
        sandbox.data_plane_id,
        _configured.data_plane_id,
        os.environ.get(ENV_DATA_PLANE_ID),
    )
    insecure = (
        allow_insecure_http
        if allow_insecure_http is not None
        else sandbox.allow_insecure_http or _configured.allow_insecure_http
    )
    url = url.rstrip("/")
    check_base_url(url, allow_insecure_http=insecure)
    source = "sandbox" if _sandbox_target is not None and not base_url else "settings"
    return Settings(
        api_key=key,
        base_url=url,
        data_plane_id=plane,
        allow_insecure_http=insecure,
        source=source,
        key_source=key_source,
    )


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse URLs that are not http(s), and plain http to non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Never echo it: whatever sits before the "@" may be a password or a key.
        raise ConfigurationError(
            f"base_url must not contain credentials (a 'user@' or 'user:password@' part, here "
            f"before {parts.hostname!r}); pass the key as api_key=... and use e.g. "
            f"{DEFAULT_BASE_URL!r}."
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url {url!r} is not an http(s) URL; use e.g. {DEFAULT_BASE_URL!r}."
        )
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ConfigurationError(
            f"Refusing to send the API key in clear text to {parts.hostname!r} over http://. "
            "Use https://, or pass allow_insecure_http=True if this network is trusted."
        )
