"""The ingest worker's parts, one job each: client connections (`connections.py`), PRODUCE requests from
receipt to answer (`tracker.py`, pure), FETCH answers from the committed log (`fetch.py`). The worker that
wires them to the rings is shmraft/workers/ingest.py."""
