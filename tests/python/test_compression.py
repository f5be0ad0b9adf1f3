"""Vane's compressed answers as Python's own decoders read them (issue 19).

A real ``vane control-plane`` and ``vane proxy`` (``VANE_BIN``), an upstream from
``http.server`` serving a page of text, a config with a ``compressions`` resource applied
with ``vane apply``; then each encoding is asked for and decoded with ``gzip``,
``brotli`` and ``zstandard`` (the C libraries' bindings, written neither here nor in the
Rust crates Vane uses). Every server binds 127.0.0.1:0; waits poll with a deadline.
"""

import gzip
import http.client
import http.server
import json
import os
import pathlib
import re
import subprocess
import threading
import time

import brotli
import pytest
import zstandard

from test_error_details import readiness_line, vane_binary

PAGE = "".join(f"<li>item {i}: a line that repeats with its number</li>\n" for i in range(2000)).encode()


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.send_header("ETag", '"page-1"')
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


def start(args, pattern):
    process = subprocess.Popen(
        [str(vane_binary()), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "VANE_TOKEN"},
    )
    line = readiness_line(process, deadline=time.monotonic() + 20)
    found = re.match(pattern, line)
    assert found, f"unexpected readiness line: {line!r}"
    return process, found.group(1)


def get(address, path, headers):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The node's `web` listener address, serving a compressing route to the upstream."""
    tmp = tmp_path_factory.mktemp("compression")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    processes = []
    try:
        cp, address = start(
            ["control-plane", "--data-dir", str(tmp / "store"), "--listen", "127.0.0.1:0"],
            r"vane control-plane listening on (\S+)",
        )
        processes.append(cp)
        config = tmp / "config.yaml"
        config.write_text(
            "listeners:\n  - {name: web, address: '127.0.0.1:0'}\n"
            f"clusters:\n  - {{name: up, endpoints: [{{address: '127.0.0.1:{upstream.server_port}'}}]}}\n"
            "compressions:\n  - {name: text, brotli_level: 5}\n"
            "routes:\n  - {name: all, match: {prefix: /}, forward: {clusters: [{name: up}]}, compression: text}\n"
        )
        server = f"http://{address}"
        applied = subprocess.run(
            [str(vane_binary()), "--server", server, "apply", "-f", str(config)], capture_output=True, timeout=30
        )
        assert applied.returncode == 0, applied.stderr
        proxy, admin = start(
            ["proxy", "--control-plane", server, "--node-id", "py", "--admin", "127.0.0.1:0"],
            r"vane proxy py admin on (\S+)",
        )
        processes.append(proxy)
        deadline = time.monotonic() + 10
        while True:
            try:
                _, _, body = get(admin, "/config", {})
                listeners = json.loads(body).get("listeners", {})
                if "web" in listeners:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "the node never served the config"
            time.sleep(0.05)
        yield listeners["web"]
    finally:
        for p in reversed(processes):
            p.terminate()
            p.wait(timeout=20)
        upstream.shutdown()


@pytest.mark.parametrize(
    "encoding, decode",
    [
        ("gzip", gzip.decompress),
        ("br", brotli.decompress),
        ("zstd", lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)),
    ],
)
def test_each_encoding_decodes_with_pythons_decoder(web, encoding, decode):
    status, headers, body = get(web, "/page", {"Accept-Encoding": encoding})
    assert status == 200
    assert headers["Content-Encoding"] == encoding
    assert "Content-Length" not in headers
    assert headers["ETag"] == 'W/"page-1"'
    assert headers["Vary"] == "accept-encoding"
    assert len(body) < len(PAGE) // 5
    assert decode(body) == PAGE


def test_q_values_pick_and_identity_is_left_alone(web):
    _, headers, body = get(web, "/page", {"Accept-Encoding": "gzip;q=0.9, br;q=0.2, zstd;q=0.5"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == PAGE
    _, headers, body = get(web, "/page", {"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers
    assert body == PAGE
    assert headers["ETag"] == '"page-1"'
