"""Weighted k-nearest-neighbour classification, the rule of InstDisc (Wu et al., 2018) and DINO.

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples,
and each neighbour votes for its class with weight ``exp(similarity / T)``. The class with the
largest total vote wins (ties go to the lower class index).

**Which neighbours, exactly.** The similarity of test row ``i`` and train row ``j`` is the float32
dot product ``f(i, j)`` of the two normalised float32 vectors, computed pair by pair by one fixed
dot-product kernel (:func:`_exact_scores`), so each pair always gets the same value bit for bit.
Neighbours are ranked by ``f`` descending, equal ``f`` by the lower train index; the weights are
``exp((f - f_max) / T)``.

**How they are found without a test x train matrix.** Test rows are processed in chunks. Each
chunk is one matrix multiply against the whole training set, giving approximate scores ``o``: in
float32 (``precision="fp32"``) or in bfloat16 (``"bf16-prefilter"``, several times faster where
the hardware has bf16 matrix units). For each row the scores give a rigorous candidate set:
``|f - o| <= c_i + rel * |o|`` (proved in :func:`_error_bounds`), so every train row that can be
among the exact top ``k`` has ``o >= tau_i`` (:func:`_select_candidates`). Only the candidates get
exact ``f``, and the neighbours are the top ``k`` of them -- by construction the same neighbours,
weights and predictions as an exhaustive exact search, whichever precision found the candidates.
A row whose bf16 candidate set is crowded (many scores within the bf16 error of its ``k``-th) is
redone with float32 scores, whose window is ~100x narrower; every computed candidate is checked
against the bound at run time, and a violation (a matmul kernel that does not accumulate in
float32, say) raises instead of returning a wrong neighbour.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16))
>>> y = rng.integers(0, 3, size=200)
>>> x = centers[y] + 0.3 * rng.normal(size=(200, 16))
>>> pred = knn_predict(x[:150], y[:150], x[150:], ks=[5, 20], temperature=0.07, num_classes=3)
>>> sorted(pred), pred[5].shape
([5, 20], (50, 3))
>>> float((pred[5][:, 0] == y[150:]).mean())
1.0
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .classification import topk_accuracy

__all__ = [
    "PRECISIONS",
    "knn_metrics",
    "knn_neighbours",
    "knn_predict",
    "knn_predict_from_neighbours",
    "resolve_precision",
]

#: similarity-block size (elements) per chunk when ``chunk_size`` is not given: about 64 MB of
#: float32 on a CPU (keeps the block near the caches' reach; measured fastest on 50k-row training
#: sets), 512 MB on a GPU (fewer, larger kernels)
_BLOCK_ELEMENTS = {"cpu": 2**24, "cuda": 2**27}
#: ...but never fewer test rows per block than this: each block reads the whole (normalised)
#: training set once, so with rows ~ 1/n_train the bank would be read ~n_train times and the
#: time grow as n_train^2 (a multiply of few rows is bound by memory bandwidth: 16 rows per block
#: at 1M x 128 spent 1.7 s of 2.5 s re-reading the bank, 256 rows cut it to 1.3 s in all). The
#: block is then at most 256 x n_train scores: still linear in the training set, never test x train
_MIN_ROWS = 256

#: the similarity passes ``precision`` accepts; ``auto`` picks ``bf16-prefilter`` where bf16
#: matrix units make it faster (see :func:`resolve_precision`), else ``fp32``
PRECISIONS = ("auto", "fp32", "bf16-prefilter")

_U32 = 2.0**-24  # unit roundoff of float32 (24 significant bits, round to nearest)
_UBF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest even)
_TINY = 2.0**-126  # smallest normal float32 / bfloat16: bounds each flushed subnormal
#: a bf16 row is redone in float32 when it has more than ``2 * k + _CROWDED`` candidates
_CROWDED = 256
#: (row, candidate) pairs whose exact score is computed at once (bounds the gather's memory)
_PAIRS_PER_STEP = 2**14


@functools.cache
def _cpu_has_amx_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return "amx_bf16" in line.split(":", 1)[1].split()
    return False


def resolve_precision(precision: str, device: Any = "cpu") -> str:
    """The similarity pass ``precision`` means on ``device``: ``"fp32"`` or ``"bf16-prefilter"``.

    ``auto`` is a conservative rule, not a timing: bf16 where its matrix multiply is known to be
    several times faster than float32 -- an x86 CPU with AMX-BF16 (measured 2.7-4x at 10k x 512
    @ 512 x 50k on 2 cores) or a CUDA GPU of compute capability 8.0 or newer -- else fp32. Either
    precision gives the same neighbours (see the module docstring); only the time differs.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        fast = torch.cuda.get_device_capability(dev) >= (8, 0)
    else:
        fast = dev.type == "cpu" and torch.backends.mkldnn.is_available() and _cpu_has_amx_bf16()
    return "bf16-prefilter" if fast else "fp32"


@contextlib.contextmanager
def _ieee_matmuls(device: Any) -> Iterator[None]:
    """float32 matmuls in full float32 and bf16 ones accumulated in float32 (no TF32, no bf16
    split-K reductions on a GPU, no reduced-precision float32 on a CPU), as the bounds assume."""
    import torch

    saved = torch.get_float32_matmul_precision()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        saved_bf16 = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    if saved != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if saved != "highest":
            torch.set_float32_matmul_precision(saved)
        if cuda:
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = saved_bf16


def _as_float32_tensor(x: Any, device: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    # a copy only when needed (other dtype, non-contiguous, or read-only such as a memory map)
    arr = np.require(np.asarray(x), dtype=np.float32, requirements=["C", "W"])
    return torch.from_numpy(arr).to(device)


def _norm_upper(x: Any) -> Any:
    """An upper bound on each row's Euclidean norm (float64 [R]) from float32 arithmetic: the sum
    of squares of ``D`` terms is within a factor ``1 + gamma_(D+1)`` of exact (all terms positive;
    squares that underflow lose under ``D 2^-126`` in all), the square root adds one rounding."""
    import torch

    d = x.shape[1]
    gamma = (d + 1) * _U32 / (1 - (d + 1) * _U32)
    sq = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], 4096):  # row chunks: no full-size temporary
        part = x[s : s + 4096]
        torch.sum(part * part, dim=1, out=sq[s : s + 4096])
    return (sq.double() * (1 + gamma) + d * _TINY).sqrt() * (1 + 2 * _U32)


def _error_bounds(a: Any, b_max: Any, d: int, r_a: Any = None, r_b_max: Any = None) -> tuple[Any, float]:
    """Per test row ``i``: ``c_i`` (float64 [M]) and ``rel`` with ``|f(i, j) - o(i, j)| <= c_i +
    rel * |o(i, j)|`` for every train row ``j``, where ``o = test_lp @ train_lp.T`` is the
    approximate score the matmul returns and ``f`` the exact score of :func:`_exact_scores`.

    Notation: ``a`` = test row, ``b`` = train row (the normalised float32 vectors), ``D`` their
    length, ``u = 2^-24``, ``gamma = D u / (1 - D u)``, ``||.||`` the Euclidean norm.

    1. ``f`` sums ``D`` rounded float32 products in some order, so (the standard bound for any
       summation order, with or without FMA) ``|f - a.b| <= gamma sum_d |a_d b_d| <= gamma
       ||a|| ||b||`` (Cauchy-Schwarz).
    2. float32 pass (``o`` = float32 matmul): the same bound holds for ``o``, so
       ``|f - o| <= 2 gamma ||a|| ||b||``; ``rel = 0``.
    3. bf16 pass: ``a~ = bf16(a)`` and ``b~ = bf16(b)`` (round to nearest); the residuals
       ``r_a = a - a~`` and ``r_b = b - b~`` are exact in float32 (a float32 and its bf16 rounding
       share the exponent, Sterbenz). Exactly, ``a.b - a~.b~ = a~.r_b + r_a.b~ + r_a.r_b``, so
       ``|a.b - a~.b~| <= ||a~|| ||r_b|| + ||r_a|| ||b~|| + ||r_a|| ||r_b||`` (Cauchy-Schwarz). The
       norms are measured, not assumed: ``||r_b|| <= 2^-8 ||b||`` always, and about half of it in
       practice, which halves the window against the textbook ``2 * 2^-8``.
       The matmul multiplies bf16 pairs exactly in float32 (8 + 8 significant bits fit in 24) and
       accumulates in float32 (``s``): ``|s - a~.b~| <= gamma ||a~|| ||b~|| + 2 D 2^-126`` (the
       last term covers subnormal products or sums flushed to zero). It then rounds ``s`` to bf16:
       ``o = s (1 + e)``, ``|e| <= 2^-8``, so ``|s - o| <= 2^-8 |s| <= rel |o|`` with ``rel =
       2^-8 / (1 - 2^-8)`` (plus ``2^-126`` should ``o`` underflow).
       Summing 1 and 3: ``c_i = gamma (||a|| ||b||max + ||a~|| ||b~||max) + ||a~|| ||r_b||max +
       ||r_a|| ||b~||max + ||r_a|| ||r_b||max + (2 D + 2) 2^-126``, maxima over the train rows.

    Arguments: upper bounds on ``||a||`` per test row (float64 [M]), on ``||b||max``, the width
    ``D``, and for the bf16 pass on ``||r_a||`` per test row and ``||r_b||max``
    (:func:`_prepare`); ``||a~|| <= ||a|| + ||r_a||`` (triangle inequality), likewise for
    ``b~``. Every norm is an upper bound (:func:`_norm_upper`), and ``c_i`` is inflated by ``1e-6``
    relative to cover the float64 arithmetic here and in :func:`_thresholds`. The bound is checked
    on every computed candidate at run time (:func:`_check_bound`).
    """
    gamma = d * _U32 / (1 - d * _U32)
    if r_a is None:
        c = 2 * gamma * a * b_max
        rel = 0.0
    else:
        a_lp, b_lp_max = a + r_a, b_max + r_b_max
        c = gamma * (a * b_max + a_lp * b_lp_max) + a_lp * r_b_max + r_a * b_lp_max + r_a * r_b_max
        rel = _UBF16 / (1 - _UBF16)
    return c * (1 + 1e-6) + (2 * d + 2) * _TINY, rel


def _prepare(x: Any, device: Any, bf16: bool) -> tuple[Any, float, Any, Any]:
    """In one pass over row chunks (cache-sized, no full-size temporaries): the L2-normalised
    float32 rows ``y = x / max(||x||, 1e-12)``, an upper bound on every ``||y||``, and for the bf16
    pass their bf16 rounding and upper bounds on the residual norms ``||y - bf16(y)||`` (float64
    [R]; else ``None``, ``None``).

    The norm bound is proved, not measured: a float32 Euclidean norm of ``D`` terms is within a
    factor ``1 +- e`` of exact, ``e = gamma_(D+1)`` (the sum of squares of positive terms, then one
    rounding for the square root; torch's ``vector_norm`` is allowed twice that), and each division
    rounds once (``u``), so ``||y|| <= (1 + u) / (1 - 2 e)``. Squares lost to underflow only
    matter for ``||x|| < 1e-19``, which the clamp at ``1e-12`` makes shorter, not longer. The
    residual norms take the same ``1 + 2 e`` margin plus ``D 2^-126`` for underflow.
    """
    import torch

    src = _as_float32_tensor(x, device)
    d = src.shape[1]
    e = (d + 1) * _U32 / (1 - (d + 1) * _U32)
    bound = (1 + _U32) / (1 - 2 * e) * (1 + 1e-6)
    unit = torch.empty_like(src)
    low = torch.empty(src.shape, dtype=torch.bfloat16, device=src.device) if bf16 else None
    res = torch.empty(src.shape[0], dtype=torch.float64, device=src.device) if bf16 else None
    step = 2048
    for s in range(0, src.shape[0], step):
        part, out = src[s : s + step], unit[s : s + step]
        norm = torch.linalg.vector_norm(part, dim=1, keepdim=True)
        torch.div(part, norm.clamp_min_(1e-12), out=out)
        if bf16:
            low[s : s + step] = out
            r = torch.linalg.vector_norm(out - low[s : s + step], dim=1).double()
            res[s : s + step] = r * (1 + 2 * e) * (1 + 1e-6) + math.sqrt(d * _TINY)
    return unit, bound, low, res


def _thresholds(kth: Any, c: Any, rel: float) -> Any:
    """Per row, a ``tau`` (in ``kth``'s dtype) such that every train row that can be among the
    exact top-k has ``o >= tau``, given ``kth`` (a lower bound on the row's k-th largest ``o``).

    With ``up(o) = o + rel |o| + c`` and ``lo(o) = o - rel |o| - c`` (increasing in ``o``),
    ``lo(o) <= f <= up(o)``. The ``k`` rows with ``o >= kth`` have ``f >= lo(kth)``, so the k-th
    largest ``f`` is ``>= lo(kth)``; a top-k row ``j`` then has ``up(o_j) >= f_j >= lo(kth)``, i.e.
    ``o_j >= up^-1(lo(kth)) = tau``. ``tau`` is rounded down (an absolute ``1e-12`` in float64,
    then towards -inf into the scores' dtype), which only enlarges the candidate set.
    """
    import torch

    k64 = kth.double()
    v = k64 - rel * k64.abs() - 2 * c  # lo(kth) - c
    tau = torch.where(v >= 0, v / (1 + rel), v / (1 - rel)) - 1e-12 * (1 + v.abs())
    low = tau.to(kth.dtype)
    return torch.where(low.double() > tau, torch.nextafter(low, torch.full_like(low, -math.inf)), low)


def _select_candidates(scores: Any, k: int, c: Any, rel: float) -> tuple[Any, Any, Any]:
    """The candidate (row, column) pairs of a score block [R, N]: every pair with ``o >= tau_row``
    (:func:`_thresholds`), and their scores ``o``; each row gets at least ``k`` of them.

    On a CPU the columns are cut into 16 strided slices (block ``j`` holds columns ``j, j + B, j +
    2B, ...``) so one vectorised elementwise max over the slices gives every block's maximum, and
    the blocks likewise into super-blocks (at least ``32 k`` of them). The k-th largest super-block
    maximum is a lower bound on the row's k-th largest score (the k best super-blocks each hold a
    score at least that large); only super-blocks, then blocks, whose maximum reaches ``tau`` are
    opened (bf16 scores are read as int16 for speed: :func:`_select_bf16_as_int16`). Elsewhere (a
    GPU, or a training set too small to prune) an exact ``topk`` gives the k-th largest score and
    one comparison the candidates.
    """
    import torch

    slices = 16
    blocks = scores.shape[1] // slices
    if scores.device.type != "cpu" or blocks < 4 * k:
        kth = scores.topk(k, dim=1, sorted=False).values.amin(dim=1)
        tau = _thresholds(kth, c, rel)
        rows, cols = (scores >= tau[:, None]).nonzero(as_tuple=True)
        return rows, cols, scores[rows, cols]
    if scores.dtype == torch.bfloat16:
        picked = _select_bf16_as_int16(scores, k, c, rel, slices)
        if picked is not None:
            return picked
    return _select_pruned(scores, k, slices, lambda kth: _thresholds(kth, c, rel))


def _select_pruned(scores: Any, k: int, slices: int, threshold: Any) -> tuple[Any, Any, Any]:
    """The block-pruned search of :func:`_select_candidates` on ``scores`` (any ordered dtype;
    ``threshold`` maps each row's k-th lower bound, in that dtype, to ``tau``)."""
    import torch

    r, n = scores.shape
    blocks = n // slices
    body = scores[:, : blocks * slices].view(r, slices, blocks)
    block_max = body.amax(dim=1)  # [r, blocks]
    group = max(1, blocks // (32 * k))  # blocks per super-block
    supers = blocks // group
    grouped = block_max[:, : supers * group].view(r, group, supers)
    super_max = grouped.amax(dim=1) if group > 1 else block_max
    loose = torch.cat([block_max[:, supers * group :], scores[:, blocks * slices :]], dim=1)
    pool = torch.cat([super_max, loose], dim=1) if loose.shape[1] else super_max
    kth = pool.topk(k, dim=1, sorted=False).values.amin(dim=1)
    tau = threshold(kth)
    # super-blocks -> blocks -> columns
    s_rows, s_ids = (super_max >= tau[:, None]).nonzero(as_tuple=True)
    if group > 1:
        pick, g = (grouped[s_rows, :, s_ids] >= tau[s_rows, None]).nonzero(as_tuple=True)
        b_rows, b_ids = s_rows[pick], g * supers + s_ids[pick]
    else:
        b_rows, b_ids = s_rows, s_ids
    vals = body[b_rows, :, b_ids]  # [p, slices]
    pick, sl = (vals >= tau[b_rows, None]).nonzero(as_tuple=True)
    rows, cols, o = [b_rows[pick]], [sl * blocks + b_ids[pick]], [vals[pick, sl]]
    if loose.shape[1]:
        l_rows, l_ids = (loose >= tau[:, None]).nonzero(as_tuple=True)
        left = blocks - supers * group  # blocks outside the super-blocks, then the tail columns
        is_block = l_ids < left
        lb_rows, lb_ids = l_rows[is_block], l_ids[is_block] + supers * group
        vals = body[lb_rows, :, lb_ids]
        pick, sl = (vals >= tau[lb_rows, None]).nonzero(as_tuple=True)
        rows += [lb_rows[pick], l_rows[~is_block]]
        cols += [sl * blocks + lb_ids[pick], l_ids[~is_block] - left + blocks * slices]
        o += [vals[pick, sl], loose[l_rows[~is_block], l_ids[~is_block]]]
    return torch.cat(rows), torch.cat(cols), torch.cat(o)


def _select_bf16_as_int16(scores: Any, k: int, c: Any, rel: float, slices: int) -> Any:
    """:func:`_select_pruned` on bf16 scores read as int16 (maxima and comparisons 2-3x faster on
    a CPU than in bf16), or ``None`` where a row's threshold is not positive.

    A bf16 value >= +0 has its sign bit clear, so its bits read as a non-negative int16 that grows
    with the value; every other value (negative, -0) reads as a negative int16. Hence for a
    threshold ``t > 0``, ``x >= t`` iff ``int(x) >= int(t)``; the int16 maximum of a group is its
    float maximum whenever that is >= +0 and negative otherwise, so "the group holds a value >= t"
    reads the same in both; and when the k-th largest int16 pool entry is >= 0, it is the k-th
    largest float entry (the k largest are exact maxima, and every negative int16 entry stands
    for a group whose values are all < 0). Rows where these do not hold (the k-th largest score
    or ``tau`` is not positive) make the whole block fall back to the float path.
    """
    import torch

    keys = scores.view(torch.int16)
    state: dict[str, bool] = {"ok": True}

    def threshold(kth_key: Any) -> Any:
        if bool((kth_key <= 0).any()):
            state["ok"] = False
            return torch.full_like(kth_key, torch.iinfo(torch.int16).max)  # selects nothing
        tau = _thresholds(kth_key.view(torch.bfloat16), c, rel)
        if bool((tau <= 0).any()):
            state["ok"] = False
            return torch.full_like(kth_key, torch.iinfo(torch.int16).max)
        return tau.view(torch.int16)

    rows, cols, o = _select_pruned(keys, k, slices, threshold)
    return (rows, cols, o.view(torch.bfloat16)) if state["ok"] else None


def _exact_scores(train: Any, test: Any, rows: Any, cols: Any) -> Any:
    """``f`` for each pair (sorted by row): the float32 dot product of ``test[rows]`` and
    ``train[cols]``, computed pair by pair by one fixed vectorised reduction over the feature
    axis, so a pair's value does not depend on which other pairs are computed alongside it.

    On a CPU this is ``torch.sparse.sampled_addmm`` (one ``map2_reduce_all`` dot product per
    stored entry, no gathered copies: several times faster than ``index_select``); elsewhere the
    rows are gathered, multiplied and summed in bounded steps.
    """
    import torch

    if train.device.type == "cpu":
        r = test.shape[0]
        crow = torch.zeros(r + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows, minlength=r), 0, out=crow[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, cols, torch.zeros(len(cols)), size=(r, train.shape[0]), check_invariants=False
            )
            return torch.sparse.sampled_addmm(pattern, test, train.T, beta=0.0).values()
    out = torch.empty(len(rows), dtype=torch.float32, device=train.device)
    for s in range(0, len(rows), _PAIRS_PER_STEP):
        e = min(s + _PAIRS_PER_STEP, len(rows))
        prod = train.index_select(0, cols[s:e])
        prod.mul_(test.index_select(0, rows[s:e]))
        torch.sum(prod, dim=1, out=out[s:e])
    return out


def _check_bound(f: Any, o: Any, c: Any, rel: Any, precision: str) -> None:
    """Raise if some exact score ``f`` lies outside its proven bound around the approximate ``o``."""
    excess = (f.double() - o).abs() - (c + rel * o.abs() + _TINY)
    if bool((excess > 0).any()):
        raise RuntimeError(
            f"k-NN {precision} similarity pass: an approximate score is {float(excess.max()):.3g} outside"
            " its proven error bound, so this torch build's matmul does not round as assumed (float32"
            " accumulation); use precision='fp32' or report this"
        )


def _rank_candidates(r: int, n: int, k: int, rows: Any, cols: Any, f: Any) -> tuple[Any, Any]:
    """Each row's top ``k`` candidates by ``f`` descending, equal ``f`` by lower column: [r, k] each
    (the pairs come sorted by row, then column)."""
    import torch

    counts = torch.bincount(rows, minlength=r)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(rows), device=rows.device) - starts[rows]
    vals = torch.full((r, width), -math.inf, dtype=torch.float32, device=f.device)
    idx = torch.zeros((r, width), dtype=torch.int64, device=f.device)
    vals[rows, pos] = f
    idx[rows, pos] = cols
    vals, perm = vals.sort(dim=1, descending=True, stable=True)  # columns ascending within ties
    return vals[:, :k], idx.gather(1, perm[:, :k])


def _check_inputs(train_x: Any, train_y: Any, test_x: Any) -> tuple[int, int, int]:
    if len(train_x.shape) != 2 or len(test_x.shape) != 2:
        raise ValueError(f"features must be 2-D [N, D]; got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train features have {train_x.shape[1]} dimensions, test features {test_x.shape[1]}"
        )
    if len(train_y) != train_x.shape[0]:
        raise ValueError(f"{train_x.shape[0]} train features but {len(train_y)} train labels")
    return train_x.shape[0], test_x.shape[0], train_x.shape[1]


def knn_predict(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
    topn: int = 5,
    precision: str = "auto",
    stats: dict[str, Any] | None = None,
) -> dict[int, np.ndarray]:
    """Ranked class predictions of the weighted k-NN rule, for each ``k`` in ``ks``.

    Args:
        train_x, test_x: features [N, D] and [M, D] (NumPy arrays or tensors; any scale: they are
            L2-normalised here).
        train_y: integer labels [N] in ``[0, num_classes)``.
        ks: the neighbourhood sizes; one search for ``max(ks)`` serves them all.
        temperature: ``T`` in the vote weight ``exp(cos_sim / T)``.
        num_classes: number of classes (default: ``max(train_y) + 1``).
        chunk_size: test rows per similarity block (default: sized to ~64 MB on CPU, ~512 MB on GPU,
            but at least 256 rows: see ``_MIN_ROWS``).
        device: torch device for the computation (``"cuda"`` to use a GPU).
        topn: how many ranked classes to return per row (capped at ``num_classes``).
        precision: the candidate-finding similarity pass, one of :data:`PRECISIONS`; the
            neighbours and predictions are the same for all (see the module docstring).
        stats: if given, filled with what ran: ``precision`` (the pass used), ``candidates_per_row``
            (mean exact scores computed per test row), ``fp32_redone_rows`` (bf16 rows redone in
            float32 because their candidate set was crowded).

    Returns:
        ``{k: int64 array [M, min(topn, num_classes)]}``: class indices, best first.
    """
    ks = _check_ks(ks, temperature)
    n_train, _, _ = _check_inputs(train_x, train_y, test_x)
    labels, num_classes, n_out = _vote_labels(train_y, n_train, ks, num_classes, topn)
    blocks = _neighbour_blocks(
        train_x, test_x, ks[-1], chunk_size=chunk_size, device=device, precision=precision, stats=stats
    )
    return _vote_blocks(blocks, labels, test_x.shape[0], ks, temperature, num_classes, n_out)


def knn_predict_from_neighbours(
    sims: np.ndarray,
    idx: np.ndarray,
    train_y: Any,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
    topn: int = 5,
) -> dict[int, np.ndarray]:
    """:func:`knn_predict` given each test row's ``max(ks)`` neighbours, as :func:`knn_neighbours`
    returns them (similarities [M, kmax], train indices [M, kmax], best first): for a training set
    searched elsewhere, e.g. in shards by the ranks of a torchrun run
    (:func:`clbench.distributed.knn_neighbours_on_ranks`). The votes are cast in the same blocks
    of test rows as :func:`knn_predict` (sized from ``len(train_y)``, ``chunk_size`` and
    ``device``), so the same neighbours give the same predictions bit for bit.
    """
    import torch

    sims, idx = np.asarray(sims), np.asarray(idx)
    n_train = len(train_y)
    if sims.ndim != 2 or sims.shape != idx.shape:
        raise ValueError(f"neighbour similarities {sims.shape} and indices {idx.shape} must be equal 2-D shapes")
    ks = _check_ks(ks, temperature)
    labels, num_classes, n_out = _vote_labels(train_y, n_train, ks, num_classes, topn)
    if ks[-1] > sims.shape[1]:
        raise ValueError(f"k={ks[-1]} exceeds the {sims.shape[1]} neighbours given per row")
    if len(idx) and (idx.min() < 0 or idx.max() >= n_train):
        raise ValueError(f"neighbour indices must lie in [0, {n_train})")
    dev = torch.device(device)
    rows = _chunk_rows(n_train, sims.shape[0], chunk_size, dev)

    def blocks() -> Iterator[tuple[int, int, Any, Any]]:
        for start in range(0, sims.shape[0], rows):
            stop = min(start + rows, sims.shape[0])
            top_sim = torch.from_numpy(np.ascontiguousarray(sims[start:stop, : ks[-1]], dtype=np.float32))
            top_idx = torch.from_numpy(np.ascontiguousarray(idx[start:stop, : ks[-1]], dtype=np.int64))
            yield start, stop, top_sim.to(dev), top_idx.to(dev)

    return _vote_blocks(blocks(), labels, sims.shape[0], ks, temperature, num_classes, n_out)


def _check_ks(ks: Sequence[int], temperature: float) -> list[int]:
    """The sorted distinct ``ks``, checked with the temperature."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return ks


def _vote_labels(
    train_y: Any, n_train: int, ks: list[int], num_classes: int | None, topn: int
) -> tuple[Any, int, int]:
    """Checked labels of the vote: (labels int64 tensor, classes, ranked classes kept per row)."""
    import torch

    if len(train_y) != n_train:
        raise ValueError(f"{n_train} train features but {len(train_y)} train labels")
    if ks[-1] > n_train:
        raise ValueError(f"k={ks[-1]} exceeds the number of training samples ({n_train})")
    labels_np = train_y.cpu().numpy() if isinstance(train_y, torch.Tensor) else np.asarray(train_y)
    if not np.issubdtype(labels_np.dtype, np.integer):
        raise ValueError(f"train labels must be integers, got dtype {labels_np.dtype}")
    if num_classes is None:
        num_classes = int(labels_np.max()) + 1
    if labels_np.min() < 0 or labels_np.max() >= num_classes:
        raise ValueError(f"train labels must lie in [0, {num_classes})")
    return torch.from_numpy(labels_np.astype(np.int64)), num_classes, min(topn, num_classes)


def _vote_blocks(
    blocks: Any, labels: Any, n_test: int, ks: list[int], temperature: float, num_classes: int, n_out: int
) -> dict[int, np.ndarray]:
    """The weighted votes of each block ``(start, stop, sims, train indices)`` of test rows."""
    import torch

    out = {k: np.empty((n_test, n_out), dtype=np.int64) for k in ks}
    with torch.inference_mode():
        for start, stop, top_sim, top_idx in blocks:
            top_labels = labels.to(top_idx.device)[top_idx]
            # dividing every weight of a row by exp(max_sim / T) leaves its ranking unchanged and
            # keeps exp() finite for any T
            weights = ((top_sim - top_sim[:, :1]) / temperature).exp_()
            for k in ks:
                votes = torch.zeros(stop - start, num_classes, device=top_sim.device, dtype=torch.float32)
                votes.scatter_add_(1, top_labels[:, :k], weights[:, :k])
                ranked = votes.sort(dim=1, descending=True, stable=True).indices[:, :n_out]
                out[k][start:stop] = ranked.cpu().numpy()
    return out


def knn_neighbours(
    train_x: Any,
    test_x: Any,
    k: int,
    *,
    chunk_size: int | None = None,
    device: str = "cpu",
    precision: str = "auto",
    stats: dict[str, Any] | None = None,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Each test row's ``k`` most cosine-similar train rows: similarities (float32 [M, k]) and
    train indices (int64 [M, k]), best first, equal similarities by lower index. Arguments as in
    :func:`knn_predict`; the result does not depend on ``precision`` or ``chunk_size``.

    ``offset``: the global index of ``train_x``'s first row when it is a contiguous shard of a
    larger bank; returned indices are global (``offset + row``). A pair's similarity does not
    depend on the other rows of the bank, and ties go to the lower index within the shard, hence
    to the lower global index: the shards' lists merged by
    :func:`clbench.distributed.merge_topk` are exactly the unsharded result.
    """
    if len(train_x.shape) != 2 or len(test_x.shape) != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"features must be 2-D with equal widths; got {tuple(train_x.shape)}, {tuple(test_x.shape)}"
        )
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"k must lie in [1, {train_x.shape[0]}], got {k}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    sims = np.empty((test_x.shape[0], k), dtype=np.float32)
    idx = np.empty((test_x.shape[0], k), dtype=np.int64)
    for start, stop, top_sim, top_idx in _neighbour_blocks(
        train_x, test_x, k, chunk_size=chunk_size, device=device, precision=precision, stats=stats
    ):
        sims[start:stop] = top_sim.cpu().numpy()
        idx[start:stop] = top_idx.cpu().numpy()
    if offset:
        idx += offset
    return sims, idx


def _chunk_rows(n_train: int, n_test: int, chunk_size: int | None, dev: Any) -> int:
    """Test rows per similarity block: ``chunk_size``, else sized to the device's block budget."""
    if chunk_size is None:
        chunk_size = max(_MIN_ROWS, _BLOCK_ELEMENTS.get(dev.type, 2**24) // max(n_train, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return max(1, min(chunk_size, n_test))


def _neighbour_blocks(
    train_x: Any,
    test_x: Any,
    kmax: int,
    *,
    chunk_size: int | None,
    device: str,
    precision: str,
    stats: dict[str, Any] | None,
) -> Iterator[tuple[int, int, Any, Any]]:
    """``(start, stop, sims [r, kmax], train indices [r, kmax])`` per block of test rows, each row's
    exact top ``kmax`` by (similarity descending, index ascending)."""
    import torch

    n_train, n_test = train_x.shape[0], test_x.shape[0]
    dev = torch.device(device)
    precision = resolve_precision(precision, dev)
    rows = _chunk_rows(n_train, n_test, chunk_size, dev)
    crowded = 2 * kmax + _CROWDED
    n_pairs = 0
    n_redone = 0

    with torch.inference_mode(), _ieee_matmuls(dev):
        bf16 = precision == "bf16-prefilter"
        train, b_norm, train_lp, r_b = _prepare(train_x, dev, bf16)
        test, a_norm, test_lp, r_a = _prepare(test_x, dev, bf16)
        d = train.shape[1]
        a_norm = torch.full((n_test,), a_norm, dtype=torch.float64, device=dev)
        c32, _ = _error_bounds(a_norm, b_norm, d)
        if bf16:
            c_lp, rel_lp = _error_bounds(a_norm, b_norm, d, r_a, r_b.max())
        else:
            train_lp, test_lp, c_lp, rel_lp = train, test, c32, 0.0
        sims = torch.empty(rows, n_train, device=dev, dtype=train_lp.dtype)
        for start in range(0, n_test, rows):
            stop = min(start + rows, n_test)
            r = stop - start
            block = sims[:r]
            torch.mm(test_lp[start:stop], train_lp.T, out=block)
            q = test[start:stop]
            c_block = c_lp[start:stop]
            cand_rows, cand_cols, cand_o = _select_candidates(block, kmax, c_block, rel_lp)
            parts = []
            if precision == "bf16-prefilter":
                counts = torch.bincount(cand_rows, minlength=r)
                redo = (counts > crowded).nonzero()[:, 0]
                if len(redo):
                    # crowded rows (many scores within bf16's error of the k-th: near-ties): float32
                    # scores narrow the window ~100x
                    n_redone += len(redo)
                    keep = counts[cand_rows] <= crowded
                    cand_rows, cand_cols, cand_o = cand_rows[keep], cand_cols[keep], cand_o[keep]
                    o32 = q[redo] @ train.T
                    c_redo = c32[start:stop][redo]
                    sub_rows, sub_cols, sub_o = _select_candidates(o32, kmax, c_redo, 0.0)
                    del o32
                    c_sub = c_redo[sub_rows]
                    parts.append((redo[sub_rows], sub_cols, sub_o.double(), c_sub, torch.zeros_like(c_sub)))
            c_rows = c_block[cand_rows]
            parts.append((cand_rows, cand_cols, cand_o.double(), c_rows, torch.full_like(c_rows, rel_lp)))
            all_rows, all_cols, all_o, all_c, all_rel = (torch.cat(x) for x in zip(*parts, strict=True))
            order = torch.argsort(all_rows * n_train + all_cols)  # by row, then column
            all_rows, all_cols = all_rows[order], all_cols[order]
            f = _exact_scores(train, q, all_rows, all_cols)
            _check_bound(f, all_o[order], all_c[order], all_rel[order], precision)
            n_pairs += len(f)
            top_sim, top_idx = _rank_candidates(r, n_train, kmax, all_rows, all_cols, f)
            yield start, stop, top_sim, top_idx
        if stats is not None:
            stats.update(
                precision=precision,
                candidates_per_row=n_pairs / max(n_test, 1),
                fp32_redone_rows=n_redone,
            )


def knn_metrics(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
    precision: str = "auto",
    stats: dict[str, Any] | None = None,
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy of :func:`knn_predict` for each ``k``: ``{k: {"top1", "top5"}}``.

    With fewer than five classes ``top5`` is the top-``num_classes`` accuracy (that is, 1.0).
    """
    test_y = np.asarray(test_y)
    if num_classes is None:
        num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    pred = knn_predict(
        train_x,
        train_y,
        test_x,
        ks=ks,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        device=device,
        precision=precision,
        stats=stats,
    )
    n5 = min(5, num_classes)
    return {
        k: {"top1": topk_accuracy(p, test_y, 1), "top5": topk_accuracy(p, test_y, n5)}
        for k, p in pred.items()
    }
