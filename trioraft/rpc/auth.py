"""Peer authentication: an HMAC-SHA256 tag, keyed by the cluster secret, on every peer
request and on its reply.

A request carries a credential: a nonce (16 bytes), a head tag over (nonce, method, the
body's length in bytes), then a tag over (nonce, method, body). The head tag lets a listener
refuse a stranger's message from its first bytes, before it reads (and holds) the body; the
tag over the body authenticates the message itself. A reply carries a tag over (the
request's tag, status, reply body), so a reply verifies only as the answer to the very
request it answers: a forged reply, or one recorded earlier and replayed, is rejected (the
caller treats it as a lost call). Over HTTP the credential and the reply tag travel
hex-encoded in the ``X-Trioraft-Auth`` header; over framed TCP, as raw bytes ahead of the
JSON (see :mod:`trioraft.rpc.tcp`).

Invariants:
- Tags are compared in constant time (:func:`hmac.compare_digest`), and a request is
  checked before its body is parsed: no byte of an unauthenticated message reaches the JSON
  parser or a handler. Listeners check the head (:meth:`PeerAuth.check_head`) before they
  read the body, so a stranger cannot make them hold a body at all; the head check uses
  the nonce up, so a credential seen on the wire cannot make them read another body.
- Requests and replies are MACed under distinct prefixes and every variable-length part is
  length-prefixed or last, so no tag can be reused for a different message or role.
- Nonces never repeat within a process (a random prefix and a counter), so every request of
  a run has its own tag, and so has every reply.
- A request whose nonce was already accepted is refused (a replay): each sender's nonce
  prefix gets a window of its last 4,096 counters (older ones are refused too), for the
  1,024 most recently heard prefixes. Raft would tolerate a duplicate for safety, but a
  replayed heartbeat of a dead leader would keep its followers from electing another.
- Not covered: a request recorded from a sender whose prefix has since been forgotten (a
  process 1,024 restarts ago) is accepted once; a request recorded on its way to one member
  is accepted once by each other member (tags name no receiver: Raft takes a leader's
  message meant for another follower as a duplicate would be, by its term and log
  checks); and nothing is secret from a wire observer (use TLS for that).
"""

from __future__ import annotations

import hmac
import itertools
import os
import struct

from .._logging import Throttled, logger

AUTH_HEADER = "X-Trioraft-Auth"
NONCE_BYTES = 16
TAG_BYTES = 32
CREDENTIAL_BYTES = NONCE_BYTES + 2 * TAG_BYTES  # nonce, head tag, tag
MIN_SECRET_BYTES = 16

_REQUEST = b"trioraft-request\x00"
_HEAD = b"trioraft-head\x00"
_REPLY = b"trioraft-reply\x00"
_LENGTH = struct.Struct(">I")
_STATUS = struct.Struct(">i")

Bytes = bytes | bytearray | memoryview


class PeerAuth:
    """Signs and checks peer messages with the cluster ``secret`` (at least 16 bytes).

    ``refused`` counts the requests refused for a missing or wrong tag.
    """

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")
        self._mac = hmac.new(secret, digestmod="sha256")  # copied per tag: no key setup
        self._nonce_prefix = os.urandom(NONCE_BYTES - 8)
        self._counter = itertools.count()
        self.refused = 0
        self._log_refusal = Throttled(logger)
        self._seen = _ReplayWindows()

    def sign_request(self, method: str, body: Bytes) -> tuple[bytes, bytes]:
        """A fresh credential (nonce, head tag, tag) for a request, and its tag (for its
        reply)."""
        nonce = self._nonce_prefix + next(self._counter).to_bytes(8, "big")
        tag = self._request_tag(nonce, method, body)
        return nonce + self._head_tag(nonce, method, len(body)) + tag, tag

    def check_head(self, credential: Bytes, method: str, body_bytes: int) -> bool:
        """Whether ``credential`` can be right for a ``method`` request whose body is
        ``body_bytes`` long: its head tag is, and its nonce is used for the first time
        (from now on it is used: a credential replayed with another body is refused here,
        its body unread). Checked before the body is read; :meth:`check_body` checks the
        body once it is in."""
        if len(credential) != CREDENTIAL_BYTES or not 0 <= body_bytes < 1 << 63:
            return False
        nonce = bytes(credential[:NONCE_BYTES])
        head_tag = credential[NONCE_BYTES : NONCE_BYTES + TAG_BYTES]
        if not hmac.compare_digest(self._head_tag(nonce, method, body_bytes), head_tag):
            return False
        return self._seen.first_time(nonce[:-8], int.from_bytes(nonce[-8:], "big"))

    def check_body(self, credential: Bytes, method: str, body: Bytes) -> bytes | None:
        """The request's tag if ``credential``, whose head :meth:`check_head` accepted, is
        right for ``body``, else ``None``."""
        tag = bytes(credential[-TAG_BYTES:])
        nonce = bytes(credential[:NONCE_BYTES])
        return tag if hmac.compare_digest(self._request_tag(nonce, method, body), tag) else None

    def check_request(self, credential: Bytes, method: str, body: Bytes) -> bytes | None:
        """The request's tag if ``credential`` is right for it (head and body), else
        ``None``: :meth:`check_head` then :meth:`check_body`, for a body already in."""
        if not self.check_head(credential, method, len(body)):
            return None
        return self.check_body(credential, method, body)

    def sign_reply(self, request_tag: bytes, status: int, body: Bytes) -> bytes:
        """The tag of a reply (``status``, ``body``) to the request tagged ``request_tag``."""
        mac = self._mac.copy()
        mac.update(_REPLY + request_tag + _STATUS.pack(status))
        mac.update(body)
        return mac.digest()

    def check_reply(self, request_tag: bytes, status: int, body: Bytes, tag: bytes) -> bool:
        """Whether ``tag`` is right for this reply to the request tagged ``request_tag``."""
        return hmac.compare_digest(self.sign_reply(request_tag, status, body), tag)

    def refuse(self, remote: object, reason: str) -> None:
        """Count a refused request and log it (one line per 10 s at most)."""
        self.refused += 1
        self._log_refusal("refused a peer request from %s: %s", remote or "?", reason)

    def _request_tag(self, nonce: bytes, method: str, body: Bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(_REQUEST + nonce + _named(method))
        mac.update(body)
        return mac.digest()

    def _head_tag(self, nonce: bytes, method: str, body_bytes: int) -> bytes:
        mac = self._mac.copy()
        mac.update(_HEAD + nonce + _named(method) + body_bytes.to_bytes(8, "big"))
        return mac.digest()


def _named(method: str) -> bytes:
    name = method.encode("utf-8", "surrogatepass")
    return _LENGTH.pack(len(name)) + name


class _ReplayWindows:
    """Which counters each sender's nonce prefix has used, in a sliding window per prefix
    (an anti-replay window, as IPsec keeps): bounded in prefixes and in counters."""

    WINDOW = 4096
    PREFIXES = 1024

    def __init__(self) -> None:
        self._windows: dict[bytes, tuple[int, int]] = {}  # prefix -> (highest, bitmap)

    def first_time(self, prefix: bytes, counter: int) -> bool:
        """Record ``counter`` for ``prefix``; False if it was seen or is too old to tell."""
        window = self._windows.pop(prefix, None)
        if window is None:
            highest, seen = counter, 1
        else:
            highest, seen = window
            if counter > highest:
                gap = counter - highest
                seen = ((seen << gap) | 1) & ((1 << self.WINDOW) - 1) if gap < self.WINDOW else 1
                highest = counter
            else:
                bit = 1 << (highest - counter)
                if highest - counter >= self.WINDOW or seen & bit:
                    self._windows[prefix] = window
                    return False
                seen |= bit
        self._windows[prefix] = (highest, seen)  # now the most recently heard
        if len(self._windows) > self.PREFIXES:
            del self._windows[next(iter(self._windows))]
        return True
