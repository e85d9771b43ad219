"""The sandbox's own HTTP/1.1 server, spoken to byte by byte: keep-alive, pipelining, chunked
bodies, ``Connection: close``, HTTP/1.0 and malformed requests."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from narrative_pandas.sandbox import Sandbox

BODY_OBJECT = {
    "model": "anthropic.claude-haiku-4.5",
    "messages": [{"role": "user", "text": "Say hi."}],
    "inference_config": {"output_format_schema": {"type": "object"}},
}


def connect(sandbox: Sandbox) -> socket.socket:
    where = urlsplit(sandbox.base_url)
    assert where.hostname is not None and where.port is not None
    return socket.create_connection((where.hostname, where.port), timeout=10)


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` answers with a Content-Length or chunked body, read off one connection."""
    buffer = b""
    answers = []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            assert data, "the server closed the connection early"
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers:
            size = int(headers["content-length"])
            while len(buffer) < size:
                buffer += sock.recv(65536)
            body, buffer = buffer[:size], buffer[size:]
        else:
            assert headers.get("transfer-encoding") == "chunked"
            body = b""
            while True:
                while b"\r\n" not in buffer:
                    buffer += sock.recv(65536)
                size_line, _, buffer = buffer.partition(b"\r\n")
                size = int(size_line, 16)
                while len(buffer) < size + 2:
                    buffer += sock.recv(65536)
                body += buffer[:size]
                buffer = buffer[size + 2 :]
                if size == 0:
                    break
        answers.append((status, headers, body))
    return answers


def request(sandbox: Sandbox, method: str, path: str, body: bytes = b"", **extra: str) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Authorization": f"Bearer {sandbox.api_key}",
        **({"Content-Length": str(len(body))} if body else {}),
        **extra,
    }
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def run_body(sandbox: Sandbox, text: str = "Say hi.") -> bytes:
    body = {**BODY_OBJECT, "data_plane_id": sandbox.data_plane_id}
    body["messages"] = [{"role": "user", "text": text}]
    return json.dumps(body).encode()


class TestWire:
    """What a client sees on the wire from the sandbox's own HTTP/1.1 server."""

    def test_pipelined_requests_are_answered_in_order(self, sandbox: Sandbox) -> None:
        """Three requests written at once on one connection: three answers, in order."""
        with connect(sandbox) as sock:
            sock.sendall(
                request(sandbox, "POST", "/model-inference/run", run_body(sandbox, "a"))
                + request(sandbox, "GET", "/jobs?per_page=5")
                + request(sandbox, "GET", "/jobs/nope")
            )
            answers = read_answers(sock, 3)
        assert [status for status, _, _ in answers] == [200, 200, 404]
        assert "job_id" in json.loads(answers[0][2])
        assert len(json.loads(answers[1][2])["records"]) == 1
        assert sandbox.stats.jobs_created == 1
        assert sandbox.stats.count("GET", "/jobs", 200) == 1

    def test_chunked_request_body(self, sandbox: Sandbox) -> None:
        """A POST body sent chunked is read whole: the job is created."""
        payload = run_body(sandbox)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:])
        )
        raw = request(sandbox, "POST", "/model-inference/run", **{"Transfer-Encoding": "chunked"})
        with connect(sandbox) as sock:
            sock.sendall(raw + chunks + b"0\r\n\r\n")
            [(status, _, body)] = read_answers(sock, 1)
        assert status == 200 and "job_id" in json.loads(body)
        assert sandbox.stats.jobs_created == 1

    def test_answer_head_and_body_in_one_piece(self, sandbox: Sandbox) -> None:
        """An answer carries its length and a Date header (the client reads the server's clock
        from it) and keeps the connection open."""
        with connect(sandbox) as sock:
            sock.sendall(request(sandbox, "GET", "/jobs"))
            [(status, headers, body)] = read_answers(sock, 1)
            sock.sendall(request(sandbox, "GET", "/jobs"))
            [(again, _, _)] = read_answers(sock, 1)
        assert status == again == 200
        assert int(headers["content-length"]) == len(body)
        assert headers["date"].endswith("GMT")
        assert "connection" not in headers

    def test_connection_close_and_http_10(self, sandbox: Sandbox) -> None:
        """``Connection: close`` and an HTTP/1.0 request are answered, then the server hangs up."""
        for raw in (
            request(sandbox, "GET", "/jobs", Connection="close"),
            request(sandbox, "GET", "/jobs").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        ):
            with connect(sandbox) as sock:
                sock.sendall(raw)
                [(status, headers, _)] = read_answers(sock, 1)
                assert sock.recv(1) == b""  # closed
            assert status == 200 and headers["connection"] == "close"

    def test_malformed_request_is_refused(self, sandbox: Sandbox) -> None:
        """A request line that is not HTTP gets 400 and a closed connection; nothing counted."""
        with connect(sandbox) as sock:
            sock.sendall(b"HELLO\r\n\r\n")
            [(status, _, _)] = read_answers(sock, 1)
            assert sock.recv(1) == b""
        assert status == 400
        assert sandbox.stats.requests == 0

    def test_streamed_answer_is_chunked(self, sandbox: Sandbox) -> None:
        """A dripped listing (no length known up front) goes out chunked and arrives whole."""
        sandbox.configure(listing_drip=100_000.0)
        with connect(sandbox) as sock:
            sock.sendall(request(sandbox, "GET", "/jobs"))
            [(status, headers, body)] = read_answers(sock, 1)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert json.loads(body)["records"] == []
