"""One-byte pieces after a head, paced: a hostile party toward a stalled one.

  trickle.py tls PORT CERTS HEAD COUNT   a mesh peer (CERTS/backup-agent.pem): one TLS record
                                         per byte, toward a storage sidecar in raw mode
  trickle.py tcp PORT HEAD COUNT         a local caller on the backup host: one write per byte,
                                         into a sidecar's upstream listener

Sends HEAD bytes, waits a second, sends COUNT single bytes 0.2 ms apart, prints the bytes
sent and their sha256, then waits for SIGTERM (the connection stays open).
"""
import hashlib
import socket
import ssl
import sys
import time

mode, port = sys.argv[1], int(sys.argv[2])
connection = socket.create_connection(("127.0.0.1", port))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "tls":
    certs, head, count = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(f"{certs}/ca.pem")
    context.load_cert_chain(f"{certs}/backup-agent.pem", f"{certs}/backup-agent.key")
    connection = context.wrap_socket(connection)
else:
    head, count = int(sys.argv[3]), int(sys.argv[4])
digest = hashlib.sha256()
data = bytes((i * 31 + 9) & 255 for i in range(head))
connection.sendall(data)
digest.update(data)
time.sleep(1)
for i in range(count):
    piece = bytes([(i * 7) & 255])
    connection.send(piece)
    digest.update(piece)
    time.sleep(0.0002)
print(head + count, digest.hexdigest(), flush=True)
time.sleep(3600)
