"""hfasr: Hessian-free training of speech acoustic models.

Modules: ``hfasr.data`` (corpora, features), ``hfasr.lang`` (lexicon, graphs), ``hfasr.gmm``,
``hfasr.models``, ``hfasr.criteria``, ``hfasr.lattice``, ``hfasr.optim``, ``hfasr.train``,
``hfasr.decode`` and the ``hfasr`` command line (``hfasr.cli``, one module per command in
``hfasr.bin``).
"""

__version__ = "0.1.0"
