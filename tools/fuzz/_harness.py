"""What the atheris harnesses beside this file share: start-up, and a clear message when atheris is missing.

Each harness is a script (`python tools/fuzz/fuzz_client.py [libFuzzer flags] [corpus dir]`); the flags are
libFuzzer's, e.g. `-runs=100000` or `-max_total_time=300` for a time budget, `-artifact_prefix=dir/` for
where a crashing input is written. A crash is any exception other than RemoteProtocolError, or a broken
property (oracles.OracleFailure); atheris prints the traceback and the input, and exits non-zero.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
EXIT_NO_ATHERIS: Final = 3  # distinguishes "cannot run" from a crash (libFuzzer uses 1 and 77)


def load_atheris():  # noqa: ANN201 - the module, or exit with a clear message
    try:
        import atheris
    except ImportError as exc:
        print(f"atheris is not installed ({exc}); pip install 'shmraft[test]' or pip install atheris", file=sys.stderr)
        raise SystemExit(EXIT_NO_ATHERIS) from None
    return atheris


def run(test_one_input_module: str) -> None:
    """Instrument shmraft and the oracles, import `test_one_input_module`'s TestOneInput, and fuzz it."""
    atheris = load_atheris()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with atheris.instrument_imports(include=["shmraft", "oracles", test_one_input_module]):
        import oracles  # noqa: F401 - imported here to be instrumented (it imports the decoders)

        module = __import__(test_one_input_module)
    target: Callable[[bytes], None] = module.TestOneInput
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
