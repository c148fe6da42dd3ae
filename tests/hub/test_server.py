"""`hub serve`'s web server drops clients that send slower than its timeout (slowloris)."""

from __future__ import annotations

import socket
import threading

from flask import Flask

from hub.server import make_web_server


def test_a_client_sending_headers_slowly_is_disconnected():
    app = Flask("t")
    app.add_url_rule("/", "index", lambda: "ok")
    server = make_web_server("127.0.0.1", 0, app, timeout_s=0.5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            # the server closes the connection; without the timeout recv would hit the client's 10 s
            assert sock.recv(1024) == b""
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")  # a normal client is served
    finally:
        server.shutdown()
        thread.join(5)
