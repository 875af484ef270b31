"""Configuration: the shipped files load, bad values are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from shmraft.config import ConfigError, load, local_cluster

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_shipped_configs_load() -> None:
    local = load(CONF / "local.toml", node_id=2)
    assert [m.client_port for m in local.members] == [7101, 7201, 7301]
    assert local.me.raft_port == 7203 and local.fsync == "always"
    hosts = load(CONF / "three-hosts.toml")
    assert hosts.node_id == 1 and hosts.bind_host == "0.0.0.0" and len(hosts.peers) == 2


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
