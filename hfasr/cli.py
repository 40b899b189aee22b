"""The ``hfasr`` command: one subcommand per pipeline stage (modules in :mod:`hfasr.bin`).

Every stage takes ``--config FILE`` where it has options (YAML; see ``recipes/*/conf``); an
unknown key is an error that names the key and the file. Errors in user input print
``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from hfasr.bin import COMMANDS
from hfasr.errors import HfasrError
from hfasr.heap import bound_heap


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hfasr", description="Hessian-free training of speech acoustic models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"hfasr.bin.{name.replace('-', '_')}")
        sp = sub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    return p


RESOURCE_LOG_ENV = "HFASR_RESOURCE_LOG"
def _log_resources(path: str, argv: list[str], wall: float, status: int) -> None:
    """Append one JSON line to ``path``: the command, its exit status, wall seconds, CPU seconds
    (user + system, this process and its finished children) and peak resident memory (MB) of this
    process and of its largest finished child (worker pools).
    Enabled by the environment variable ``HFASR_RESOURCE_LOG`` (bench/scale.py sets it)."""
    import json
    import resource

    def mb(who: int) -> float:  # Linux: ru_maxrss in KiB
        return resource.getrusage(who).ru_maxrss / 1024

    def cpu(who: int) -> float:  # user + system seconds: unlike wall time, independent of other jobs' load
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    rec = {"argv": argv, "status": status, "wall_s": round(wall, 3), "max_rss_mb": round(mb(resource.RUSAGE_SELF), 1),
           "max_rss_children_mb": round(mb(resource.RUSAGE_CHILDREN), 1),
           "cpu_s": round(cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN), 3)}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError as e:  # never fail a finished command over its resource log
        print(f"warning: {path}: resource log not written ({e.strerror})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import os
    import time

    bound_heap()
    log_path = os.environ.get(RESOURCE_LOG_ENV)
    if not log_path:
        return _main(argv)
    t0, status = time.time(), 1
    try:
        status = _main(argv)
        return status
    finally:
        _log_resources(log_path, list(sys.argv[1:] if argv is None else argv), time.time() - t0, status)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except HfasrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a full disk is the user's environment, not a bug: an error naming the file, no traceback
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        what = "over the file size limit" if e.errno == errno.EFBIG else "no space left on the device"
        print(f"error: {e.filename or 'output'}: {what} ({e.strerror})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
