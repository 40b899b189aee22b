"""``python -m hfasr``: the ``hfasr`` command."""

import sys

from hfasr.cli import main

sys.exit(main())
