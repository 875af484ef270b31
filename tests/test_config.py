"""Configuration: the shipped files load, bad values are refused with the key named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shmraft.config import CLUSTER_SECRET_FILE_ENV, ConfigError, NodeConfig, load, local_cluster, local_members
from shmraft.net.auth import Secret, ensure_local_secret, is_local_secret, read_cluster_secret, read_token

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_shipped_configs_load() -> None:
    local = load(CONF / "local.toml", node_id=2)
    assert [m.client_port for m in local.members] == [7101, 7201, 7301]
    assert local.me.raft_port == 7203 and local.fsync == "always"
    hosts = load(CONF / "three-hosts.toml")
    assert hosts.node_id == 1 and hosts.bind_host == "0.0.0.0" and len(hosts.peers) == 2
    assert hosts.cluster_secret_file == "/etc/shmraft/cluster.secret" and not hosts.tls_enabled


def test_local_cluster_matches_local_toml(tmp_path: Path) -> None:
    nodes = local_cluster(tmp_path)
    assert nodes[0].members == load(CONF / "local.toml", node_id=1).members
    assert nodes[2].node_dir == tmp_path / "node3"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[cluster]\nmembers = []\n", "cluster.members"),
        ("[cluster]\nmembers = [{ id = 1, host = 'h' }]\n[node]\nid = 1\n", "cluster.members[0]"),
        (
            "[cluster]\nmembers = [{ id = 1, host = 'h', client_port = 1, data_port = 2, raft_port = 3, "
            "metrics_port = 4 }]\n[node]\nid = 2\n",
            "node_id",
        ),
        (
            "[cluster]\nmembers = [{ id = 1, host = 'h', client_port = 1, data_port = 2, raft_port = 3, "
            "metrics_port = 4 }]\n[node]\nid = 1\nfsync = 'sometimes'\n",
            "fsync",
        ),
        (
            "[cluster]\nmembers = [{ id = 1, host = 'h', client_port = 1, data_port = 2, raft_port = 3, "
            "metrics_port = 4 }]\n[node]\nid = 1\nbatch_size = 3\n",
            "unknown keys",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load(path)


_ONE = (
    "[cluster]\nmembers = [{ id = 1, host = 'h', client_port = 1, data_port = 2, raft_port = 3, "
    "metrics_port = 4 }]\n[node]\nid = 1\n"
)


def test_a_toml_config_must_name_a_cluster_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLUSTER_SECRET_FILE_ENV, raising=False)
    path = tmp_path / "c.toml"
    path.write_text(_ONE)
    with pytest.raises(ConfigError, match=r"cluster_secret_file.*head -c 32 /dev/urandom"):
        load(path)
    monkeypatch.setenv(CLUSTER_SECRET_FILE_ENV, str(tmp_path / "from-env"))
    assert load(path).cluster_secret_file == str(tmp_path / "from-env")
    path.write_text(_ONE + "cluster_secret_file = 'named'\n")
    assert load(path).cluster_secret_file == "named"  # the file's key wins over the environment


def test_tls_keys_come_all_three_or_none(tmp_path: Path) -> None:
    members = local_members(1)
    with pytest.raises(ConfigError, match="tls_ca_file, tls_key_file"):
        NodeConfig(node_id=1, members=members, data_dir=tmp_path, tls_cert_file="c.pem")
    full = NodeConfig(
        node_id=1, members=members, data_dir=tmp_path, tls_cert_file="c", tls_key_file="k", tls_ca_file="ca"
    )
    assert full.tls_enabled


@pytest.mark.parametrize(
    "key",
    [
        "peer_inbound_connections_max",
        "peer_handshake_timeout_ms",
        "client_connections_max",
        "client_request_bytes_max",
        "client_inflight_bytes_max",
    ],
)
def test_limits_must_be_positive(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        NodeConfig(node_id=1, members=local_members(1), data_dir=tmp_path, **{key: 0})


def test_defaults_bind_loopback_and_local_cluster_shares_a_generated_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CLUSTER_SECRET_FILE_ENV, raising=False)
    nodes = local_cluster(tmp_path)
    assert {n.bind_host for n in nodes} == {"127.0.0.1"}
    assert {n.cluster_secret_file for n in nodes} == {str(tmp_path / "cluster.secret")}
    assert all(is_local_secret(n) for n in nodes)
    assert not (tmp_path / "cluster.secret").exists()  # made by LocalCluster when it starts, not by a config
    assert ensure_local_secret(nodes[0].cluster_secret_file) and not ensure_local_secret(nodes[1].cluster_secret_file)
    assert os.stat(tmp_path / "cluster.secret").st_mode & 0o777 == 0o600
    assert len(read_cluster_secret(nodes[2].cluster_secret_file)) == 32
    monkeypatch.setenv(CLUSTER_SECRET_FILE_ENV, "/elsewhere/secret")
    assert not is_local_secret(local_cluster(tmp_path)[0])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_files_readable_by_others_are_refused_by_name_and_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"k" * 32)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=rf"{path}.*mode 0{mode:o}.*0600"):
        read_cluster_secret(path)
    with pytest.raises(ConfigError, match=rf"{path}.*mode 0{mode:o}"):
        read_token(path)
    os.chmod(path, 0o400)  # stricter is fine
    assert read_cluster_secret(path).reveal() == b"k" * 32


def test_short_or_missing_secrets_are_refused_with_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    with pytest.raises(ConfigError, match="head -c 32"):
        read_cluster_secret(path)
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        read_cluster_secret(path)


def test_secrets_never_show_themselves(tmp_path: Path) -> None:
    import pickle

    secret = Secret(b"hunter2hunter2hunter2", str(tmp_path / "s"))
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret.equals(b"hunter2hunter2hunter2") and not secret.equals(b"hunter3")
