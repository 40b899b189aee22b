"""Hessian-free optimization for PyTorch (knows nothing of speech).

- :mod:`~hfasr.optim.curvature`: output-space curvature operators (PSD), e.g. softmax Fisher.
- :mod:`~hfasr.optim.gn`: matrix-free Gauss-Newton products G v = Jᵀ H J v.
- :mod:`~hfasr.optim.cg`: preconditioned CG with Martens' stopping rule and iterate storage.
- :mod:`~hfasr.optim.hf`: :class:`HessianFree` (damping, backtracking, line search, state_dict).
- :mod:`~hfasr.optim.objective`: :class:`TensorObjective` for models on in-memory tensors.
"""

from hfasr.optim.cg import CGResult, pcg
from hfasr.optim.curvature import OutputCurvature, SoftmaxFisher, SquaredError
from hfasr.optim.gn import GaussNewton, ModelGaussNewton, SumGaussNewton
from hfasr.optim.hf import HessianFree, HFConfig, HFObjective, HFStats
from hfasr.optim.objective import SubsetObjective, TensorObjective, softmax_ce

__all__ = [
    "CGResult", "pcg", "OutputCurvature", "SoftmaxFisher", "SquaredError", "GaussNewton", "ModelGaussNewton", "SumGaussNewton",
    "HessianFree", "HFConfig", "HFObjective", "HFStats", "TensorObjective", "SubsetObjective", "softmax_ce",
]
