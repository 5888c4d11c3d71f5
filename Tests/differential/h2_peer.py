#!/usr/bin/env python3
"""Independent HTTP/2 peers for the differential tests (the `h2` library, which shares no code
with nghttp2 or the sidecar).

  h2_peer.py serve LOG    A cleartext HTTP/2 (prior knowledge) server on 127.0.0.1, port printed
                          as "PORT n"; every request it reads is appended to LOG as one JSON line:
                          {"conn", "event": "request", "stream", "method", "path", "headers",
                          "body_len", "body_sha256"} once the stream ended, {"conn", "event":
                          "error", "detail"} if the peer broke the protocol, {"conn", "event":
                          "closed"} at the end. Inbound headers are validated (strict).
  h2_peer.py client PORT  Reads a JSON list of items on stdin, each a list of requests
                          {"headers": [[name, value]...] (latin-1), "body": str|null}; sends each
                          item on a connection of its own ("pad": DATA padding, "trailers":
                          a trailer list), without validating or normalising
                          what it sends, and prints per item {"statuses": {stream: status or
                          "reset:N"}, "goaway": code|null}.
"""
import hashlib
import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def serve_connection(sock, conn_id, log, lock):
    def write(record):
        with lock:
            log.write(json.dumps(record) + "\n")
            log.flush()

    config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
    conn = h2.connection.H2Connection(config=config)
    streams = {}
    try:
        # Inside the try: a connection cut at once (a refused request) still gets its record.
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as error:
                write({"conn": conn_id, "event": "error", "detail": str(error) or type(error).__name__})
                sock.sendall(conn.data_to_send())
                break
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in event.headers]
                    streams[event.stream_id] = {"headers": headers, "sha": hashlib.sha256(), "len": 0}
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in streams:
                        streams[event.stream_id]["sha"].update(event.data)
                        streams[event.stream_id]["len"] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, (h2.events.StreamEnded,)) or (
                        isinstance(event, h2.events.RequestReceived) and event.stream_ended is not None):
                    stream = streams.pop(event.stream_id, None)
                    if stream is None:
                        continue
                    pseudo = dict((n, v) for n, v in stream["headers"] if n.startswith(":"))
                    write({"conn": conn_id, "event": "request", "stream": event.stream_id,
                           "method": pseudo.get(":method"), "path": pseudo.get(":path"), "headers": stream["headers"],
                           "body_len": stream["len"], "body_sha256": stream["sha"].hexdigest()})
                    body = ("%s %s %d\n" % (pseudo.get(":method"), pseudo.get(":path"), stream["len"])).encode()
                    if pseudo.get(":method") == "HEAD":
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))],
                                          end_stream=True)
                    else:
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                        conn.send_data(event.stream_id, body, end_stream=True)
                elif isinstance(event, h2.events.StreamReset):
                    streams.pop(event.stream_id, None)
            sock.sendall(conn.data_to_send())
    except (ConnectionResetError, BrokenPipeError, h2.exceptions.StreamClosedError) as error:
        write({"conn": conn_id, "event": "error", "detail": "transport: %s" % error})
    finally:
        write({"conn": conn_id, "event": "closed"})
        sock.close()


def serve_main(path):
    log = open(path, "a")
    lock = threading.Lock()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    conn_id = 0
    while True:
        sock, _ = listener.accept()
        conn_id += 1
        threading.Thread(target=serve_connection, args=(sock, conn_id, log, lock), daemon=True).start()


def run_item(port, requests):
    config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    conn.initiate_connection()
    statuses, pending, goaway = {}, set(), None
    try:
        for request in requests:
            stream_id = conn.get_next_available_stream_id()
            headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request["headers"]]
            body, trailers = request.get("body"), request.get("trailers")
            conn.send_headers(stream_id, headers, end_stream=body is None and trailers is None)
            if body is not None:
                conn.send_data(stream_id, body.encode("latin-1"), end_stream=trailers is None,
                               pad_length=request.get("pad"))
            if trailers is not None:
                conn.send_headers(stream_id, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in trailers],
                                  end_stream=True)
            pending.add(stream_id)
        sock.sendall(conn.data_to_send())
        while pending and goaway is None:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[str(event.stream_id)] = dict(event.headers).get(b":status", b"?").decode()
                elif isinstance(event, (h2.events.StreamEnded,)):
                    pending.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    statuses.setdefault(str(event.stream_id), "reset:%d" % event.error_code)
                    pending.discard(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event.error_code
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError) as error:
        statuses["error"] = str(error)
    finally:
        sock.close()
    return {"statuses": statuses, "goaway": goaway}


def client_main(port):
    items = json.load(sys.stdin)
    json.dump([run_item(port, item) for item in items], sys.stdout)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2])
    elif sys.argv[1:2] == ["client"]:
        client_main(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
