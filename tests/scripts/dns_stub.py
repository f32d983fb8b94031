"""A DNS server for end-to-end tests: answers every A query with 127.0.0.1 (so that names like
api.openai.com reach the test upstream on this machine), every other query with no records.
UDP and TCP on 127.0.0.1. Prints its port, then serves until killed.

usage: dns_stub.py [PORT]   (0 or nothing: a free port)
"""
import socket
import struct
import sys
import threading


def answer(query: bytes) -> bytes:
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    # Walk the question name.
    i = 12
    while query[i] != 0:
        i += query[i] + 1
    qtype, qclass = struct.unpack("!HH", query[i + 1:i + 5])
    question = query[12:i + 5]
    rd = flags & 0x0100
    is_a = qtype == 1 and qclass == 1
    header = struct.pack("!HHHHHH", ident, 0x8080 | rd, 1, 1 if is_a else 0, 0, 0)
    body = question
    if is_a:
        body += struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
    return header + body


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(data), peer)
        except Exception:
            pass


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        try:
            length = struct.unpack("!H", conn.recv(2))[0]
            data = b""
            while len(data) < length:
                data += conn.recv(length - len(data))
            reply = answer(data)
            conn.sendall(struct.pack("!H", len(reply)) + reply)
        except Exception:
            pass
        finally:
            conn.close()


port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
port = udp.getsockname()[1]
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen(16)
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print(port, flush=True)
serve_udp(udp)
