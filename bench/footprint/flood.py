"""Publishes one Login frame N times, each from a distinct agent id, over plain MQTT 3.1.1.

Usage: flood.py PORT PREFIX CLUSTER PAYLOAD_HEX N METRICS_URL [MAX_LAG]

Topic of message i: PREFIX/CLUSTER/agents/flood-<i>/login (QoS 0, the payload unchanged).
Nobody answers the Challenges, so each accepted Login leaves one pending session. Paced by
the server: after every 1,000 messages it waits until attestation_sessions_active is within
MAX_LAG (default 5,000) of the number sent, so the broker never drops a queued message.
Prints `sent N` and `active A` when done. Standard library only.
"""

import socket
import sys
import time
import urllib.request


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body


def s16(b):
    return len(b).to_bytes(2, "big") + b


def active(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("attestation_sessions_active "):
            return int(float(line.split()[1]))
    raise SystemExit("attestation_sessions_active missing from " + url)


def main():
    port, prefix, cluster, payload = int(sys.argv[1]), sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
    n, url = int(sys.argv[5]), sys.argv[6]
    max_lag = int(sys.argv[7]) if len(sys.argv) > 7 else 5000
    s = socket.create_connection(("127.0.0.1", port))
    connect = s16(b"MQTT") + bytes([4, 0x02]) + (600).to_bytes(2, "big") + s16(b"ekattest-flood")
    s.sendall(packet(0x10, connect))
    ack = s.recv(4)
    if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
        raise SystemExit(f"CONNACK refused: {ack.hex()}")
    start = time.time()
    for i in range(n):
        topic = f"{prefix}/{cluster}/agents/flood-{i}/login".encode()
        s.sendall(packet(0x30, s16(topic) + payload))
        if (i + 1) % 1000 == 0:
            waited = time.time()
            while active(url) < i + 1 - max_lag and time.time() - waited < 60:
                time.sleep(0.05)
    # Wait for the server to catch up; stop if it makes no progress for 10 s.
    last, since = -1, time.time()
    while (a := active(url)) < n and time.time() - since < 10:
        if a != last:
            last, since = a, time.time()
        time.sleep(0.2)
    s.sendall(packet(0xE0, b""))
    s.close()
    print(f"sent {n} in {time.time() - start:.1f} s")
    print(f"active {active(url)}")


if __name__ == "__main__":
    main()
