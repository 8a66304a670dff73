"""An idle keep-alive connection outlives the clients' own idle limit.

httpx and requests drop a pooled connection after 5 s idle; so did uvicorn's server side, so a
request sent on a connection idle for about 5 s could cross the server's close and come back
as "Server disconnected without sending a response" (seen once in 300 submissions of the
billing crash test). The services keep an idle connection for `KILN_HTTP_KEEP_ALIVE_S` (65 s),
so the client's side always closes first.
"""

import socket
import time
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e


def ask(sock: socket.socket, host: str) -> bytes:
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection (got {answer!r})"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        body += chunk
    return head.split(b"\r\n", 1)[0]


def test_a_connection_idle_past_the_clients_limit_still_answers(stack: dict[str, str]) -> None:
    url = urlsplit(stack["KILN_API_URL"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    with socket.create_connection((host, port), timeout=10) as sock:
        assert ask(sock, host).startswith(b"HTTP/1.1 200")
        time.sleep(6.0)  # past httpx's and requests' 5 s, and uvicorn's default
        assert ask(sock, host).startswith(b"HTTP/1.1 200")
