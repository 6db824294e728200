"""``HOST:PORT`` as the user types it -> ``(host, port)``, with one clear line when it is not one.

The TVM RPC and Triton backends, the browser view's ``--serve`` and the
benchmark's ``--rpc`` all take an address; they parse it here so that they
accept the same spellings (``[IPv6]:PORT`` included) and refuse the same
mistakes, each in its own words (``expected``) and error type.  Whether an
address is this machine's alone is decided here too (:func:`is_loopback`).
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable

from online_tsm.errors import OnlineTSMError


class AddressError(OnlineTSMError, ValueError):
    """Not a ``HOST:PORT`` address."""


def parse_host_port(text: str, *, expected: str = "expected an address HOST:PORT",
                    error: Callable[[str], Exception] = AddressError,
                    default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (also ``PORT`` alone when ``default_host`` is given) -> ``(host, port)``.

    ``expected`` says what the caller wanted, in the caller's words; the error
    raised (``error(...)``) is that line followed by ``, got 'TEXT'``.  Ports
    are 0-65535 (0: any free port, for a server).
    """
    spec = str(text).strip()
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "", spec
    host = host.strip("[]") or (default_host or "")
    if not host or not port.isdigit() or int(port) > 65535:
        raise error(f"{expected}, got {text!r}")
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    """The inverse of :func:`parse_host_port`: ``HOST:PORT``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str, resolve: bool = False) -> bool:
    """True when only this machine can reach ``host``: ``localhost`` or a loopback address.

    Without ``resolve`` another name counts as reachable from elsewhere (the
    safe answer when deciding whether to warn about an exposed server); with
    it, the name is looked up first (the right answer when deciding whether a
    server is this very machine).
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not resolve:
        return False
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False
