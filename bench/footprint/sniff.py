"""Records every message on a plain MQTT 3.1.1 broker: subscribes to `#` at QoS 0.

Usage: sniff.py PORT OUT_JSON_LINES COUNT

Writes one JSON line per PUBLISH received, {"topic": ..., "len": PAYLOAD_BYTES, "hex": ...},
and exits after COUNT messages (or on SIGTERM). Creates OUT_JSON_LINES.ready once subscribed. Standard library only.
"""

import json
import socket
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    return len(b).to_bytes(2, "big") + b


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("broker closed the connection")
        buf += chunk
    return buf


def read_packet(s):
    kind = read_exact(s, 1)[0]
    length, mult = 0, 1
    while True:
        b = read_exact(s, 1)[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return kind, read_exact(s, length)


def main():
    port, out, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    s = socket.create_connection(("127.0.0.1", port))
    body = s16(b"MQTT") + bytes([4, 0x02]) + (600).to_bytes(2, "big") + s16(b"ekattest-sniff")
    s.sendall(bytes([0x10]) + varint(len(body)) + body)
    read_packet(s)  # CONNACK
    sub = (1).to_bytes(2, "big") + s16(b"#") + bytes([0])
    s.sendall(bytes([0x82]) + varint(len(sub)) + sub)
    read_packet(s)  # SUBACK
    open(out + ".ready", "w").close()
    seen = 0
    with open(out, "a") as f:
        while seen < count:
            kind, body = read_packet(s)
            if kind >> 4 != 3:
                continue
            tlen = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + tlen].decode()
            payload = body[2 + tlen + (2 if kind & 0x06 else 0) :]
            f.write(json.dumps({"topic": topic, "len": len(payload), "hex": payload.hex()}) + "\n")
            f.flush()
            seen += 1


if __name__ == "__main__":
    main()
