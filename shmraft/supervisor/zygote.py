"""Worker start-up without the imports: a fork server (zygote) that has imported every worker's modules once.

A worker's Python imports (numpy, rocksdict, zstandard, the shmraft modules) cost 0.15-0.4 s of CPU each,
and on a machine whose cores are taken by other work each of the four takes 1.5-3 s of wall time. The
supervisor therefore starts one zygote per node: a plain `python -m shmraft.supervisor.zygote` process that
imports the worker modules, stays single-threaded (it checks before every fork) and then forks a worker per
request, so a start or restart pays only the fork and the worker's own set-up.

Supervision is unchanged: each worker is a separate process whose parent is the supervisor. The zygote forks
twice (zygote -> short-lived middle -> worker) and the middle exits at once; the supervisor has made itself
the child subreaper (Linux `PR_SET_CHILD_SUBREAPER`), so the orphaned worker becomes its child: it waits for
it, reads its exit status, signals it with real signals and samples its /proc schedstat for stall detection
as before (`ForkedProcess` has the `subprocess.Popen` methods the supervisor uses).

Protocol on two pipes (the zygote's stdin and a reply pipe): the supervisor writes one line
`KIND CONFIG_PATH\\n`; the zygote answers one line with the worker's pid, or `error: ...`. Whenever the zygote
is missing, slow to answer or refuses, the supervisor starts that worker the old way (a fresh interpreter),
so the zygote only ever makes starts faster.
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Final

ZYGOTE_READY_TIMEOUT_S: Final = 10.0  # the zygote's imports; past this a start falls back to a fresh interpreter
ZYGOTE_REPLY_TIMEOUT_S: Final = 2.0  # one fork request
ZYGOTE_LINE_BYTES_MAX: Final = 4096
PR_SET_CHILD_SUBREAPER: Final = 36  # linux/prctl.h
PR_SET_NAME: Final = 15  # linux/prctl.h
WORKER_KINDS: Final = ("raft", "sender", "batcher", "ingest")
_READY: Final = b"ready\n"
# numpy's OpenBLAS starts a thread pool when imported, which would make the zygote unsafe to fork; the workers
# do no linear algebra, so the zygote (and its forks) run it single-threaded.
SINGLE_THREAD_ENV: Final = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _import_workers() -> None:
    """Every module a worker needs, imported once here and shared by every fork."""
    import shmraft.workers.batcher  # noqa: F401
    import shmraft.workers.ingest  # noqa: F401
    import shmraft.workers.main  # noqa: F401
    import shmraft.workers.raft  # noqa: F401
    import shmraft.workers.sender  # noqa: F401


def _thread_count() -> int:
    """Threads of this process as the kernel sees them (native ones too, e.g. a BLAS pool)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _run_worker(kind: str, config_path: str) -> int:
    """In the forked worker: what `python -m shmraft.workers.main KIND CONFIG` does."""
    from shmraft.workers.main import main

    sys.argv = ["shmraft.workers.main", kind, config_path]
    return main([kind, config_path])


def _fork_worker(kind: str, config_path: str, close_fds: tuple[int, ...]) -> int:
    """Fork zygote -> middle -> worker; the middle exits so the worker is re-parented to the subreaper.
    Returns the worker's pid (raises OSError on failure)."""
    rfd, wfd = os.pipe()
    middle = os.fork()
    if middle == 0:  # the middle process
        try:
            os.close(rfd)
            worker = os.fork()
            if worker == 0:  # the worker
                os.close(wfd)
                for fd in close_fds:
                    os.close(fd)
                _set_comm(f"shmraft-{kind}")
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                code = 1
                try:
                    code = _run_worker(kind, config_path)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
            os.write(wfd, f"{worker}\n".encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(rfd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
        os.waitpid(middle, 0)
    if not data.endswith(b"\n"):
        raise OSError("worker fork failed")
    return int(data)


def serve(request_fd: int, reply_fd: int) -> int:
    """The zygote's loop: import, say ready, then one fork per request line until the supervisor closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the supervisor; it closes our pipe
    _import_workers()
    gc.collect()
    gc.freeze()  # the imported objects stay in the forks' shared pages (no copy on a collection)
    os.write(reply_fd, _READY)
    buf = b""
    while True:
        try:
            chunk = os.read(request_fd, ZYGOTE_LINE_BYTES_MAX)
        except InterruptedError:
            continue
        if not chunk:
            return 0  # the supervisor is gone or stopping
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            os.write(reply_fd, _handle(line, (request_fd, reply_fd)) + b"\n")
        if len(buf) > ZYGOTE_LINE_BYTES_MAX:
            return 2


def _handle(line: bytes, close_fds: tuple[int, ...]) -> bytes:
    parts = line.decode(errors="replace").split(" ", 1)
    if len(parts) != 2 or parts[0] not in WORKER_KINDS:
        return f"error: bad request {line[:80]!r}, expected 'KIND CONFIG_PATH' with KIND in {WORKER_KINDS}".encode()
    threads = _thread_count()
    if threads != 1:
        return f"error: zygote has {threads} threads, forking is unsafe".encode()
    try:
        return str(_fork_worker(parts[0], parts[1], close_fds)).encode()
    except OSError as exc:
        return f"error: fork: {exc}".encode()


def _set_comm(name: str) -> None:
    """The process name `ps -o comm` and `top` show (Linux; 15 bytes): the command line is the zygote's."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_child_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ForkedProcess:
    """A worker forked by the zygote and adopted by this (subreaper) process: the `subprocess.Popen` subset the
    supervisor uses, on the pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.returncode = -1  # not ours (not adopted): treat as gone
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._reap(0)
            assert code is not None
            return code
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            time.sleep(0.01)
        return code

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """The supervisor's side: starts the fork server and asks it for workers. Every failure returns None, and the
    caller starts the worker as a fresh interpreter instead."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._req_w = -1
        self._rep_r = -1
        self._ready = False
        self._started_s = 0.0
        self.error = ""  # why the last spawn failed (the supervisor logs it once)

    def start(self, config_path: str) -> bool:
        """Start the fork server (returns at once; it imports in the background). False where unsupported.
        `config_path` is only shown in its command line (and its forks'), so `ps` tells which node they serve."""
        if not set_child_subreaper():
            self.error = "no child subreaper (not Linux?)"
            return False
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        os.set_inheritable(req_r, True)
        os.set_inheritable(rep_w, True)
        cmd = [sys.executable, "-m", "shmraft.supervisor.zygote", str(req_r), str(rep_w), config_path]
        try:
            env = {**os.environ, **SINGLE_THREAD_ENV}
            self._proc = subprocess.Popen(cmd, pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, env=env)
        except OSError:
            self._proc = None
        os.close(req_r)
        os.close(rep_w)
        self._started_s = time.monotonic()
        if self._proc is None:
            self.close()
            return False
        return True

    def _read_line(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self._rep_r], [], [], left)
            if not readable:
                return None
            chunk = os.read(self._rep_r, 1)  # one byte at a time: never read past this line
            if not chunk:
                return None
            data += chunk
        return data

    def spawn(self, kind: str, config_path: str) -> ForkedProcess | None:
        """A forked worker of `kind`, or None (zygote absent, not ready in time, failed): start it otherwise."""
        if self._proc is None:
            return None
        if not self._ready:
            wait_s = max(0.0, ZYGOTE_READY_TIMEOUT_S - (time.monotonic() - self._started_s))
            if self._read_line(wait_s) != _READY:
                self.error = f"fork server not ready in {ZYGOTE_READY_TIMEOUT_S:.0f} s"
                self.close()
                return None
            self._ready = True
        try:
            os.write(self._req_w, f"{kind} {config_path}\n".encode())
        except OSError as exc:
            self.error = f"fork server gone: {exc}"
            self.close()
            return None
        line = self._read_line(ZYGOTE_REPLY_TIMEOUT_S)
        if line is None or not line.strip().isdigit():
            self.error = "fork server did not answer" if line is None else line.decode(errors="replace").strip()
            if line is None:
                self.close()
            return None
        return ForkedProcess(int(line))

    def close(self) -> None:
        """Stop the fork server (its workers live on: they are the supervisor's children)."""
        for fd in (self._req_w, self._rep_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._req_w = self._rep_r = -1
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(1.0)  # it exits on the closed request pipe
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _main() -> int:
    if len(sys.argv) != 4:
        print("usage: python -m shmraft.supervisor.zygote REQUEST_FD REPLY_FD CONFIG_PATH", file=sys.stderr)
        return 2
    return serve(int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    sys.exit(_main())
