"""The plumbing of the local stand-ins for providers' APIs: an HTTP server on 127.0.0.1 (a
port of its own) that checks the bearer token, records every request and answers JSON
from the subclass's `route`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeAPI:
    token = "test-token"
    unauthorized: tuple[int, dict] = (401, {})

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, body)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                fake.requests.append((self.command, url.path, body))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    status, answer = fake.unauthorized
                else:
                    status, answer = fake.route(self.command, url.path, parse_qs(url.query), body)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if answer is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict | None]:
        raise NotImplementedError
