"""A byte-counting TCP proxy: 127.0.0.1:LISTEN -> 127.0.0.1:TARGET.

Usage: tcp_count.py LISTEN TARGET OUT_JSON_LINES

Forwards every connection unchanged and, when a connection closes (or on SIGTERM for those
still open; SIGUSR1 for a snapshot of the open ones), appends one JSON line to OUT_JSON_LINES:
    {"conn": N, "up": BYTES_CLIENT_TO_SERVER, "down": BYTES_SERVER_TO_CLIENT, "open": bool}
Bytes are TCP payload (what MQTT puts on the wire above TCP/IP headers). Never changes a
byte; exits on SIGTERM.
"""

import json
import signal
import socket
import sys
import threading

LISTEN, TARGET, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
conns = {}


def record(n, final):
    with lock:
        c = conns.pop(n, None)
        if c is None:
            return
        with open(OUT, "a") as f:
            f.write(json.dumps({"conn": n, "up": c["up"], "down": c["down"], "open": not final}) + "\n")


def pump(n, src, dst, key):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                if n in conns:
                    conns[n][key] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(n, client):
    upstream = socket.create_connection(("127.0.0.1", TARGET))
    with lock:
        conns[n] = {"up": 0, "down": 0}
    t = threading.Thread(target=pump, args=(n, upstream, client, "down"), daemon=True)
    t.start()
    pump(n, client, upstream, "up")
    t.join()
    record(n, True)


def stop(*_):
    for n in list(conns):
        record(n, False)
    sys.exit(0)


def snapshot(*_):
    with lock:
        with open(OUT, "a") as f:
            for n, c in conns.items():
                f.write(json.dumps({"conn": n, "up": c["up"], "down": c["down"], "open": True}) + "\n")


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, snapshot)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", LISTEN))
srv.listen(64)
n = 0
while True:
    client, _ = srv.accept()
    n += 1
    threading.Thread(target=serve, args=(n, client), daemon=True).start()
