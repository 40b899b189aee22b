"""Subcommands of the ``hfasr`` command, one module per pipeline stage.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``; ``run``
raises :class:`hfasr.errors.HfasrError` for bad user input. Add a stage by adding a module and
its name to :data:`COMMANDS` (in pipeline order); command ``a-b`` is module ``a_b``.
"""

COMMANDS = ["prepare", "features", "lang", "gmm", "train", "align", "lattices", "loglikes", "decode", "ctc-decode", "ctc-align",
            "score", "results", "report", "info"]
