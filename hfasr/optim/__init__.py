"""Hessian-free optimization for PyTorch (knows nothing of speech).

- :mod:`~hfasr.optim.curvature`: the output-space curvature protocol (implementations:
  :mod:`hfasr.criteria.curvature`).
- :mod:`~hfasr.optim.gn`: matrix-free Gauss-Newton products G v = Jᵀ H J v.
- :mod:`~hfasr.optim.cg`: preconditioned CG with Martens' stopping rule and iterate storage.
- :mod:`~hfasr.optim.hf`: :class:`HessianFree` (damping, backtracking, line search, state_dict),
  the :class:`HFObjective` and :class:`CurvatureOperator` protocols.
- :mod:`~hfasr.optim.objective`: :class:`BatchObjective`, the HF objective on batched data
  (held-out data, successive subsets, sharding over ``torch.distributed`` ranks).
- :mod:`~hfasr.optim.distributed`: all-reduce helpers and the rank-summed G v.
- :mod:`~hfasr.optim.spectrum`: curvature spectra (stochastic Lanczos quadrature on G, damped
  or preconditioned, per parameter block).
"""

from hfasr.optim.cg import CGResult, pcg
from hfasr.optim.curvature import OutputCurvature
from hfasr.optim.gn import GaussNewton, ModelGaussNewton, SumGaussNewton
from hfasr.optim.hf import CurvatureOperator, HessianFree, HFConfig, HFObjective, HFStats
from hfasr.optim.objective import (
    Batch,
    BatchCriterion,
    BatchData,
    BatchObjective,
    RowCriterion,
    SubsetObjective,
    TensorRows,
    make_objective,
    shard_batches,
    softmax_ce,
    split_heldout,
    tensor_objective,
)
from hfasr.optim.spectrum import Spectrum, SpectrumConfig, hf_system, parameter_blocks, slq, spectra

__all__ = [
    "Batch",
    "BatchCriterion",
    "BatchData",
    "BatchObjective",
    "CGResult",
    "CurvatureOperator",
    "GaussNewton",
    "HFConfig",
    "HFObjective",
    "HFStats",
    "HessianFree",
    "ModelGaussNewton",
    "OutputCurvature",
    "RowCriterion",
    "Spectrum",
    "SpectrumConfig",
    "SubsetObjective",
    "SumGaussNewton",
    "TensorRows",
    "hf_system",
    "make_objective",
    "parameter_blocks",
    "pcg",
    "shard_batches",
    "slq",
    "softmax_ce",
    "spectra",
    "split_heldout",
    "tensor_objective",
]
