"""Interop with an independent, strict WebSocket client: Python `websockets`.

`websockets` checks masking, UTF-8 in text frames, reserved bits and close codes
on its own, so a frame feedgate gets subtly wrong fails here even when the Rust
tests (tungstenite) accept it.

By default the module starts its own redis-server and feedgate
(`target/debug/feedgate`, or FEEDGATE_BIN; build it first with
`cargo build -p feedgate-server`). To test running servers instead set
FEEDGATE_URL (`ws://127.0.0.1:PORT` or `.../ws`) and REDIS_PORT; that server must
use the test configuration (channels starting with `ps.` are pub/sub).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO = pathlib.Path(__file__).resolve().parents[2]
READ_TIMEOUT = 10
STARTUP_TIMEOUT = 30
CONFIG = '[[namespaces]]\nprefix = "ps."\nsource = "pubsub"\n'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, ready, timeout=STARTUP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def redis_answers(r):
    try:
        return r.ping()
    except redis.RedisError:
        return False


class Servers:
    def __init__(self, ws_url, redis_client):
        self.ws_url = ws_url
        self.redis = redis_client

    def connect(self):
        # proxy=None: loopback only, whatever proxy the environment names.
        return connect(self.ws_url, open_timeout=READ_TIMEOUT, proxy=None)


@pytest.fixture(scope="module")
def servers():
    url, redis_port = os.environ.get("FEEDGATE_URL"), os.environ.get("REDIS_PORT")
    if url and redis_port:
        url = url.rstrip("/")
        yield Servers(url if url.endswith("/ws") else url + "/ws", redis.Redis(port=int(redis_port)))
        return

    binary = pathlib.Path(os.environ.get("FEEDGATE_BIN", REPO / "target" / "debug" / "feedgate"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: run `cargo build -p feedgate-server` first")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="feedgate-interop-"))
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=open(tmp / "redis.log", "wb"), stderr=subprocess.STDOUT))
        r = redis.Redis(port=rport, socket_timeout=READ_TIMEOUT)
        wait_until("redis-server", lambda: redis_answers(r))

        (tmp / "feedgate.toml").write_text(CONFIG)
        fport = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDGATE_")}
        stderr_path = tmp / "feedgate.stderr"
        procs.append(subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{fport}", "--redis", f"redis://127.0.0.1:{rport}",
             "--cores", "2", "--config", str(tmp / "feedgate.toml")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "wb")))

        def ready():
            if procs[-1].poll() is not None:
                raise AssertionError("feedgate exited:\n" + stderr_path.read_text(errors="replace"))
            return http_status(f"http://127.0.0.1:{fport}/readyz") == 200

        wait_until("feedgate /readyz", ready)
        yield Servers(f"ws://127.0.0.1:{fport}/ws", r)
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def request(ws, op):
    ws.send(json.dumps(op))
    return json.loads(ws.recv(timeout=READ_TIMEOUT))


def recv_text(ws):
    frame = ws.recv(timeout=READ_TIMEOUT)
    assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
    return frame


def test_replies(servers):
    with servers.connect() as ws:
        assert request(ws, {"op": "ping", "req": 1}) == {"type": "pong", "req": 1}
        assert request(ws, {"op": "subscribe", "channel": "ps.py.replies", "req": 2}) == {
            "type": "subscribed", "channel": "ps.py.replies", "req": 2}
        reply = request(ws, {"op": "dance", "req": 3})
        assert (reply["type"], reply["code"], reply["req"]) == ("error", "unknown_op", 3)


def test_deliveries_are_byte_exact(servers):
    r = servers.redis
    with servers.connect() as ws:
        for ch in ("py.stream", "ps.py"):
            assert request(ws, {"op": "subscribe", "channel": ch, "req": 1})["type"] == "subscribed"

        entry_id = r.xadd("py.stream", {"data": '{"px":101.5,"qty":3}'}).decode()
        assert recv_text(ws) == '{"ch":"py.stream","id":"%s","data":{"px":101.5,"qty":3}}' % entry_id

        entry_id = r.xadd("py.stream", {"px": "101.5", "qty": "3"}).decode()
        assert recv_text(ws) == '{"ch":"py.stream","id":"%s","data":{"px":"101.5","qty":"3"}}' % entry_id

        entry_id = r.xadd("py.stream", {"data": b'say "hi"\n\xff'}).decode()
        assert recv_text(ws) == '{"ch":"py.stream","id":"%s","data":"say \\"hi\\"\\n\ufffd"}' % entry_id

        r.publish("ps.py", '[1, "two"]')
        assert recv_text(ws) == '{"ch":"ps.py","data":[1, "two"]}'
        r.publish("ps.py", "plain text")
        assert recv_text(ws) == '{"ch":"ps.py","data":"plain text"}'


def expect_close(ws, code):
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=READ_TIMEOUT)
    assert closed.value.rcvd is not None, "connection ended without a close frame"
    assert closed.value.rcvd.code == code


def test_binary_frame_is_closed_with_1003(servers):
    with servers.connect() as ws:
        ws.send(b'{"op":"ping","req":1}')
        expect_close(ws, 1003)


def test_oversized_frame_is_closed_with_1009(servers):
    with servers.connect() as ws:
        ws.send('{"op":"ping","pad":"%s"}' % ("x" * 70000))
        expect_close(ws, 1009)
