"""Fault injection for the fault campaign (tools/chaos.py): a test network of Linux network namespaces with
iptables partitions (netns.py), a fault-injecting TCP proxy between nodes (proxy.py), and disk faults
(disk.py: a small full disk, corrupted RocksDB files)."""
