"""A TLS upstream for end-to-end tests: answers every request with JSON describing what it
received (method, path with query, headers, and the TLS server name the client sent, or null),
and appends the same to a log file so a test can tell that a request never arrived. One thread
per connection (the TLS handshake included), HTTP/1.1 keep-alive: several requests may share a
connection. Prints its port, then serves until killed.

usage: echo_upstream.py CERT KEY LOG [HOST [PORT]]
  HOST  the address to bind (default 127.0.0.1; an IPv6 address binds IPv6)
  PORT  the port (default 0: a free port)
"""
import http.server
import json
import socket
import ssl
import sys

cert, key, log_path = sys.argv[1:4]
host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
port = int(sys.argv[5]) if len(sys.argv) > 5 else 0


def remember_sni(tls_socket, server_name, _context):
    # Called during the handshake with the SSLSocket being accepted: keep the client's SNI on it.
    tls_socket.sni = server_name


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.sni_callback = remember_sni


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection is dropped after this many seconds.
    timeout = 60

    def read_body(self):
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)

    def handle_any(self):
        self.read_body()
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "sni": getattr(self.connection, "sni", None),
        }
        with open(log_path, "a") as log:
            log.write(json.dumps(seen) + "\n")
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_TRACE = handle_any

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def finish_request(self, request, client_address):
        # In the connection's own thread: a slow or failed handshake holds up no one else.
        try:
            conn = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except OSError:
            return
        try:
            conn.settimeout(Echo.timeout)
            conn.do_handshake()
            self.RequestHandlerClass(conn, client_address, self)
        except OSError:
            pass
        finally:
            conn.close()


server = Server((host, port), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
