#!/usr/bin/env python3
"""A mesh peer that pipelines denied HTTP/1.1 requests and does not read the 403s (Python's own
ssl module: no code shared with the sidecar).

  unread_403s.py PORT CERTS COUNT PID

Connects with CERTS/backup-agent.pem, sends COUNT copies (more if the host's TCP buffers are
large) of a request the intentions deny,
16 KiB at a time, reading nothing. If a send makes no progress for 5 s, the sidecar has stopped
reading: the RSS of process PID is taken then (else after all was sent). It then reads the
answers, up to one per whole request sent, and prints one JSON line: {"stalled_at": bytes sent
before the stall or null, "rss_growth_kib", "answered", "expected"}.
"""
import json
import socket
import ssl
import sys
import time

port, certs, count, pid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# The sidecar stops reading once its answers fill its socket buffer (up to tcp_wmem's maximum)
# and its 512 KiB mark: send enough for three times that, so a host with large buffers stalls too.
with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
    count = max(count, 3 * int(wmem.read().split()[2]) // 150)


def rss_kib():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.load_verify_locations(f"{certs}/ca.pem")
context.load_cert_chain(f"{certs}/backup-agent.pem", f"{certs}/backup-agent.key")
raw = socket.socket()
# Small buffers on our side, so what the sidecar answers backs up into it quickly.
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
raw.connect(("127.0.0.1", port))
tls = context.wrap_socket(raw)

request = b"DELETE /repository/keys/x HTTP/1.1\r\nHost: storage\r\n\r\n"
data = request * count
before = rss_kib()
tls.settimeout(5)
sent, stalled_at = 0, None
while sent < len(data):
    try:
        sent += tls.send(data[sent:sent + 16384])
    except (socket.timeout, TimeoutError):
        stalled_at = sent
        break
if stalled_at is None:
    time.sleep(1)
growth = rss_kib() - before

# Only whole requests in whole records reached the sidecar; each gets its 403 once the
# sidecar reads on. Nothing more is sent (a write that timed out stays pending in OpenSSL).
expected = sent // len(request)
tls.settimeout(60)
marker = b"HTTP/1.1 403"
answered, tail = 0, b""
try:
    while answered < expected:
        chunk = tls.recv(1 << 16)
        if not chunk:
            break
        tail += chunk
        answered += tail.count(marker)
        tail = tail[-(len(marker) - 1):]  # too short to hold a marker already counted
except (socket.timeout, TimeoutError):
    pass
print(json.dumps({"stalled_at": stalled_at, "rss_growth_kib": growth, "answered": answered, "expected": expected}))
