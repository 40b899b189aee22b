"""Subcommands of the ``hfasr`` command, one module per pipeline stage.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``; ``run``
raises :class:`hfasr.errors.HfasrError` for bad user input. Add a stage by adding a module and
its name to :data:`COMMANDS` (in pipeline order).
"""

COMMANDS = ["prepare", "features", "lang", "gmm", "train", "lattices", "loglikes", "decode", "score", "results", "report", "info"]
