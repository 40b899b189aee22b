"""The project's small versioned resources, shipped inside the package (package data).

``lang/``: the built-in tasks' lexicons (``yesno.txt``, ``digits.txt``, ``alnum.txt``; see
:mod:`hfasr.lang.lexicon`). ``synth/vocab.yaml``: the synth task's vocabulary and prompt grammar
(see :mod:`hfasr.data.synth`). They are found through :mod:`importlib.resources`, so an installed
wheel works outside the repository; :func:`path` is the one place that resolves them.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib.resources import as_file, files
from pathlib import Path

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def path(name: str) -> Path:
    """The file system path of resource ``name`` (``/``-separated, e.g. ``"lang/yesno.txt"``).

    The path need not exist (callers check and report a missing file). Installed as plain files
    (a wheel, an editable install, the source tree) this is the file itself; from a zip import
    it is a temporary copy that lives until the interpreter exits.
    """
    res = files(__name__).joinpath(*name.split("/"))
    if isinstance(res, Path):
        return res
    return _extracted.enter_context(as_file(res))
