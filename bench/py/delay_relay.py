#!/usr/bin/env python3
"""A TCP relay that delays every byte by a fixed time in each direction: a distant link
(an off-site storage node) on one host, where the kernel has no netem.

    delay_relay.py LISTEN_PORT TARGET_PORT ONE_WAY_MS [BUFFER_MIB]

It reads as fast as the sender writes, holds each chunk until ONE_WAY_MS after it arrived,
then writes it on. Up to BUFFER_MIB (default 64) per direction may be in flight; beyond that
it stops reading, as a TCP window of that size would. Only windows above TCP (HTTP/2 flow
control) see the round trip; TCP between the hops stays on loopback.
"""
import collections
import socket
import sys
import threading
import time


def pump(source, sink, delay, limit):
    queue = collections.deque()
    state = {"bytes": 0, "eof": False}
    cond = threading.Condition()

    def reader():
        while True:
            with cond:
                while state["bytes"] >= limit:
                    cond.wait()
            try:
                chunk = source.recv(1 << 20)
            except OSError:
                chunk = b""
            with cond:
                if not chunk:
                    state["eof"] = True
                else:
                    queue.append((time.monotonic() + delay, chunk))
                    state["bytes"] += len(chunk)
                cond.notify_all()
            if not chunk:
                return

    def writer():
        while True:
            with cond:
                while not queue and not state["eof"]:
                    cond.wait()
                if not queue:
                    break
                due, chunk = queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with cond:
                queue.popleft()
                state["bytes"] -= len(chunk)
                cond.notify_all()
            try:
                sink.sendall(chunk)
            except OSError:
                break
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for thread in threads:
        thread.start()
    return threads


def serve(client, target_port, delay, limit):
    upstream = socket.create_connection(("127.0.0.1", target_port))
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threads = pump(client, upstream, delay, limit) + pump(upstream, client, delay, limit)
    for thread in threads:
        thread.join()
    client.close()
    upstream.close()


def main():
    listen_port, target_port, one_way_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    limit = int(float(sys.argv[4]) * (1 << 20)) if len(sys.argv) > 4 else 64 << 20
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(128)
    print(f"delay relay 127.0.0.1:{listen_port} -> {target_port}, {one_way_ms} ms each way", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, target_port, one_way_ms / 1000, limit), daemon=True).start()


if __name__ == "__main__":
    main()
