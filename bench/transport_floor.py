"""What one message between two local processes costs: a socketpair against ZeroMQ over ipc.

Run ``python bench/transport_floor.py [ROUNDS]``.  Each round times 5,000
round trips of 100 bytes between this process and a forked echo process:

* a ``SOCK_SEQPACKET`` socketpair (one blocking ``send``/``recv`` each way:
  the kernel wakes the other end directly);
* a ZeroMQ DEALER and ROUTER over ``ipc://`` (what ensemble's processes use:
  every message also passes through the sender's and the receiver's ZeroMQ
  I/O thread).

It prints the median round trip of each and the ratio.  A job crosses four
such hops (client -> daemon -> worker -> daemon -> client), so the difference
times two is what a transport of our own would take off the submit-to-result
latency (see bench/README.md, "Where one job's latency goes").  Nothing is
left behind: the echo processes exit, the ipc socket file is removed.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time

import zmq

N = 5000
PAYLOAD = b"x" * 100


def _socketpair() -> float:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the echo: until end of file
        mine.close()
        while msg := theirs.recv(65536):
            theirs.send(msg)
        os._exit(0)
    theirs.close()
    times = []
    try:
        for _ in range(N):
            t = time.perf_counter()
            mine.send(PAYLOAD)
            mine.recv(65536)
            times.append(time.perf_counter() - t)
    finally:
        mine.close()
        os.waitpid(pid, 0)
    return statistics.median(times)


def _zeromq() -> float:
    with tempfile.TemporaryDirectory(prefix="ens-floor-") as tmp:
        endpoint = f"ipc://{tmp}/echo"
        pid = os.fork()
        if pid == 0:  # the echo: a ROUTER, until the word "stop"
            ctx = zmq.Context()
            router = ctx.socket(zmq.ROUTER)
            router.bind(endpoint)
            while True:
                ident, msg = router.recv_multipart()
                if msg == b"stop":
                    os._exit(0)
                router.send_multipart([ident, msg])
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(endpoint)
        times = []
        try:
            dealer.send(b"warm")  # connected and bound: the first answer arrives
            dealer.recv()
            for _ in range(N):
                t = time.perf_counter()
                dealer.send(PAYLOAD)
                dealer.recv()
                times.append(time.perf_counter() - t)
        finally:
            dealer.send(b"stop")
            os.waitpid(pid, 0)
            dealer.close(linger=0)
            ctx.term()
    return statistics.median(times)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for r in range(rounds):  # alternating, so the machine's drift touches both alike
        pair, zmq_ipc = _socketpair(), _zeromq()
        print(f"round {r + 1}: socketpair {pair * 1e6:.0f} us, ZeroMQ ipc {zmq_ipc * 1e6:.0f} us round trip "
              f"(median of {N}); ZeroMQ / socketpair {zmq_ipc / pair:.1f}x")


if __name__ == "__main__":
    main()
