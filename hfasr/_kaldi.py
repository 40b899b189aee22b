"""The one place that imports the native Kaldi packages.

``import kaldilm`` before ``kaldi_hmm_gmm`` (and, with the pinned OpenFst-1.7 builds, before
``kaldifst`` or ``kaldi_decoder``) deadlocks the process. Every hfasr module that needs a Kaldi
component imports it from here::

    from hfasr._kaldi import kaldifst, khg

so the order below is the only one ever used. ``kaldilm`` comes last.
"""

from __future__ import annotations

import kaldi_decoder
import kaldi_hmm_gmm as khg
import kaldialign
import kaldifst
import kaldilm

__all__ = ["kaldi_decoder", "kaldialign", "kaldifst", "kaldilm", "khg"]
