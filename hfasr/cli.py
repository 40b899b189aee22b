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


def main(argv: list[str] | None = None) -> int:
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
