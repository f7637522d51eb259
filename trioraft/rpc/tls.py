"""TLS settings for listeners (:class:`ServerTls`) and for the clients that call them
(:class:`ClientTls`), shared by the HTTP and the framed-TCP transports.

Invariants:
- A server with a ``ca_file`` requires every client to present a certificate signed by it
  (mutual TLS, ``ssl.CERT_REQUIRED``); without one it asks for none.
- A client always verifies the server's certificate and host name: against ``ca_file`` if
  given, else against the default CA bundle.
- Building a context reads files (the default bundle: ~70 ms); each distinct setting builds
  its context once per process, so a context may be shared by any number of clients.
  Certificates replaced on disk are therefore seen only by a new process.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cache

import httpx


@dataclass(frozen=True)
class ServerTls:
    """A listener's certificate and key; with ``ca_file``, the CA its clients must show."""

    cert_file: str
    key_file: str
    ca_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """A fresh server context (listeners are few; each builds one)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file is not None:
            context.load_verify_locations(self.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class ClientTls:
    """How a client checks servers (``ca_file``, else the default bundle) and, for mutual
    TLS, the certificate it shows them (``cert_file``; ``key_file`` if not in it)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("a client key_file needs its cert_file")


def client_context(tls: ClientTls | None = None) -> ssl.SSLContext:
    """The (cached, shared) verifying client context for ``tls``; the default one for None."""
    return _default_context() if tls is None or tls == ClientTls() else _custom_context(tls)


@cache
def _default_context() -> ssl.SSLContext:
    """httpx's default (verifying) TLS context, built once per process: building it reads
    the CA bundle, ~70 ms that would otherwise block the event loop for every client made."""
    return httpx.create_ssl_context()


@cache
def _custom_context(tls: ClientTls) -> ssl.SSLContext:
    if tls.ca_file is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    else:
        context = httpx.create_ssl_context()  # a new one: the shared default stays unchanged
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
