"""Properties of the t-product algebra and tensor CUR against naive references (block-circulant
matrices and a direct circular convolution of frontal slices)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tcurlora.tensor_algebra import (
    SELECTION_STRATEGIES,
    CURFactors,
    block_circulant,
    fourier_product,
    from_fourier,
    select_indices,
    t_identity,
    t_pinv,
    t_product,
    t_svd,
    t_transpose,
    tensor_cur,
    to_fourier,
    tubal_rank,
)

PROPS = settings(max_examples=30, deadline=None)
DIM = st.integers(1, 4)
N3 = st.integers(1, 6)
SEED = st.integers(0, 2**20)
DTYPE = st.sampled_from([torch.float32, torch.float64])
SAMPLED = ("inverse", "uniform")


def randn(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def low_rank(
    seed: int, n1: int, n2: int, k: int, n3: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A tensor built as a product of (n1, k, n3) and (k, n2, n3) random factors: tubal rank k."""
    return t_product(randn(seed, n1, k, n3, dtype=dtype), randn(seed + 1, k, n2, n3, dtype=dtype))


def tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 2e-4


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, scale: float | None = None
) -> None:
    """max |actual - expected| <= rel * scale (default: the largest |expected|, at least 1)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
    err = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert err <= rel * scale, f"max error {err:.3e} > {rel * scale:.3e}"


def circular_conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C_j = sum_a A_a @ B_{(j - a) mod n3}, written as plain loops."""
    n3 = a.shape[-1]
    out = torch.zeros(a.shape[0], b.shape[1], n3, dtype=torch.float64)
    for j in range(n3):
        for s in range(n3):
            out[:, :, j] += a[:, :, s].double() @ b[:, :, (j - s) % n3].double()
    return out


def eye(n: int, n3: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return t_identity(n, n3, dtype=dtype)


# ----------------------------------------------------------------------------- t-product


@PROPS
@given(n1=DIM, n2=DIM, n4=DIM, n3=N3, seed=SEED, dtype=DTYPE)
def test_t_product_matches_block_circulant_and_circular_convolution(n1, n2, n4, n3, seed, dtype):
    a = randn(seed, n1, n2, n3, dtype=dtype)
    b = randn(seed + 7, n2, n4, n3, dtype=dtype)
    c = t_product(a, b)
    assert c.shape == (n1, n4, n3) and c.dtype == dtype
    scale = float(a.abs().sum() * b.abs().max()) + 1.0
    assert_close(block_circulant(c), block_circulant(a) @ block_circulant(b), tol(dtype), scale)
    assert_close(c, circular_conv(a, b), tol(dtype), scale)


@PROPS
@given(n1=DIM, n2=DIM, n4=DIM, n5=DIM, n3=N3, seed=SEED, dtype=DTYPE)
def test_associativity_and_identity(n1, n2, n4, n5, n3, seed, dtype):
    a = randn(seed, n1, n2, n3, dtype=dtype)
    b = randn(seed + 1, n2, n4, n3, dtype=dtype)
    c = randn(seed + 2, n4, n5, n3, dtype=dtype)
    scale = float(a.abs().sum() * b.abs().sum() * c.abs().max()) + 1.0
    assert_close(t_product(t_product(a, b), c), t_product(a, t_product(b, c)), tol(dtype), scale)
    assert_close(t_product(eye(n1, n3, dtype), a), a, tol(dtype))
    assert_close(t_product(a, eye(n2, n3, dtype)), a, tol(dtype))


@PROPS
@given(n1=DIM, n2=DIM, n4=DIM, n3=N3, seed=SEED, dtype=DTYPE)
def test_transpose(n1, n2, n4, n3, seed, dtype):
    a = randn(seed, n1, n2, n3, dtype=dtype)
    b = randn(seed + 3, n2, n4, n3, dtype=dtype)
    at = t_transpose(a)
    assert at.shape == (n2, n1, n3)
    assert torch.equal(block_circulant(at), block_circulant(a).T)
    assert torch.equal(t_transpose(at), a)
    scale = float(a.abs().sum() * b.abs().max()) + 1.0
    assert_close(t_transpose(t_product(a, b)), t_product(t_transpose(b), at), tol(dtype), scale)


def test_transpose_slice_order_explicitly():
    a = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    at = t_transpose(a)
    for j, src in enumerate([0, 3, 2, 1]):
        assert torch.equal(at[:, :, j], a[:, :, src].T)


def test_identity_tensor_layout():
    i = t_identity(3, 4, dtype=torch.float64)
    assert i.shape == (3, 3, 4) and i.dtype == torch.float64
    assert torch.equal(i[:, :, 0], torch.eye(3, dtype=torch.float64))
    assert torch.count_nonzero(i[:, :, 1:]) == 0
    assert torch.equal(block_circulant(i), torch.eye(12, dtype=torch.float64))


def test_block_circulant_layout():
    a = torch.stack([torch.full((1, 1), float(k)) for k in range(3)], dim=-1)  # slices 0, 1, 2
    expected = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    assert torch.equal(block_circulant(a), expected)


@pytest.mark.parametrize("n3", [1, 2, 5, 6])
def test_fourier_round_trip_and_shapes(n3):
    a = randn(n3, 3, 2, n3)
    a_hat = to_fourier(a)
    assert a_hat.shape == (3, 2, n3 // 2 + 1) and a_hat.dtype == torch.complex128
    assert torch.allclose(from_fourier(a_hat, n3), a, atol=1e-12)
    assert to_fourier(a.float()).dtype == torch.complex64
    b = randn(n3 + 1, 2, 4, n3)
    c = from_fourier(fourier_product(a_hat, to_fourier(b)), n3)
    assert torch.allclose(c, circular_conv(a, b), atol=1e-10)


def test_dtype_preserved_and_low_precision_computed_in_float32():
    a, b = randn(0, 3, 4, 5), randn(1, 4, 2, 5)
    assert t_product(a.float(), b.float()).dtype == torch.float32
    assert t_product(a, b).dtype == torch.float64
    half = t_product(a.half(), b.half())
    assert half.dtype == torch.float16
    assert torch.allclose(half.double(), t_product(a.half().double(), b.half().double()), atol=2e-2)


def test_gradients_reach_a_core_through_the_t_product():
    """The adapter trains dU in C * dU * R; the product must be differentiable in every factor."""
    c, r = randn(0, 4, 2, 3), randn(1, 2, 5, 3)
    du = randn(2, 2, 2, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: t_product(t_product(c, u), r), (du,))


# ----------------------------------------------------------------------------- batching


@PROPS
@given(batch=st.integers(1, 3), n1=DIM, n2=DIM, n3=N3, seed=SEED)
def test_batched_inputs_equal_per_item_results(batch, n1, n2, n3, seed):
    a = randn(seed, batch, n1, n2, n3)
    b = randn(seed + 1, batch, n2, 3, n3)
    shared = randn(seed + 2, n2, 3, n3)
    prod, prod_bcast = t_product(a, b), t_product(a, shared)
    pinv, trans, bc = t_pinv(a), t_transpose(a), block_circulant(a)
    u, s, v = t_svd(a)
    for i in range(batch):
        assert_close(prod[i], t_product(a[i], b[i]), 1e-12)
        assert_close(prod_bcast[i], t_product(a[i], shared), 1e-12)
        assert torch.equal(trans[i], t_transpose(a[i]))
        assert torch.equal(bc[i], block_circulant(a[i]))
        assert_close(pinv[i], t_pinv(a[i]), 1e-9, scale=float(pinv[i].abs().max()) + 1.0)
        assert_close(t_product(t_product(u[i], s[i]), t_transpose(v[i])), a[i], 1e-10)
    assert tubal_rank(a) == max(tubal_rank(a[i]) for i in range(batch))


def test_batch_dims_can_be_several():
    a = randn(0, 2, 3, 4, 5, 6)
    b = randn(1, 3, 5, 2, 6)  # broadcasts against (2, 3)
    c = t_product(a, b)
    assert c.shape == (2, 3, 4, 2, 6)
    assert_close(c[1, 2], t_product(a[1, 2], b[2]), 1e-12)


# ----------------------------------------------------------------------------- pseudo-inverse


def assert_moore_penrose(a: torch.Tensor, x: torch.Tensor, rel: float) -> None:
    """The four Moore-Penrose conditions, with backward-error scales."""
    na = float(torch.linalg.matrix_norm(block_circulant(a), ord=2))
    nx = float(torch.linalg.matrix_norm(block_circulant(x), ord=2)) if x.numel() else 0.0
    ax, xa = t_product(a, x), t_product(x, a)
    assert_close(t_product(ax, a), a, rel, scale=na * na * nx + na)
    assert_close(t_product(xa, x), x, rel, scale=nx * nx * na + nx)
    assert_close(t_transpose(ax), ax, rel, scale=na * nx + 1.0)
    assert_close(t_transpose(xa), xa, rel, scale=na * nx + 1.0)


@PROPS
@given(n1=DIM, n2=DIM, n3=N3, seed=SEED, dtype=DTYPE)
def test_t_pinv_moore_penrose_full_rank(n1, n2, n3, seed, dtype):
    a = randn(seed, n1, n2, n3, dtype=dtype)
    x = t_pinv(a)
    assert x.shape == (n2, n1, n3) and x.dtype == dtype
    assert_moore_penrose(a, x, 1e-10 if dtype == torch.float64 else 1e-4)


@PROPS
@given(n1=st.integers(2, 5), n2=st.integers(2, 5), n3=N3, seed=SEED, dtype=DTYPE, data=st.data())
def test_t_pinv_moore_penrose_rank_deficient(n1, n2, n3, seed, dtype, data):
    k = data.draw(st.integers(1, min(n1, n2) - 1))
    a = low_rank(seed, n1, n2, k, n3, dtype=torch.float64).to(dtype)
    x = t_pinv(a, rtol=None if dtype == torch.float64 else 1e-4)
    assert tubal_rank(x) == k
    assert_moore_penrose(a, x, 1e-9 if dtype == torch.float64 else 1e-3)


@pytest.mark.parametrize("n3", [1, 2, 3, 4])
def test_t_pinv_equals_pinv_of_block_circulant(n3):
    a = low_rank(3, 4, 5, 2, n3)
    expected = torch.linalg.pinv(block_circulant(a))
    assert_close(block_circulant(t_pinv(a)), expected, 1e-10, scale=float(expected.abs().max()) + 1.0)


def test_t_pinv_tolerance_is_relative_to_the_whole_tensor_not_each_slice():
    """Fourier slices that are pure round-off next to the others are dropped, as pinv(bcirc) does."""
    a = randn(0, 3, 4, 1).expand(3, 4, 6) + 1e-15 * randn(1, 3, 4, 6)  # only DC is signal
    x = t_pinv(a)
    expected = torch.linalg.pinv(block_circulant(a))
    assert float(x.abs().max()) < 10.0
    assert_close(block_circulant(x), expected, 1e-10)
    assert tubal_rank(a) == 3 and tubal_rank(x) == 3


def test_t_pinv_of_square_invertible_is_the_inverse_and_of_zero_is_zero():
    a = randn(5, 3, 3, 4) + 4 * t_identity(3, 4, dtype=torch.float64)
    assert_close(t_product(a, t_pinv(a)), eye(3, 4), 1e-12)
    zero = torch.zeros(2, 3, 4, dtype=torch.float64)
    assert torch.equal(t_pinv(zero), torch.zeros(3, 2, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- t-SVD and tubal rank


@PROPS
@given(n1=DIM, n2=DIM, n3=N3, seed=SEED, dtype=DTYPE, full=st.booleans())
def test_t_svd_reconstructs_and_is_orthogonal(n1, n2, n3, seed, dtype, full):
    a = randn(seed, n1, n2, n3, dtype=dtype)
    u, s, v = t_svd(a, full_matrices=full)
    k = min(n1, n2)
    if full:
        assert (u.shape, s.shape, v.shape) == ((n1, n1, n3), (n1, n2, n3), (n2, n2, n3))
    else:
        assert (u.shape, s.shape, v.shape) == ((n1, k, n3), (k, k, n3), (n2, k, n3))
    assert u.dtype == s.dtype == v.dtype == dtype
    assert_close(t_product(t_product(u, s), t_transpose(v)), a, tol(dtype), scale=float(a.abs().sum()) + 1.0)
    assert_close(t_product(t_transpose(u), u), eye(u.shape[1], n3, dtype), tol(dtype))
    assert_close(t_product(t_transpose(v), v), eye(v.shape[1], n3, dtype), tol(dtype))
    if full:  # square t-orthogonal tensors: also U * U^T = I
        assert_close(t_product(u, t_transpose(u)), eye(n1, n3, dtype), tol(dtype))
        assert_close(t_product(v, t_transpose(v)), eye(n2, n3, dtype), tol(dtype))
    off = s.clone()
    off.diagonal(dim1=0, dim2=1).zero_()
    assert float(off.abs().max()) <= tol(dtype) * (float(s.abs().max()) + 1.0)  # f-diagonal
    sv = torch.linalg.svdvals(to_fourier(a).movedim(-1, 0))  # descending singular values per slice
    s_hat = torch.diagonal(to_fourier(s), dim1=0, dim2=1)  # (f, k)
    assert_close(s_hat.real, sv, tol(dtype), scale=float(sv.max()) + 1.0 if sv.numel() else 1.0)
    assert float(s_hat.imag.abs().max()) <= tol(dtype) * (float(sv.max()) + 1.0)


def test_t_svd_dc_and_nyquist_factors_are_real_even_for_repeated_slices():
    """A tensor whose Fourier slices are DC/Nyquist only (n3 = 2) and one constant along mode 3."""
    for a in (randn(0, 3, 2, 2), randn(1, 3, 2, 1).expand(3, 2, 4).contiguous()):
        u, s, v = t_svd(a)
        assert_close(t_product(t_product(u, s), t_transpose(v)), a, 1e-12)
        assert_close(t_product(t_transpose(u), u), eye(2, a.shape[-1]), 1e-12)


@pytest.mark.parametrize("n3", [1, 2, 3, 4, 5])
def test_t_svd_is_correct_for_any_phase_gauge_of_the_complex_svd(monkeypatch, n3):
    """Complex SVD factors are unique only up to phases e^{i theta} per singular pair, and backends
    (LAPACK, cuSOLVER) differ. Whatever phases come back, the real t-SVD factors must stay right;
    this fails if the real DC/Nyquist slices are decomposed as complex matrices."""
    real_svd = torch.linalg.svd
    gen = torch.Generator().manual_seed(n3)

    def rotated_svd(x, full_matrices=True, **kwargs):
        u, s, vh = real_svd(x, full_matrices=full_matrices, **kwargs)
        if not x.is_complex():
            return u, s, vh
        k = s.shape[-1]
        theta = torch.rand(*s.shape[:-1], k, generator=gen, dtype=torch.float64) * 6.283
        phase = torch.polar(torch.ones_like(theta), theta).to(u.dtype)
        u, vh = u.clone(), vh.clone()
        u[..., :k] *= phase.unsqueeze(-2)
        vh[..., :k, :] *= phase.conj().unsqueeze(-1)
        return u, s, vh

    monkeypatch.setattr(torch.linalg, "svd", rotated_svd)
    a = randn(n3, 4, 3, n3)
    for full in (False, True):
        u, s, v = t_svd(a, full_matrices=full)
        assert_close(t_product(t_product(u, s), t_transpose(v)), a, 1e-12)
        assert_close(t_product(t_transpose(u), u), eye(u.shape[1], n3), 1e-12)
    x = t_pinv(a)
    assert_close(block_circulant(x), torch.linalg.pinv(block_circulant(a)), 1e-10)


@PROPS
@given(n1=st.integers(1, 6), n2=st.integers(1, 6), n3=N3, seed=SEED, data=st.data())
def test_tubal_rank_of_a_product_of_rank_k_factors_is_k(n1, n2, n3, seed, data):
    k = data.draw(st.integers(1, min(n1, n2)))
    a = low_rank(seed, n1, n2, k, n3)
    assert tubal_rank(a) == k
    assert tubal_rank(a.float()) == k
    _, s, _ = t_svd(a)
    tubes = torch.linalg.vector_norm(torch.diagonal(s, dim1=0, dim2=1), dim=0)  # one norm per tube
    assert int((tubes > 1e-9 * float(tubes.max())).sum()) == k


def test_tubal_rank_edge_cases_and_absolute_tolerance():
    assert tubal_rank(torch.zeros(3, 4, 5)) == 0
    a = torch.zeros(3, 3, 2, dtype=torch.float64)
    a[0, 0, 0], a[1, 1, 0] = 10.0, 1e-3  # Fourier singular values 10 and 1e-3 in both slices
    assert tubal_rank(a) == 2
    assert tubal_rank(a, tol=1e-2) == 1
    assert tubal_rank(a, tol=100.0) == 0


# ----------------------------------------------------------------------------- tensor CUR


@pytest.mark.parametrize("strategy", SELECTION_STRATEGIES)
@pytest.mark.parametrize("n3", [1, 2, 3, 4, 7])
def test_tensor_cur_is_exact_when_rank_reaches_the_tubal_rank(strategy, n3):
    w = low_rank(10 + n3, 12, 9, 3, n3)
    for rank in (3, 5):
        f = tensor_cur(w, rank, strategy, seed=4)
        assert isinstance(f, CURFactors)
        assert f.c.shape == (12, rank, n3) and f.u.shape == (rank, rank, n3) and f.r.shape == (rank, 9, n3)
        assert torch.equal(f.c, w[:, f.cols, :]) and torch.equal(f.r, w[f.rows, :, :])
        assert torch.equal(f.u, t_pinv(w[f.rows][:, f.cols]))
        assert_close(f.reconstruct(), w, 1e-8)


@pytest.mark.parametrize("strategy", SELECTION_STRATEGIES)
def test_tensor_cur_float32(strategy):
    w = low_rank(2, 10, 8, 2, 6, dtype=torch.float64)
    f = tensor_cur(w.float(), 2, strategy, seed=1)
    assert f.c.dtype == f.u.dtype == f.r.dtype == torch.float32
    rel = float((f.reconstruct().double() - w).norm() / w.norm())
    assert rel < 1e-3


def test_tensor_cur_below_the_tubal_rank_is_an_approximation_not_exact():
    w = low_rank(0, 10, 10, 4, 3)
    err = float((tensor_cur(w, 2).reconstruct() - w).norm() / w.norm())
    assert 1e-3 < err < 10.0


@PROPS
@given(n1=st.integers(1, 12), n2=st.integers(1, 12), n3=N3, rank=st.integers(1, 15), seed=SEED)
def test_select_indices_are_sorted_distinct_and_clamped(n1, n2, n3, rank, seed):
    w = randn(seed, n1, n2, n3)
    r = min(rank, n1, n2)
    for strategy in SELECTION_STRATEGIES:
        rows, cols = select_indices(w, rank, strategy, seed=seed)
        for idx, n in ((rows, n1), (cols, n2)):
            assert idx.dtype == torch.long and idx.shape == (r,)
            assert torch.equal(idx, torch.sort(idx).values)
            assert len(set(idx.tolist())) == r and 0 <= int(idx.min()) and int(idx.max()) < n


@pytest.mark.parametrize("strategy", SELECTION_STRATEGIES)
def test_selection_is_reproducible_and_seeded_ones_vary(strategy):
    w = randn(0, 40, 50, 4)
    first = select_indices(w, 6, strategy, seed=3)
    again = select_indices(w.clone(), 6, strategy, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    other = select_indices(w, 6, strategy, seed=4)
    same = all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    assert same == (strategy not in SAMPLED)  # deterministic ones ignore the seed


def test_topnorm_takes_the_largest_columns_then_the_largest_rows_within_them():
    w = torch.zeros(6, 8, 3, dtype=torch.float64)
    w[:, 5, :], w[:, 2, :] = 5.0, 3.0  # dominant columns 5 and 2
    w[4, [2, 5], :] += 10.0  # within those columns rows 4 and 1 dominate
    w[1, [2, 5], :] += 7.0
    w[0, [0, 1, 3, 4, 6, 7], :] = 8.0  # row 0 beats row 1 over ALL columns, not within 2 and 5
    assert torch.linalg.vector_norm(w[0]) > torch.linalg.vector_norm(w[1])
    rows, cols = select_indices(w, 2, "topnorm")
    assert cols.tolist() == [2, 5]
    assert rows.tolist() == [1, 4]


def test_topnorm_scores_sum_norms_over_all_fourier_slices():
    """Column 0 has the larger Frobenius norm; column 1 has the larger sum of Fourier norms."""
    w = torch.zeros(1, 2, 4, dtype=torch.float64)
    w[0, 0, :] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # |FFT| = 3, 3, 3, 3 -> 12 ; norm 3
    w[0, 1, :] = torch.tensor([2.0, 2.0, 0.0, 0.0])  # |FFT| = 4, 2.83, 0, 2.83 -> 9.66 ; norm 2.83
    assert select_indices(w, 1, "topnorm")[1].tolist() == [0]
    w[0, 1, :] = torch.tensor([2.5, 2.5, 0.0, 0.0])  # |FFT| = 5, 3.54, 0, 3.54 -> 12.07
    assert select_indices(w, 1, "topnorm")[1].tolist() == [1]


def test_leverage_finds_the_columns_and_rows_spanning_the_tensor():
    w = torch.zeros(7, 9, 4, dtype=torch.float64)
    core = randn(0, 2, 2, 4)
    w[1, 2], w[1, 6], w[5, 2], w[5, 6] = core[0, 0], core[0, 1], core[1, 0], core[1, 1]
    assert_close(tensor_cur(w, 2, "leverage").reconstruct(), w, 1e-8)
    w[3, 0] += 1e-3  # small elsewhere: lower leverage than the support
    rows, cols = select_indices(w, 2, "leverage")
    assert rows.tolist() == [1, 5] and cols.tolist() == [2, 6]


def test_inverse_sampling_avoids_dominant_columns():
    w = randn(0, 20, 30, 3)
    big = [0, 7, 13, 21, 29]
    w[:, big, :] *= 1e4
    for seed in range(5):
        _, cols = select_indices(w, 5, "inverse", seed=seed)
        assert not set(cols.tolist()) & set(big)


def test_uniform_sampling_matches_its_generator():
    w = randn(0, 10, 12, 2)
    gen = torch.Generator().manual_seed(9)
    expected_cols = torch.sort(torch.randperm(12, generator=gen)[:4]).values
    expected_rows = torch.sort(torch.randperm(10, generator=gen)[:4]).values
    rows, cols = select_indices(w, 4, "uniform", seed=9)
    assert torch.equal(cols, expected_cols) and torch.equal(rows, expected_rows)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn",
    [to_fourier, t_transpose, t_pinv, t_svd, tubal_rank, block_circulant, lambda a: t_product(a, a)],
)
def test_non_3d_input_is_a_value_error(fn):
    with pytest.raises(ValueError, match=r"at least 3 dims"):
        fn(torch.zeros(3, 4))


def test_cur_needs_exactly_three_dims_and_a_known_strategy():
    with pytest.raises(ValueError, match=r"exactly 3 dims"):
        select_indices(torch.zeros(2, 3, 4, 5), 2)
    with pytest.raises(ValueError, match=r"exactly 3 dims"):
        tensor_cur(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"'bogus'.*topnorm, leverage, inverse, uniform"):
        tensor_cur(torch.zeros(3, 4, 2), 2, strategy="bogus")
    with pytest.raises(ValueError, match=r"rank must be a positive integer"):
        select_indices(torch.zeros(3, 4, 2), 0)


def test_shape_mismatches_are_value_errors():
    with pytest.raises(ValueError, match=r"cannot t-multiply"):
        t_product(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"cannot t-multiply"):
        t_product(torch.zeros(2, 3, 4), torch.zeros(3, 3, 5))
    with pytest.raises(ValueError, match=r"cannot multiply Fourier"):
        fourier_product(torch.zeros(2, 3, 3, dtype=torch.cfloat), torch.zeros(3, 3, 2, dtype=torch.cfloat))
    with pytest.raises(ValueError, match=r"2 frequencies but n3=5 needs 3"):
        from_fourier(torch.zeros(2, 3, 2, dtype=torch.cfloat), 5)
