"""Monophone GMM-HMM training, alignment and decoding with kaldi-hmm-gmm (``hfasr gmm``).

- :mod:`hfasr.gmm.train`: :class:`GmmConfig`, :func:`train_gmm` (flat start, EM with
  re-alignment and Gaussian splitting as Kaldi's ``train_mono.sh``), the GMM dir's outputs.
- :mod:`hfasr.gmm.align`: Viterbi alignment (``gmm-align-compiled``), :func:`phone_segments`.
- :mod:`hfasr.gmm.model`: :class:`GmmModel` and its Kaldi text files (``final.mdl``, ``tree``).
- :mod:`hfasr.gmm.feats`: the GMM feature pipeline (CMVN, cepstra, deltas).
- :mod:`hfasr.gmm.decode`: :func:`decode_gmm` (best paths through ``graph/HCLG.fst``).

Triphones are not supported: kaldi-hmm-gmm 1.1.4 exposes no tree building (no
``AccumulateTreeStats`` / ``BuildTree`` / ``ContextDependency`` reader in its Python bindings).
"""

from hfasr.gmm.align import phone_segments
from hfasr.gmm.decode import decode_gmm, load_gmm_dir
from hfasr.gmm.model import GmmModel
from hfasr.gmm.train import GmmConfig, load_alignments, train_gmm

__all__ = ["GmmConfig", "GmmModel", "decode_gmm", "load_alignments", "load_gmm_dir", "phone_segments", "train_gmm"]
