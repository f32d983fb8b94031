"""A DNS server for end-to-end tests: answers every A query with one IPv4 address, 127.0.0.1
unless told otherwise (so that names like api.openai.com reach the test upstream on this
machine), every other query with no records. UDP and TCP on 127.0.0.1. Prints its port, then
serves until killed.

usage: dns_stub.py [PORT [ADDRESS]]
  PORT     0 or nothing: a free port
  ADDRESS  the IPv4 address every A answer carries (default 127.0.0.1)
"""
import socket
import struct
import sys
import threading

port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
address = socket.inet_pton(socket.AF_INET, sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")


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
        body += struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + address
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


def bind_both(port):
    """A UDP and a TCP socket on one port: with port 0, the first free UDP port whose TCP twin
    is free too (another process may hold the TCP one)."""
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))
        chosen = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", chosen))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        return udp, tcp, chosen
    raise SystemExit("dns_stub: no port free for both UDP and TCP")


udp, tcp, port = bind_both(port)
tcp.listen(16)
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print(port, flush=True)
serve_udp(udp)
