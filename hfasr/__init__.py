"""hfasr: Hessian-free training of speech acoustic models.

Modules (see DESIGN.md): ``hfasr.data`` (corpora, features), ``hfasr.lang`` (lexicon, graphs),
``hfasr.gmm``, ``hfasr.models``, ``hfasr.criteria``, ``hfasr.lattice``, ``hfasr.optim``,
``hfasr.decode`` and the ``hfasr`` command line (``hfasr.cli``).
"""

__version__ = "0.1.0"
