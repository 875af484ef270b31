"""Security on real clusters: real processes, TCP on 127.0.0.1, TLS with a throw-away CA made by the `openssl`
command line.

- a node with the wrong cluster secret, or of another cluster, is refused with the reason logged on both
  sides and counted, and cannot join or disturb: the other two elect and commit;
- with TLS and a client token on, the cluster elects and commits, peers talk TLS, the client library and
  the CLI produce and consume through TLS with the token; a plain-TCP client, a client that does not trust
  the CA, and a client with no or a wrong token are refused, and the node keeps serving;
- the secret and the token appear in no log, no `shmraft-supervisor status --json`, no metrics, no node.json;
- the data directory (even one that existed with mode 0755) and node directories are 0700, the generated
  secret 0600, every shared-memory segment and semaphore 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from clusterkit import Harness, wait_for

from shmraft.client import Client, ShmraftError, Unauthorized
from shmraft.client.errors import ConnectionFailed
from shmraft.config import with_overrides
from shmraft.ipc import segments
from shmraft.ipc.state import StateBlockError
from shmraft.node.layout import NodeLayout
from shmraft.wire import client as cp

REPO = Path(__file__).resolve().parent.parent
EVENTS = 200
STARTUP_S = 60.0  # generous: the machine is shared; a cluster normally elects within a second or two


def _private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _logs(h: Harness) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(h.log_dir.glob("*.log")))


def _refusals(h: Harness, node_id: int) -> int:
    try:
        block = NodeLayout(h.config(node_id)).attach_state()
    except StateBlockError:
        return 0
    try:
        return int(block.node["peer_refusals"])
    finally:
        block.close()


def _port_base(h: Harness) -> int:
    return h.configs[0].me.client_port - 101


def _status_json(h: Harness) -> str:
    c = h.configs[0]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmraft.cli.supervisor",
            "status",
            "--json",
            "--data-dir",
            str(c.data_dir),
            "--port-base",
            str(_port_base(h)),
            "--cluster-id",
            c.cluster_id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip(), out.stderr
    return out.stdout


# --- a stranger cannot join ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stranger", ["wrong_secret", "other_cluster"])
def test_a_stranger_is_refused_on_both_sides_and_cannot_join(tmp_path: Path, stranger: str) -> None:
    h = Harness(tmp_path)
    if stranger == "wrong_secret":
        bad = with_overrides(h.configs[2], cluster_secret_file=str(_private(tmp_path / "wrong.secret", os.urandom(32))))
        ours, theirs = "does not match the cluster secret", "refused us: authentication failed"
    else:
        bad = with_overrides(h.configs[2], cluster_id=h.cluster_id + "x")
        ours = f"cluster id: expected '{h.cluster_id}', got '{h.cluster_id}x'"
        theirs = f"refused us: cluster id: expected '{h.cluster_id}'"
    h.configs[2] = bad  # the cluster's node 3 is replaced by the stranger (LocalCluster shares the list)
    try:
        h.cluster.start()
        leader = h.wait_leader(timeout_s=STARTUP_S)
        assert leader in (1, 2)
        with h.client() as client:
            offsets = client.produce_many([b"e%d" % i for i in range(EVENTS)])
            assert len(offsets) == EVENTS
            assert [r.value for r in islice(client.consume(0), EVENTS)] == [b"e%d" % i for i in range(EVENTS)]

        def refused_and_logged() -> bool:
            text = _logs(h)
            return _refusals(h, 1) + _refusals(h, 2) > 0 and ours in text and theirs in text

        wait_for(refused_and_logged, STARTUP_S, "the refusal counted and logged on both sides")
        s3 = h.state(3)
        assert s3 is not None and s3["leader_id"] == 0 and s3["commit_index"] == 0, s3  # never joined
        for n in (1, 2):
            s = h.state(n)
            assert s["leader_id"] == leader and s["commit_index"] > 0
        status = json.loads(_status_json(h))
        refused = {n["node_id"]: n.get("errors_by_kind", {}).get("peer_refused", 0) for n in status["nodes"]}
        assert refused[1] + refused[2] > 0, status
        if stranger == "wrong_secret":
            text = _logs(h)
            for secret_file in (h.configs[0].cluster_secret_file, bad.cluster_secret_file):
                secret = Path(secret_file).read_bytes()
                assert secret.hex() not in text and secret.decode("latin-1") not in text
    finally:
        h.stop()
        if stranger == "other_cluster":  # the stranger's own segments: its supervisor removed them on stop
            left = segments.list_names(segments.prefix_for(bad.cluster_id))
            assert left == ([], []), left


# --- TLS, a client token, secrets kept, permissions ---------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throw-away CA (EC P-256, one day): (certificate, key)."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_cert(directory: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by `ca`, good for server and client use."""
    ext = directory / f"{name}.ext"
    ext.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth, clientAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "1",
        "-extfile",
        str(ext),
        cwd=directory,
    )
    os.chmod(directory / f"{name}.key", 0o600)
    return directory / f"{name}.pem", directory / f"{name}.key"


TOKEN = b"tok-" + os.urandom(12).hex().encode()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, dict]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make the test CA")
    root = tmp_path_factory.mktemp("secure")
    pki = root / "pki"
    pki.mkdir()
    ca = make_ca(pki, "ca")
    cert, key = make_cert(pki, ca, "node")
    other_ca = make_ca(pki, "other-ca")
    token_file = _private(pki / "client.token", TOKEN + b"\n")
    data = root / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # an existing, too open data dir: the node must tighten it
    h = Harness(
        data, tls_cert_file=str(cert), tls_key_file=str(key), tls_ca_file=str(ca[0]), client_token_file=str(token_file)
    )
    h.client_options = {"tls_ca": str(ca[0]), "token": TOKEN}
    files = {"ca": ca[0], "other_ca": other_ca[0], "token_file": token_file}
    try:
        h.start()
        yield h, files
    finally:
        h.stop()


def test_tls_cluster_elects_and_commits_with_auth_tls_and_token(secure) -> None:
    h, _ = secure
    with h.client() as client:
        values = [b"secure-%d" % i for i in range(EVENTS)]
        offsets = client.produce_many(values)
        assert len(offsets) == EVENTS
        got = [(r.offset, r.value) for r in islice(client.consume(offsets[0]), EVENTS)]
        assert got == list(zip(offsets, values, strict=True))
    h.wait_commit_equal(timeout_s=STARTUP_S)
    text = _logs(h)
    assert "CONSENSUS channel: peer" in text and "authenticated (TLS)" in text  # peers speak TLS
    assert "DATA channel" in text


def test_plain_tcp_and_untrusting_clients_are_refused(secure) -> None:
    h, files = secure
    plain = Client(h.addresses, timeout_s=3.0, token=TOKEN)  # no TLS
    with pytest.raises(ShmraftError):
        plain.metadata()
    with pytest.raises(ConnectionFailed, match="certificate"):
        Client(h.addresses, tls_ca=files["other_ca"], token=TOKEN, timeout_s=3.0)._connect(time.monotonic() + 3.0)
    # raw bytes of the client protocol at a TLS port get no answer in the clear: the connection just ends
    with socket.create_connection(("127.0.0.1", h.configs[0].me.client_port), timeout=10) as s:
        s.sendall(cp.encode_metadata(1))
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # the node closed with our request unread
        assert not data.startswith(cp.CLIENT_MAGIC.to_bytes(2, "little")), data  # at most a TLS alert
    wait_for(lambda: "TLS handshake failed" in _logs(h), 30, "the node logging the failed TLS handshake")
    with h.client() as client:  # still serving
        assert client.produce(b"after-plain") >= 0


def test_client_token_is_required_and_checked(secure) -> None:
    h, files = secure
    for token in (None, b"wrong-token"):
        c = Client(h.addresses, tls_ca=files["ca"], token=token, timeout_s=5.0)
        with pytest.raises(Unauthorized, match="UNAUTHORIZED"):
            c.metadata()
    with Client(h.addresses, tls_ca=files["ca"], token=b"wrong-token", timeout_s=5.0) as c, c.producer() as producer:
        future = producer.send(b"never")
        with pytest.raises(Unauthorized):
            future.result(timeout=30)
    with h.client() as client:  # the node keeps serving the others
        offset = client.produce(b"with-token")
        assert [r.value for r in islice(client.consume(offset), 1)] == [b"with-token"]
    wait_for(
        lambda: "wrong token" in _logs(h) and "METADATA before AUTH" in _logs(h),
        30,
        "the refusals logged (without the token)",
    )


def test_cli_uses_token_file_and_ca(secure) -> None:
    h, files = secure
    env = {**os.environ, "SHMRAFT_TOKEN_FILE": str(files["token_file"])}
    base = [
        sys.executable,
        "-m",
        "shmraft.cli.client",
        "--addresses",
        ",".join(h.addresses),
        "--tls-ca",
        str(files["ca"]),
        "--timeout",
        "20",
    ]
    out = subprocess.run([*base, "produce", "from-cli"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    offset = int(out.stdout.split()[0])
    out = subprocess.run(
        [*base, "consume", "--from", str(offset), "--max", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0 and json.loads(out.stdout) == {"offset": offset, "value": "from-cli"}, out.stderr
    bad = _private(Path(files["token_file"]).parent / "bad.token", b"nope")
    out = subprocess.run([*base, "--token-file", str(bad), "leader"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "UNAUTHORIZED" in out.stderr, out.stderr


def test_secrets_appear_in_no_log_status_metrics_or_config_dump(secure) -> None:
    h, _ = secure
    secret = Path(h.configs[0].cluster_secret_file).read_bytes()
    assert len(secret) == 32
    metrics = "".join(
        urllib.request.urlopen(f"http://127.0.0.1:{c.me.metrics_port}/metrics", timeout=10).read().decode()
        for c in h.configs
    )
    node_json = "".join((c.node_dir / "node.json").read_text() for c in h.configs)
    reprs = "".join(repr(c) for c in h.configs)
    for where, text in (
        ("logs", _logs(h)),
        ("status --json", _status_json(h)),
        ("metrics", metrics),
        ("node.json", node_json),
        ("config repr", reprs),
    ):
        for needle in (secret.hex(), secret.decode("latin-1"), TOKEN.decode()):
            assert needle not in text, f"a secret in {where}"
        assert len(text) > 100, where


def test_data_dir_secret_and_shared_memory_are_private(secure) -> None:
    h, _ = secure
    data_dir = h.configs[0].data_dir
    assert _mode(data_dir) == 0o700  # it existed as 0755: tightened, not just mkdir'd
    assert all(_mode(c.node_dir) == 0o700 for c in h.configs)
    assert _mode(h.configs[0].cluster_secret_file) == 0o600
    segs, sems = segments.list_names(segments.prefix_for(h.cluster_id))
    assert len(segs) >= 3 and len(sems) >= 3
    for name in segs:
        assert _mode(segments.DEV_SHM / name.lstrip("/")) == 0o600, name
    for name in sems:
        assert _mode(segments.DEV_SHM / f"sem.{name.lstrip('/')}") == 0o600, name


def test_supervisor_refuses_a_secret_file_others_can_read(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(os.urandom(32))
    os.chmod(secret, 0o644)
    conf = tmp_path / "one.toml"
    conf.write_text(
        (REPO / "conf" / "three-hosts.toml")
        .read_text()
        .replace('"/etc/shmraft/cluster.secret"', json.dumps(str(secret)))
        .replace('"0.0.0.0"', '"127.0.0.1"')
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmraft.cli.supervisor",
            "up",
            "--config",
            str(conf),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert str(secret) in out.stderr and "mode 0644" in out.stderr and secret.read_bytes().hex() not in out.stderr


# --- limits ------------------------------------------------------------------------------------------------------


def _answer(sock: socket.socket, timeout_s: float = 10.0) -> cp.Message | None:
    """The first message the node sends on `sock`, None if it closes without one."""
    reader = cp.MessageReader()
    sock.settimeout(timeout_s)
    while (msg := reader.next_message()) is None:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        reader.feed(data)
    return msg


def test_connection_request_and_peer_inbound_limits_are_enforced(tmp_path: Path) -> None:
    h = Harness(tmp_path, client_connections_max=3, client_request_bytes_max=64 * 1024, peer_inbound_connections_max=6)
    held: list[socket.socket] = []
    try:
        h.start()
        leader = h.wait_leader(timeout_s=STARTUP_S)
        port = h.config(leader).me.client_port
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(cp.encode_metadata(1))
            assert isinstance(_answer(s), cp.MetadataAnswer)
            held.append(s)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:  # one past the limit
            msg = _answer(extra)
            assert isinstance(msg, cp.Error) and msg.code is cp.ErrorCode.UNAVAILABLE, msg
            assert "client_connections_max" in msg.message or "too many connections" in msg.message
        big = cp.encode_produce(7, 1, 0, 1000, [b"x" * (64 * 1024)])
        held[0].sendall(big)
        msg = _answer(held[0])
        assert isinstance(msg, cp.Error) and msg.code is cp.ErrorCode.MALFORMED and "body_len" in msg.message, msg
        assert _answer(held[0]) is None  # and disconnected
        held.pop(0).close()
        strangers = []  # the raft port holds at most 6 inbound connections (2 of them the members')
        for _ in range(12):
            strangers.append(socket.create_connection(("127.0.0.1", h.config(leader).me.raft_port), timeout=10))
        closed = 0
        for s in strangers:
            s.settimeout(1.0)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
            s.close()
        assert closed >= 12 - 6 + 2, closed
        with h.client() as client:  # the node kept serving through all of it
            assert client.produce(b"after the limits") >= 0
        wait_for(
            lambda: "client_connections_max" in _logs(h) and "peer_inbound_connections_max" in _logs(h),
            30,
            "the limits logged by name",
        )
    finally:
        for s in held:
            s.close()
        h.stop()
