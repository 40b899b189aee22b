"""Feed-forward DNN on spliced frames (the hybrid DNN-HMM acoustic model, Kaldi nnet1 style).

``DNN(x, lengths)`` maps padded features (B, T, F) to per-frame logits (B, T, K):

    global CMVN  →  splice ±context frames  →  L × (Linear → sigmoid | tanh | ReLU)  →  Linear

Splicing replicates the first / last *valid* frame of each sequence at its edges (Kaldi's
``splice-feats``), so padding never leaks into valid frames. The softmax is left to the
criterion (CE, sequence criteria) or to :func:`hfasr.models.compute_loglikes` for decoding.

Frame-level training shuffles frames across utterances; it feeds already-spliced *raw* frame
rows (N, (2c+1)·F) to :meth:`DNN.forward_spliced`, which applies the CMVN to each of the 2c+1
blocks and runs the same layers, so ``forward`` and ``forward_spliced`` agree frame by frame
(:meth:`hfasr.data.frames.FrameData.spliced` builds such rows). :class:`SplicedFrames` wraps a
DNN as a module on frame rows (``model(rows)``), e.g. for :class:`hfasr.optim.TensorObjective`.

No in-place operations on values that depend on parameters: the same code serves autograd,
``torch.func.vjp``, ``jvp`` and ``linearize`` (Hessian-free Gauss-Newton products).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from hfasr.config import bounded, check_ranges

Activation = Literal["sigmoid", "tanh", "relu"]
_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


@dataclass
class DNNConfig:
    """Hyper-parameters of :class:`DNN` (the ``dnn:`` section of a training config).

    The defaults suit the small corpora of this project (yesno, FSDD, synth: ≤ a few hours);
    Kaldi nnet1 / the HF papers used 5-7 × 1024-2048 sigmoid layers on 50-300 h.
    """

    hidden_dim: int = bounded(256, ge=1)  # units per hidden layer
    num_layers: int = bounded(4, ge=0)  # hidden layers
    context: int = bounded(5, ge=0)  # frames spliced on each side (input = (2·context + 1)·F)
    activation: Activation = "sigmoid"  # hidden nonlinearity
    utt_cmn: bool = False  # subtract each utterance's feature mean first (speaker/channel normalisation)
    init: Literal["glorot", "sparse"] = "glorot"  # sparse: Martens (2010), 15 N(0,1) inputs per unit
    dropout: float = bounded(0.0, ge=0, lt=1)  # dropout on every hidden layer's output in training mode (first-order CE only)
    num_ceps: int = bounded(0, ge=0)  # > 0: a fixed DCT-II keeps this many cepstra of each normalised frame (MFCC-like input)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")


def dct_matrix(num_bins: int, num_ceps: int) -> Tensor:
    """(num_bins, num_ceps) orthonormal DCT-II: ``x @ D`` keeps the first ``num_ceps`` cepstra of
    log-mel frames ``x`` (Kaldi's MFCC DCT, without liftering, which the next layer absorbs)."""
    n = torch.arange(num_bins, dtype=torch.float64)
    k = torch.arange(num_ceps, dtype=torch.float64)[:, None]
    m = torch.cos(torch.pi / num_bins * (n + 0.5) * k) * (2.0 / num_bins) ** 0.5
    m[0] = (1.0 / num_bins) ** 0.5
    return m.T.float()


def splice_index(lengths: Tensor, T: int, context: int) -> Tensor:
    """Long (B, T, 2c+1): source frame of each spliced block, clamped to ``[0, lengths[b] − 1]``.

    Frames at t ≥ lengths[b] (padding) get indices of valid frames too; their outputs are
    unspecified and must be masked by the criterion.
    """
    offsets = torch.arange(-context, context + 1, device=lengths.device)
    t = torch.arange(T, device=lengths.device)
    idx = t[None, :, None] + offsets[None, None, :]
    last = (lengths.clamp_min(1) - 1)[:, None, None]
    return torch.minimum(idx.clamp_min(0), last)


def splice(x: Tensor, context: int, lengths: Tensor | None = None) -> Tensor:
    """Splice ±``context`` frames of ``x`` (B, T, F) → (B, T, (2c+1)·F), edge frames replicated.

    Block j (of 2c+1) of output frame t is input frame ``clamp(t − c + j, 0, L_b − 1)``.
    """
    B, T, F = x.shape
    if context == 0:
        return x
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    idx = splice_index(lengths.to(x.device), T, context)  # (B, T, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    return x[b, idx].reshape(B, T, (2 * context + 1) * F)


def utterance_cmn(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Subtract each utterance's mean over its valid frames from padded features (B, T, F)."""
    _, T, _ = x.shape
    if lengths is None:
        return x - x.mean(1, keepdim=True)
    mask = (torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)[..., None]
    mean = (x * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    return x - mean


class DNN(nn.Module):
    """Sigmoid / tanh / ReLU DNN on spliced frames: (B, T, F) (+ lengths) → (B, T, K) logits.

    Args:
        input_dim: feature dimension F (before splicing).
        num_outputs: K (pdfs for a hybrid model, tokens + blank for CTC).
        hidden_dim, num_layers, context, activation: see :class:`DNNConfig`.

    The CMVN statistics are buffers (``cmvn_mean``, ``cmvn_std``; identity until
    :meth:`set_cmvn`), saved with the weights.
    """

    def __init__(self, input_dim: int, num_outputs: int, hidden_dim: int = 256, num_layers: int = 4,
                 context: int = 5, activation: Activation = "sigmoid", utt_cmn: bool = False,
                 init: str = "glorot", dropout: float = 0.0, num_ceps: int = 0) -> None:
        super().__init__()
        cfg = DNNConfig(hidden_dim=hidden_dim, num_layers=num_layers, context=context, activation=activation,
                        utt_cmn=utt_cmn, init=init, dropout=dropout, num_ceps=num_ceps)
        if num_ceps > input_dim:
            raise ValueError(f"num_ceps {num_ceps} exceeds the feature dimension {input_dim}")
        self.init = init
        self.dropout = dropout
        self.utt_cmn = utt_cmn
        self.input_dim = input_dim
        self.num_outputs = num_outputs
        self.context = context
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        self.model_config = {"arch": "dnn", "input_dim": input_dim, "num_outputs": num_outputs, **asdict(cfg)}
        self.register_buffer("cmvn_mean", torch.zeros(input_dim))
        self.register_buffer("cmvn_std", torch.ones(input_dim))
        self.num_ceps = num_ceps
        if num_ceps:
            self.register_buffer("dct", dct_matrix(input_dim, num_ceps))
        frame_dim = num_ceps or input_dim
        sizes = [(2 * context + 1) * frame_dim] + [hidden_dim] * num_layers
        self.hidden = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(num_layers))
        self.output = nn.Linear(sizes[-1], num_outputs)
        self.reset_parameters()

    @property
    def spliced_dim(self) -> int:
        """Width of a spliced frame row, (2·context + 1)·F."""
        return (2 * self.context + 1) * self.input_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Glorot-uniform weights (He-uniform for ReLU hidden layers), zero biases; or Martens'
        sparse initialisation (``init="sparse"``: 15 non-zero N(0, 1) incoming weights per unit)."""
        if getattr(self, "init", "glorot") == "sparse":
            for lin in list(self.hidden) + [self.output]:
                w = torch.zeros_like(lin.weight)
                k = min(15, w.shape[1])
                for i in range(w.shape[0]):
                    w[i, torch.randperm(w.shape[1])[:k]] = torch.randn(k)
                with torch.no_grad():
                    lin.weight.copy_(w)
                nn.init.zeros_(lin.bias)
            return
        for lin in list(self.hidden) + [self.output]:
            if self.activation == "relu" and lin is not self.output:
                nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def set_cmvn(self, mean: Tensor, std: Tensor) -> None:
        """Set the global CMVN statistics (std floored at 1e-5)."""
        self.cmvn_mean.copy_(mean)
        self.cmvn_std.copy_(std.clamp_min(1e-5))

    def _normalize(self, x: Tensor) -> Tensor:
        """Global CMVN, then the DCT with ``num_ceps``: (..., F) -> (..., F or num_ceps)."""
        x = (x - self.cmvn_mean) / self.cmvn_std
        return x @ self.dct if self.num_ceps else x

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames per sequence (the DNN keeps the frame rate)."""
        return lengths

    def _layers(self, h: Tensor) -> Tensor:
        for lin in self.hidden:
            h = self._act(lin(h))
            if self.dropout > 0.0 and self.training:
                h = nn.functional.dropout(h, self.dropout, training=True)
        return self.output(h)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits (B, T, K) of padded features ``x`` (B, T, F); ``lengths`` (B,) valid frames."""
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"DNN expects features (B, T, {self.input_dim}), got {tuple(x.shape)}")
        if self.utt_cmn:
            x = utterance_cmn(x, lengths)
        return self._layers(splice(self._normalize(x), self.context, lengths))

    def linearize(self, x: Tensor, lengths: Tensor | None = None
                  ) -> tuple[Tensor, Callable[[Mapping[str, Tensor]], Tensor]]:
        """Forward pass at the current parameters (no autograd) and its hand-written J v.

        Returns ``(logits, jvp)``; ``jvp`` maps parameter tangents ``{name: tensor}`` (names of
        :meth:`named_parameters`; missing ones are 0) to the tangent of the logits. The spliced
        input and every layer's activation derivative are kept, so one J v costs two matrix
        products per layer (``torch.func.linearize`` traces the graph at every linearization
        and replays it more slowly). The parameters are copied: later in-place updates do not
        move the linearization point.
        """
        w = {n: p.detach().clone() for n, p in self.named_parameters()}
        with torch.no_grad():
            if self.utt_cmn:
                x = utterance_cmn(x, lengths)
            h = splice(self._normalize(x), self.context, lengths)
            inputs, derivs = [], []
            for lin in self.hidden:
                inputs.append(h)
                a = lin(h)
                h = self._act(a)
                if self.activation == "sigmoid":
                    derivs.append(h * (1 - h))
                elif self.activation == "tanh":
                    derivs.append(1 - h * h)
                else:
                    derivs.append(a > 0)  # bool: 1 byte per unit held through CG, not 4
            inputs.append(h)
            out = self.output(h)
        names = [f"hidden.{i}" for i in range(len(self.hidden))] + ["output"]

        def jvp(tangents: Mapping[str, Tensor]) -> Tensor:
            with torch.no_grad():
                dh: Tensor | None = None
                for i, name in enumerate(names):
                    da = None if dh is None else dh @ w[f"{name}.weight"].T
                    dw, db = tangents.get(f"{name}.weight"), tangents.get(f"{name}.bias")
                    if dw is not None:
                        da = inputs[i] @ dw.T if da is None else da + inputs[i] @ dw.T
                    if db is not None:
                        da = db.expand(*inputs[i].shape[:-1], db.shape[0]) if da is None else da + db
                    if da is None:
                        da = inputs[i].new_zeros(*inputs[i].shape[:-1], w[f"{name}.weight"].shape[0])
                    dh = da * derivs[i] if i < len(derivs) else da
                assert dh is not None
                return dh

        return out, jvp

    def forward_spliced(self, rows: Tensor) -> Tensor:
        """Logits (N, K) of raw (un-normalized) spliced frame rows (N, (2c+1)·F)."""
        if rows.dim() != 2 or rows.shape[-1] != self.spliced_dim:
            raise ValueError(f"DNN expects spliced rows (N, {self.spliced_dim}), got {tuple(rows.shape)}")
        N = rows.shape[0]
        x = self._normalize(rows.reshape(N, -1, self.input_dim))
        return self._layers(x.reshape(N, -1))

    def frames(self) -> SplicedFrames:
        """This model as a module on spliced frame rows (shares the parameters)."""
        return SplicedFrames(self)


class SplicedFrames(nn.Module):
    """``SplicedFrames(dnn)(rows)`` = ``dnn.forward_spliced(rows)``; parameters are ``dnn.*``."""

    def __init__(self, dnn: DNN) -> None:
        super().__init__()
        self.dnn = dnn

    def forward(self, rows: Tensor) -> Tensor:
        return self.dnn.forward_spliced(rows)
