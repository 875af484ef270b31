"""How a node's listening sockets accept and read connections: the peer links (net/links.py) and the client
port (workers/ingest.py) serve the same way, so their limits have one home here.

A listener accepts at most `ACCEPT_BATCH_MAX` connections per wake-up, so a flood cannot starve its loop;
when the process is out of file descriptors (`FD_EXHAUSTED`), it stops accepting for `ACCEPT_PAUSE_MS`
instead of spinning on a listener that stays readable.
"""

from __future__ import annotations

import errno
from typing import Final

RECV_BYTES: Final = 256 * 1024  # bytes asked of one recv() on a connection
ACCEPT_BATCH_MAX: Final = 64  # connections accepted per wake-up
ACCEPT_PAUSE_MS: Final = 100  # out of file descriptors: stop accepting this long instead of spinning
FD_EXHAUSTED: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # accept() errnos meaning so
