"""Drivers for real local clusters, shared by the tests, the tools and the benchmarks.

`cluster.ClusterDriver` starts, watches, faults and stops a local cluster of real node supervisors;
`wait.wait_for` polls a condition against a deadline; `hogs.CpuHogs` runs busy loops beside a cluster.
Nothing here is used by a node itself.
"""
