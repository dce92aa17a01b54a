"""Security layers: sans-I/O byte filters between the socket and the POP3 session.

A layer wraps what we send and unwraps what we receive. TLS (STLS, pop3s) is one; a SASL
mechanism that negotiates integrity or confidentiality (GSSAPI) pushes another above it.
The driver keeps them in a :class:`LayerStack`, bottom (next to the socket) first:

    socket <-> TLS <-> GSSAPI wrap/unwrap <-> POP3 session

A layer buffers partial frames itself, so input may arrive in any chunking: a frame split
at every byte, or several frames in one read. A frame that cannot be valid (bad length,
failed integrity check, over the negotiated size) raises :class:`LayerError`; the driver
ends the connection and logs why: nothing inside such a frame is ever run.

Some layers must send bytes of their own while receiving (TLS handshake records, session
tickets, alerts): :meth:`SecurityLayer.outgoing` hands them over, and the stack wraps them
in the layers below the one that produced them.
"""

from __future__ import annotations

from typing import Protocol


class LayerError(Exception):
    """The peer sent a frame this layer cannot accept. The connection must end."""


class SecurityLayer(Protocol):
    name: str  # for logs: "TLS", "GSSAPI"

    @property
    def ssf(self) -> int:
        """The strength this layer adds, in Cyrus's units (bits of secret, 1 = integrity)."""
        ...

    def unwrap(self, data: bytes) -> bytes:
        """Whole plaintext available after ``data`` (possibly b""); keeps partial frames."""
        ...

    def wrap(self, data: bytes) -> bytes:
        """The wire form of ``data``, as many frames as the layer's size limit needs."""
        ...

    def outgoing(self) -> bytes:
        """Bytes the layer itself needs sent (b"" for most layers and most of the time)."""
        ...

    @property
    def peer_closed(self) -> bool:
        """The peer ended the layer cleanly (a TLS close_notify): no more input."""
        ...

    def close(self) -> bytes:
        """Bytes to send when we end the layer (a TLS close_notify)."""
        ...


class LayerStack:
    """Layers bottom first. With no layer it passes bytes through unchanged."""

    __slots__ = ("_layers",)

    def __init__(self) -> None:
        self._layers: list[SecurityLayer] = []

    def __bool__(self) -> bool:
        return bool(self._layers)

    def push(self, layer: SecurityLayer) -> None:
        self._layers.append(layer)

    @property
    def peer_closed(self) -> bool:
        return any(layer.peer_closed for layer in self._layers)

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Bytes from the socket -> (plaintext for the session, bytes to send back)."""
        reply = b""
        for depth, layer in enumerate(self._layers):
            data = layer.unwrap(data)
            own = layer.outgoing()
            if own:
                reply += self._wrap_below(depth, own)
            if not data:
                break
        return data, reply

    def wrap(self, data: bytes) -> bytes:
        return self._wrap_below(len(self._layers), data)

    def close(self) -> bytes:
        """What to send on an orderly close, top layer first."""
        out = b""
        for depth in range(len(self._layers) - 1, -1, -1):
            own = self._layers[depth].close()
            if own:
                out += self._wrap_below(depth, own)
        return out

    def _wrap_below(self, depth: int, data: bytes) -> bytes:
        for layer in reversed(self._layers[:depth]):
            data = layer.wrap(data)
        return data
