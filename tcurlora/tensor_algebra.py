"""The t-product tensor algebra (Kilmer & Martin) and the tensor CUR decomposition.

Convention: a third-order tensor has shape (n1, n2, n3) with frontal slices A[..., :, :, k]; the
third mode is the LAST dim and any leading dims are batch dims. Everything works in the Fourier
domain along that mode with rfft/irfft (only n3 // 2 + 1 independent frequencies for real data),
batched, and keeps the device and dtype of its inputs (float32 -> complex64, float64 -> complex128;
float16/bfloat16 are computed in float32).

The singular values of the Fourier slices are exactly those of the block-circulant matrix
bcirc(A), so tolerances here are absolute on that scale and relative ones use its largest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SELECTION_STRATEGIES",
    "CURFactors",
    "block_circulant",
    "fourier_product",
    "from_fourier",
    "select_indices",
    "t_identity",
    "t_pinv",
    "t_product",
    "t_svd",
    "t_transpose",
    "tensor_cur",
    "to_fourier",
    "tubal_rank",
]

SELECTION_STRATEGIES = ("topnorm", "leverage", "inverse", "uniform")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- checks and helpers


def _check_3d(a: Tensor, name: str = "a", exact: bool = False) -> None:
    """Raise ValueError unless `a` is a (batched) third-order tensor."""
    if not isinstance(a, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if (a.ndim != 3) if exact else (a.ndim < 3):
        want = "exactly 3 dims (n1, n2, n3)" if exact else "at least 3 dims (..., n1, n2, n3)"
        raise ValueError(f"{name} must have {want}; got shape {tuple(a.shape)}")


def _n_freq(n3: int) -> int:
    return n3 // 2 + 1


def _real_freqs(n3: int) -> list[int]:
    """Indices of the rfft slices that are real for real input: DC, and Nyquist when n3 is even."""
    f = _n_freq(n3)
    return [0] + ([f - 1] if n3 % 2 == 0 and f > 1 else [])


def _freq_weights(n3: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """How many full-FFT slices each rfft slice stands for (1 for DC/Nyquist, 2 for the others)."""
    w = torch.full((_n_freq(n3),), 2.0, dtype=dtype, device=device)
    w[_real_freqs(n3)] = 1.0
    return w


def _real_dtype(a: Tensor) -> torch.dtype:
    return torch.float32 if a.dtype in _LOW_PRECISION else a.dtype


def _default_rtol(n1: int, n2: int, n3: int, dtype: torch.dtype) -> float:
    """numpy's matrix-rank / pinv default for bcirc(A): eps * its larger dimension."""
    return torch.finfo(dtype).eps * max(n1, n2) * n3


def _slices(a_hat: Tensor) -> Tensor:
    """(..., n1, n2, f) -> (..., f, n1, n2) so that linalg works per frequency."""
    return a_hat.movedim(-1, -3)


def _unslices(x: Tensor) -> Tensor:
    """(..., f, n1, n2) -> (..., n1, n2, f)."""
    return x.movedim(-3, -1)


def _fourier_svd(a_hat: Tensor, n3: int, full_matrices: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of every Fourier slice: U (..., f, n1, k), S (..., f, k) real, Vh (..., f, k, n2).

    The DC (and even-n3 Nyquist) slices are real matrices for real tensors; their SVD is done on
    the real part so their factors are real too, otherwise irfft would silently drop the arbitrary
    complex phases of the factors and the t-SVD factors would be wrong.
    """
    x = _slices(a_hat)
    f = x.shape[-3]
    real = _real_freqs(n3)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    start = 0
    for idx in real + [f]:
        if idx > start:  # the complex slices strictly between two real ones
            parts.append(torch.linalg.svd(x[..., start:idx, :, :], full_matrices=full_matrices))
        if idx < f:
            u, s, vh = torch.linalg.svd(x[..., idx : idx + 1, :, :].real, full_matrices=full_matrices)
            parts.append((u.to(x.dtype), s, vh.to(x.dtype)))
        start = idx + 1
    u = torch.cat([p[0] for p in parts], dim=-3)
    s = torch.cat([p[1] for p in parts], dim=-2)
    vh = torch.cat([p[2] for p in parts], dim=-3)
    return u, s, vh


# ----------------------------------------------------------------------------- the algebra


def to_fourier(a: Tensor) -> Tensor:
    """rfft along the third mode: (..., n1, n2, n3) real -> (..., n1, n2, n3 // 2 + 1) complex."""
    _check_3d(a)
    if a.dtype in _LOW_PRECISION:
        a = a.float()
    return torch.fft.rfft(a, dim=-1)


def from_fourier(a_hat: Tensor, n3: int) -> Tensor:
    """irfft along the third mode back to a real (..., n1, n2, n3) tensor."""
    _check_3d(a_hat, "a_hat")
    if a_hat.shape[-1] != _n_freq(n3):
        raise ValueError(f"a_hat has {a_hat.shape[-1]} frequencies but n3={n3} needs {_n_freq(n3)}")
    return torch.fft.irfft(a_hat, n=n3, dim=-1)


def fourier_product(a_hat: Tensor, b_hat: Tensor) -> Tensor:
    """Per-frequency matrix product (..., n1, n2, f) x (..., n2, n4, f) -> (..., n1, n4, f)."""
    _check_3d(a_hat, "a_hat")
    _check_3d(b_hat, "b_hat")
    if a_hat.shape[-1] != b_hat.shape[-1] or a_hat.shape[-2] != b_hat.shape[-3]:
        raise ValueError(
            f"cannot multiply Fourier tensors of shapes {tuple(a_hat.shape)} and {tuple(b_hat.shape)}"
        )
    dtype = torch.promote_types(a_hat.dtype, b_hat.dtype)
    return _unslices(_slices(a_hat.to(dtype)) @ _slices(b_hat.to(dtype)))


def t_product(a: Tensor, b: Tensor) -> Tensor:
    """The t-product (..., n1, n2, n3) * (..., n2, n4, n3) -> (..., n1, n4, n3); batch dims broadcast."""
    _check_3d(a)
    _check_3d(b, "b")
    if a.shape[-1] != b.shape[-1] or a.shape[-2] != b.shape[-3]:
        raise ValueError(f"cannot t-multiply tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    n3 = a.shape[-1]
    c = from_fourier(fourier_product(to_fourier(a), to_fourier(b)), n3)
    return c.to(out_dtype)


def t_transpose(a: Tensor) -> Tensor:
    """Tensor transpose: A^T_0 = A_0^T and A^T_j = A_{n3-j}^T."""
    _check_3d(a)
    n3 = a.shape[-1]
    order = (-torch.arange(n3, device=a.device)) % n3
    return a.transpose(-3, -2)[..., order]


def t_identity(n: int, n3: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The (n, n, n3) identity tensor: first frontal slice the identity, the others zero."""
    if n < 1 or n3 < 1:
        raise ValueError(f"t_identity needs n >= 1 and n3 >= 1, got n={n}, n3={n3}")
    eye = torch.zeros(n, n, n3, dtype=dtype, device=device)
    eye[:, :, 0] = torch.eye(n, dtype=dtype, device=device)
    return eye


def t_pinv(a: Tensor, rtol: float | None = None) -> Tensor:
    """Moore-Penrose t-pseudo-inverse (..., n2, n1, n3): pinv of every Fourier slice.

    Singular values at or below rtol times the largest over ALL Fourier slices (of each batch item)
    are treated as zero, which makes t_pinv(A) equal pinv(bcirc(A)) in block-circulant form.
    Default rtol: eps * max(n1, n2) * n3.
    """
    _check_3d(a)
    n1, n2, n3 = a.shape[-3:]
    out_dtype = _real_dtype(a)
    if rtol is None:
        rtol = _default_rtol(n1, n2, n3, out_dtype)
    u, s, vh = _fourier_svd(to_fourier(a), n3)
    smax = s.amax(dim=(-2, -1), keepdim=True) if s.numel() else s.new_zeros(())
    keep = s > rtol * smax
    s_inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    pinv_hat = (vh.mH * s_inv.unsqueeze(-2).to(vh.dtype)) @ u.mH  # (..., f, n2, n1)
    return from_fourier(_unslices(pinv_hat), n3).to(out_dtype)


def t_svd(a: Tensor, *, full_matrices: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """t-SVD of a real tensor: A = U * S * V^T.

    Thin by default (k = min(n1, n2)): U (..., n1, k, n3), S (..., k, k, n3), V (..., n2, k, n3);
    with full_matrices U is (n1, n1, n3), S (n1, n2, n3), V (n2, n2, n3). U^T * U = I and
    V^T * V = I (t-orthogonal columns), S is f-diagonal (every frontal slice diagonal) and its
    Fourier slices hold the singular values in descending order.
    """
    _check_3d(a)
    n1, n2, n3 = a.shape[-3:]
    out_dtype = _real_dtype(a)
    u, s, vh = _fourier_svd(to_fourier(a), n3, full_matrices=full_matrices)
    rows, cols = (n1, n2) if full_matrices else (s.shape[-1], s.shape[-1])
    s_mat = torch.zeros(*s.shape[:-1], rows, cols, dtype=s.dtype, device=s.device)
    s_mat.diagonal(dim1=-2, dim2=-1).copy_(s)
    u_t = from_fourier(_unslices(u), n3).to(out_dtype)
    s_t = from_fourier(_unslices(s_mat.to(u.dtype)), n3).to(out_dtype)
    v_t = from_fourier(_unslices(vh.mH), n3).to(out_dtype)
    return u_t, s_t, v_t


def tubal_rank(a: Tensor, tol: float | None = None) -> int:
    """Tubal rank: the largest rank of any Fourier slice (the number of nonzero tubes of S).

    `tol` is an absolute threshold on the Fourier singular values (those of bcirc(A)); default
    eps * max(n1, n2) * n3 * the largest singular value. For batched input: the maximum over items.
    """
    _check_3d(a)
    n1, n2, n3 = a.shape[-3:]
    if a.numel() == 0:
        return 0
    s = torch.linalg.svdvals(_slices(to_fourier(a)))  # (..., f, k)
    if tol is None:
        smax = s.amax(dim=(-2, -1), keepdim=True)
        thresh = _default_rtol(n1, n2, n3, _real_dtype(a)) * smax
    else:
        thresh = torch.as_tensor(tol, dtype=s.dtype, device=s.device)
    return int((s > thresh).sum(dim=-1).max().item())


def block_circulant(a: Tensor) -> Tensor:
    """The naive block-circulant matrix (..., n1*n3, n2*n3); block (i, j) is A_{(i - j) mod n3}.

    bcirc(A * B) = bcirc(A) @ bcirc(B). A reference for tests and docs, not for large tensors.
    """
    _check_3d(a)
    n1, n2, n3 = a.shape[-3:]
    ar = torch.arange(n3, device=a.device)
    idx = (ar[:, None] - ar[None, :]) % n3  # (block row i, block col j)
    blocks = a[..., idx]  # (..., n1, n2, i, j)
    blocks = blocks.movedim(-2, -4)  # (..., i, n1, n2, j)
    blocks = blocks.movedim(-1, -2)  # (..., i, n1, j, n2)
    return blocks.reshape(*a.shape[:-3], n3 * n1, n3 * n2)


# ----------------------------------------------------------------------------- tensor CUR


def _slice_norm_scores(w_hat: Tensor, n3: int, dim: int) -> Tensor:
    """Sum over all (full-FFT) Fourier slices of the 2-norms of the columns (dim=0) or rows (dim=1)."""
    norms = torch.linalg.vector_norm(w_hat, dim=dim)  # (n2 or n1, f)
    return (norms * _freq_weights(n3, norms.dtype, norms.device)).sum(dim=-1)


def _top(scores: Tensor, r: int) -> Tensor:
    """Indices of the r largest scores, ties broken by the smaller index (device independent)."""
    order = torch.sort(scores.detach().double().cpu(), descending=True, stable=True).indices
    return order[:r]


def _inverse_sample(scores: Tensor, r: int, gen: torch.Generator) -> Tensor:
    """r distinct indices drawn with probability proportional to 1 / (score + eps)."""
    s = scores.detach().double().cpu()
    eps = 1e-8 * float(s.max()) if s.numel() and float(s.max()) > 0 else 1.0
    p = 1.0 / (s + eps)
    return torch.multinomial(p / p.sum(), r, replacement=False, generator=gen)


def _leverage_scores(w_hat: Tensor, n3: int, r: int) -> tuple[Tensor, Tensor]:
    """(row, column) leverage scores of rank r from the per-frequency SVD factors."""
    u, _, vh = _fourier_svd(w_hat, n3)  # (f, n1, k), (f, k, n2)
    weights = _freq_weights(n3, u.real.dtype, u.device)[:, None]
    rows = (u[..., :, :r].abs().square().sum(-1) * weights).sum(0)
    cols = (vh[..., :r, :].abs().square().sum(-2) * weights).sum(0)
    return rows, cols


def _sorted(idx: Tensor, device: torch.device) -> Tensor:
    return torch.sort(idx.to(torch.long)).values.to(device)


def select_indices(w: Tensor, rank: int, strategy: str = "topnorm", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Choose the horizontal (rows I) and lateral (cols J) slices of W (n1, n2, n3) for tensor CUR.

    Returns two sorted LongTensors on w's device with r = min(rank, n1, n2) distinct indices each
    (the core W[I][:, J] is square). Strategies: "topnorm" (top column scores = column norms summed
    over Fourier slices, then top rows within those columns; deterministic), "leverage" (t-SVD
    leverage scores; deterministic), "inverse" (sampling proportional to 1/norm, CURLoRA-style) and
    "uniform"; the sampled ones use a CPU torch.Generator(seed), so they match on every device.
    """
    _check_3d(w, "w", exact=True)
    if strategy not in SELECTION_STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; valid: {', '.join(SELECTION_STRATEGIES)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    n1, n2, n3 = w.shape
    if n1 == 0 or n2 == 0 or n3 == 0:
        raise ValueError(f"cannot select indices of an empty tensor of shape {tuple(w.shape)}")
    r = min(rank, n1, n2)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    if strategy == "uniform":
        cols = torch.randperm(n2, generator=gen)[:r]
        rows = torch.randperm(n1, generator=gen)[:r]
    elif strategy == "leverage":
        row_scores, col_scores = _leverage_scores(to_fourier(w.detach()), n3, r)
        cols, rows = _top(col_scores, r), _top(row_scores, r)
    else:
        w_hat = to_fourier(w.detach())
        col_scores = _slice_norm_scores(w_hat, n3, dim=0)
        cols = _top(col_scores, r) if strategy == "topnorm" else _inverse_sample(col_scores, r, gen)
        within = w_hat[:, cols.to(w.device), :]
        row_scores = _slice_norm_scores(within, n3, dim=1)
        rows = _top(row_scores, r) if strategy == "topnorm" else _inverse_sample(row_scores, r, gen)
    return _sorted(rows, w.device), _sorted(cols, w.device)


@dataclass
class CURFactors:
    """W ~ C * U * R with C = W[:, cols], U = t_pinv(W[rows][:, cols]) and R = W[rows]."""

    c: Tensor  # (n1, r, n3)
    u: Tensor  # (r, r, n3)
    r: Tensor  # (r, n2, n3)
    rows: Tensor  # (r,) sorted LongTensor I
    cols: Tensor  # (r,) sorted LongTensor J

    def reconstruct(self) -> Tensor:
        """C * U * R, shape (n1, n2, n3)."""
        return t_product(t_product(self.c, self.u), self.r)


def tensor_cur(w: Tensor, rank: int, strategy: str = "topnorm", seed: int = 0) -> CURFactors:
    """Tensor CUR of W (n1, n2, n3) with shared row/column indices; exact when the core's
    Fourier slices have the ranks of W's (e.g. generic W with rank >= tubal rank)."""
    rows, cols = select_indices(w, rank, strategy, seed)
    w = w.detach()
    c = w[:, cols, :]
    r = w[rows, :, :]
    u = t_pinv(r[:, cols, :])
    return CURFactors(c=c.clone(), u=u, r=r.clone(), rows=rows, cols=cols)
