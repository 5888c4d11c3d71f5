#!/usr/bin/env python3
"""Independent HTTP/1.1 reader for the differential smuggling tests (h11, a strict parser).

  h11_recorder.py serve LOG     An HTTP/1.1 server on 127.0.0.1 (port printed on stdout as
                                "PORT n"): every request it reads is appended to LOG as one JSON
                                line, so a test can tell exactly what reached the service.
  h11_recorder.py parse         Reads a JSON list of base64 request streams on stdin and prints,
                                for each, the requests h11 finds in it (a client-side view of
                                the same bytes, to compare with the sidecar's).

Log lines: {"conn": N, "event": "request", "method", "target", "headers": [[name, value]...]}
then {"conn": N, "event": "end", "body_len", "body_sha256"} per complete message, and
{"conn": N, "event": "error", "kind": "truncated"|"malformed", "detail"} or
{"conn": N, "event": "closed"} once the connection is over.
"""
import base64
import hashlib
import json
import socket
import sys
import threading

import h11


def parse_stream(data):
    """The requests h11 reads from `data` followed by end of stream: each head it read, with its
    body's length and digest once the whole message was read."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    requests = []
    current = None
    body = hashlib.sha256()
    length = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and current is None:
                    # A complete request is answered before the next is read.
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                    continue
                break
            if isinstance(event, h11.Request):
                current = {"method": event.method.decode("latin-1"), "target": event.target.decode("latin-1"),
                           "complete": False}
                requests.append(current)
                body, length = hashlib.sha256(), 0
            elif isinstance(event, h11.Data):
                body.update(event.data)
                length += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                current["body_len"] = length
                current["body_sha256"] = body.hexdigest()
                current["complete"] = True
                current = None
            elif isinstance(event, h11.ConnectionClosed):
                break
        return {"requests": requests, "error": None}
    except h11.ProtocolError as error:
        return {"requests": requests, "error": str(error) or type(error).__name__}


def parse_main():
    items = json.load(sys.stdin)
    json.dump([parse_stream(base64.b64decode(item)) for item in items], sys.stdout)


class Recorder:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1)
        self.next_conn = 0

    def conn_id(self):
        with self.lock:
            self.next_conn += 1
            return self.next_conn

    def write(self, record):
        with self.lock:
            self.file.write(json.dumps(record) + "\n")


def serve_connection(sock, conn_id, recorder):
    conn = h11.Connection(h11.SERVER)
    body, length = hashlib.sha256(), 0
    request = None
    eof = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if eof:
                    break
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    recorder.write({"conn": conn_id, "event": "error", "kind": "truncated", "detail": "reset"})
                    return
                eof = not data
                try:
                    conn.receive_data(data)
                except h11.RemoteProtocolError as error:
                    kind = "truncated" if eof else "malformed"
                    recorder.write({"conn": conn_id, "event": "error", "kind": kind, "detail": str(error)})
                    return
                continue
            if isinstance(event, h11.Request):
                request = event
                body, length = hashlib.sha256(), 0
                recorder.write({"conn": conn_id, "event": "request", "method": event.method.decode("latin-1"),
                                "target": event.target.decode("latin-1"),
                                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in event.headers]})
            elif isinstance(event, h11.Data):
                body.update(event.data)
                length += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                recorder.write({"conn": conn_id, "event": "end", "body_len": length, "body_sha256": body.hexdigest()})
                text = ("%s %s %d\n" % (request.method.decode("latin-1"), request.target.decode("latin-1"), length)).encode()
                sock.sendall(conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(text))),
                                                                               ("content-type", "text/plain")])))
                if request.method != b"HEAD":
                    sock.sendall(conn.send(h11.Data(data=text)))
                sock.sendall(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
            elif event is h11.PAUSED:
                break
    except h11.RemoteProtocolError as error:
        kind = "truncated" if eof else "malformed"
        recorder.write({"conn": conn_id, "event": "error", "kind": kind, "detail": str(error)})
    except (BrokenPipeError, ConnectionResetError) as error:
        recorder.write({"conn": conn_id, "event": "error", "kind": "truncated", "detail": str(error)})
    finally:
        recorder.write({"conn": conn_id, "event": "closed"})
        sock.close()


def serve_main(path):
    recorder = Recorder(path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        # Connection ids in accept order: the test sends one connection at a time.
        conn_id = recorder.conn_id()
        threading.Thread(target=serve_connection, args=(sock, conn_id, recorder), daemon=True).start()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2])
    elif sys.argv[1:2] == ["parse"]:
        parse_main()
    else:
        sys.exit(__doc__)
