"""The node-local link between a Ray-placed worker and its host actor, over which big arrays reach Ray's object store.

A worker placed on a Ray cluster (:mod:`actors._ray_host`) is a subprocess of its
host actor (``WorkerHost``) and never joins Ray itself: the actor makes a
socketpair, passes one end to the worker (``--object-store-fd N``) and serves
the other from a thread.  Over it, on the worker's job thread:

* ``get KEY``: the bytes of an argument array the daemon staged in the
  object store under ``KEY`` (the frame carried a
  :class:`~actors.messages.StoredArray`); the actor resolves the object from
  its node and writes the raw bytes;
* ``put KEY DTYPE SHAPE``: a result array's raw bytes; the actor keeps the
  array under ``KEY`` until the daemon takes it (through Ray) and the frame
  carries only the key.

Each message is a 4-byte big-endian length, a msgpack header, then for
``get`` replies and ``put`` requests the array's raw bytes: no pickle on
either side (the actor's own Ray calls deserialise as Ray does, inside the
cluster).  Nothing here imports Ray: a worker never does.  Runtime layer.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
from typing import Any

import msgspec

from actors._errors import ProtocolError
from actors.messages import StoredArray

_LEN = struct.Struct(">I")
_MAX_HEADER = 1 << 16
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


def send_msg(sock: socket.socket, header: Any, payload: Any = None, fd: int = -1) -> None:
    """One message: the length of the msgpack ``header``, the header, then ``payload``'s bytes (a buffer) if any.

    ``fd`` (a descriptor, when given) goes with the header's first bytes (SCM_RIGHTS on a Unix socket).
    """
    head = _pack(header)
    frame = _LEN.pack(len(head)) + head
    sent = socket.send_fds(sock, [frame], [fd]) if fd >= 0 else 0
    sock.sendall(memoryview(frame)[sent:])
    if payload is not None:
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int, into: Any = None) -> Any:
    """Exactly ``n`` bytes (into the writable buffer ``into`` when given); EOFError if the peer closed."""
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf).cast("B")
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("the other end of the object-store link closed")
        got += k
    return buf


def recv_header(sock: socket.socket) -> Any:
    """The msgpack header of the next message (EOFError when the peer closed)."""
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if n > _MAX_HEADER:
        raise ProtocolError(f"object-store link header of {n} bytes (at most {_MAX_HEADER})")
    return _unpack(bytes(recv_exact(sock, n)))


class StoreLink:
    """The worker's end: fetch staged arguments, hand over big results (job thread; one call at a time)."""

    def __init__(self, fd: int, min_bytes: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.min_bytes = min_bytes  # results this big go to the store ([cluster] object_store_min_bytes)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._prefix = f"r{os.getpid()}."

    def wants(self, nbytes: int) -> bool:
        """Whether a result array of ``nbytes`` goes through the object store."""
        return 0 < self.min_bytes <= nbytes

    def get(self, stored: StoredArray) -> Any:
        """The argument array staged under ``stored.key``, in memory of its own (writable)."""
        import numpy as np

        from actors.messages import _check_dtype

        dtype = _check_dtype(stored.dtype)
        arr = np.empty(stored.shape, dtype)
        with self._lock:
            send_msg(self.sock, ["get", stored.key])
            ok, nbytes, error = recv_header(self.sock)
            if not ok:
                raise ProtocolError(f"argument array {stored.key} is not in the object store: {error}")
            if nbytes != arr.nbytes:
                recv_exact(self.sock, nbytes)  # keep the link in step, then refuse
                raise ProtocolError(f"argument array {stored.key} has {nbytes} bytes, its key says {arr.nbytes}")
            recv_exact(self.sock, nbytes, arr)
        return arr

    def put(self, arr: Any) -> StoredArray:
        """Hand a result array to the host actor; the key the frame carries instead of its bytes."""
        import numpy as np

        data = np.ascontiguousarray(arr)
        key = f"{self._prefix}{next(self._seq)}"
        with self._lock:
            send_msg(self.sock, ["put", key, data.dtype.str, list(data.shape), data.nbytes],
                     data.reshape(-1).view(np.uint8).data)
            ok, _, error = recv_header(self.sock)
        if not ok:
            raise ProtocolError(f"the result array could not be put in the object store: {error}")
        return StoredArray(key, data.dtype.str, tuple(data.shape))
