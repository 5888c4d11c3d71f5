"""A local app that has stopped reading: listens on a unix socket, accepts one connection and
reads nothing until SIGUSR1, then reads until nothing has come for 2 s (or the end) and prints
the byte count and sha256.

  stalled_app.py SOCKET_PATH
"""
import hashlib
import os
import signal
import socket
import sys
import time

path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
released = []
signal.signal(signal.SIGUSR1, lambda *_: released.append(True))
connection, _ = server.accept()
while not released:
    time.sleep(0.05)
digest, count = hashlib.sha256(), 0
connection.settimeout(2)
while True:
    try:
        data = connection.recv(1 << 20)
    except (socket.timeout, TimeoutError, ConnectionResetError):
        break
    if not data:
        break
    digest.update(data)
    count += len(data)
print(count, digest.hexdigest(), flush=True)
