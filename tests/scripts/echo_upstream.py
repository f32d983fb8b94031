"""A TLS upstream for end-to-end tests: answers every request with JSON describing what it
received (method, path with query, headers), and appends the same to a log file so a test can
tell that a request never arrived. Prints its port, then serves until killed.

usage: echo_upstream.py CERT KEY LOG [PORT]
"""
import http.server
import json
import ssl
import sys

cert, key, log_path = sys.argv[1:4]
port = int(sys.argv[4]) if len(sys.argv) > 4 else 0


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "sni": getattr(self.connection, "server_hostname", None),
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


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Echo)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
