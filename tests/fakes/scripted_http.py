"""A raw HTTP/1.1 server that answers each request with the next scripted bytes: for the tests of our
small HTTP clients (what they must read, which connections they must not reuse)."""

from __future__ import annotations

import socket
import threading


class ScriptedServer:
    """Answers each request with the next scripted raw answer; `close_after` closes the connection after it."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head + body)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn, self.connections), daemon=True).start()

    def _talk(self, conn: socket.socket, number: int) -> None:
        rfile = conn.makefile("rb")
        with conn:
            if not self.answers:  # nothing scripted: hold the connection open without answering
                rfile.read()
                return
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = rfile.readline()
                    if not line:
                        return
                    head += line
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                self.requests.append((number, head + rfile.read(length)))
                answer, close_after = self.answers.pop(0)
                conn.sendall(answer)
                if close_after:
                    return

    def close(self) -> None:
        self.sock.close()
