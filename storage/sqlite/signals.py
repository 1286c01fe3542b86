"""Telling the other processes of one data folder that this one added index outbox entries.

PostgreSQL tells every replica through NOTIFY; SQLite has nothing of the kind, so without this
the processes sharing a folder (`serve --processes N`, or two proxies on one folder) find each
other's writes by polling, every `FOLLOW_INTERVAL_S`. Instead each process listening for them
binds a datagram socket in Linux's abstract namespace (no file, so no path length limit and
nothing left behind), named after the folder and a name of its own, and leaves a marker file
of that name in `<folder>/listeners/`. After a commit that added entries, a process sends one
byte to every other listener; a listener whose socket is gone (its process ended) has its marker
removed by the first sender that finds it so. A datagram is a hint: one lost, or a platform
without abstract sockets, leaves the polling to find the entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("memento.storage")

LISTENERS = "listeners"


class OutboxSignals:
    """The listeners of one data folder: this process's, and the others' to wake."""

    def __init__(self, folder: Path) -> None:
        self._markers = folder / LISTENERS
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        self._prefix = b"\0memento-" + digest.encode()
        self._own: str | None = None
        self._sender: socket.socket | None = None

    def _address(self, name: str) -> bytes:
        return self._prefix + b"-" + name.encode()

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` for every signal another process sends, until cancelled; return at
        once where abstract sockets do not exist (the reader polls)."""
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind(self._address(name))
        except OSError as exc:
            receiver.close()
            log.info("processes sharing this folder will poll for each other's writes: %s", exc)
            return
        receiver.setblocking(False)
        try:
            self._markers.mkdir(exist_ok=True)
            (self._markers / name).touch()
            self._own = name
            loop = asyncio.get_running_loop()
            while True:
                await loop.sock_recv(receiver, 64)
                wake()
        finally:
            self._own = None
            with contextlib.suppress(OSError):
                (self._markers / name).unlink()
            receiver.close()

    def announce(self) -> None:
        """Wake every other listener of the folder (call after a commit added entries)."""
        try:
            names = [entry.name for entry in os.scandir(self._markers)]
        except OSError:  # nobody listens yet
            return
        for name in names:
            if name == self._own:
                continue
            try:
                self._socket().sendto(b"!", self._address(name))
            except (ConnectionRefusedError, FileNotFoundError):  # its process ended
                with contextlib.suppress(OSError):
                    (self._markers / name).unlink()
            except OSError:  # its queue is full (it has been woken) or the platform has none
                continue

    def _socket(self) -> socket.socket:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        return self._sender

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
