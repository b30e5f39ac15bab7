"""Linear probe: L2-regularised multinomial logistic regression with the CLIP sweep over C.

The model and objective are scikit-learn's ``LogisticRegression(C=C)`` (multinomial, intercept
unpenalised)::

    C * sum_i cross_entropy(x_i W + b, y_i) + 0.5 * ||W||^2

here divided by ``C * n`` (the same minimiser, gradients of order one) and solved in float32 by
full-batch L-BFGS with a strong-Wolfe line search on the requested torch device. Only the classes
that occur in the training labels get a column, as in scikit-learn. (With two classes
scikit-learn fits a single weight vector instead; the multinomial fit at C equals that fit at 2C.)

The sweep follows CLIP (Radford et al., 2021) and CLIP_benchmark: C runs over a log grid (default
1e-6 .. 1e6, 8 points a decade); a coarse pass takes every other decade, then the step is halved
around the best point until neighbouring grid points are compared. Points are scored on a seeded,
stratified validation split of the training set (accuracy, ties broken by the lower validation
cross-entropy); every fit is warm-started from the nearest C already solved. The chosen C is then
refitted on the whole training set.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 3, size=300)
>>> x = rng.normal(size=(300, 8)) + 2.0 * np.eye(3, 8)[y]
>>> res = linear_probe(x[:200], y[:200], x[200:], y[200:], settings=ProbeSettings(c_min=1e-3, c_max=1e3))
>>> res.top1 > 0.8, len(res.trace) > 5
(True, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .classification import balanced_accuracy, topk_hits

__all__ = [
    "LogisticModel",
    "ProbeResult",
    "ProbeSettings",
    "c_grid",
    "fit_logistic",
    "label_efficiency",
    "linear_probe",
    "stratified_split",
    "stratified_subsample",
]


# ----------------------------------------------------------------------------------- data splits
def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Seeded stratified (train, val) index split; None when some class has fewer than 2 samples.

    Each class puts ``round(val_fraction * n_c)`` samples into validation, at least one and at most
    ``n_c - 1``, so both parts see every class.
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) == 0 or counts.min() < 2:
        return None
    rng = np.random.default_rng([seed, 0])
    train, val = [], []
    for c, n in zip(classes, counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = min(n - 1, max(1, round(val_fraction * n)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded per-class subsample: ``max(1, round(fraction * n_c))`` per class."""
    y = np.asarray(y)
    if fraction >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng([seed, 1])
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(keep))


def c_grid(c_min: float = 1e-6, c_max: float = 1e6, steps_per_decade: int = 8) -> np.ndarray:
    """The log-spaced grid of C values searched by the sweep (both ends included)."""
    if not 0 < c_min <= c_max:
        raise ValueError(f"need 0 < c_min <= c_max, got {c_min}, {c_max}")
    decades = math.log10(c_max) - math.log10(c_min)
    return np.logspace(
        math.log10(c_min), math.log10(c_max), num=max(1, round(decades * steps_per_decade)) + 1
    )


# ------------------------------------------------------------------------------------------ model
@dataclasses.dataclass
class LogisticModel:
    """A fitted probe: ``scores = x @ weight + bias`` over ``classes`` (torch tensors)."""

    weight: Any
    bias: Any
    classes: np.ndarray
    C: float
    n_iter: int
    converged: bool

    def scores(self, x: Any) -> np.ndarray:
        """Class scores [N, len(classes)] of features [N, D] (array or tensor), as NumPy.

        The features must be those the probe was fitted on (standardised, if it was asked to).
        """
        import torch

        with torch.no_grad():
            return torch.addmm(self.bias, _to_device(x, self.weight.device), self.weight).cpu().numpy()

    def predict(self, x: Any) -> np.ndarray:
        """Predicted labels (values from ``classes``) of features [N, D]."""
        return self.classes[self.scores(x).argmax(axis=1)]


def _cross_entropy(logits: Any, y: Any) -> Any:
    """Mean cross-entropy, accurate in float32 also for confidently correct samples.

    ``logsumexp(z) - z_y`` cancels catastrophically when the loss is below float32 resolution of
    the logits, which is the regime of weak regularisation; writing it as
    ``m + log1p(expm1(-m) + sum_{j != y} exp(z_j - z_y - m))`` with ``m = max_j(z_j - z_y) >= 0``
    keeps its relative precision, so L-BFGS's line search still sees descent there.
    """
    import torch

    diff = logits - logits.gather(1, y[:, None])
    m = diff.max(dim=1).values.detach()
    others = (diff - m[:, None]).exp().scatter(1, y[:, None], 0.0).sum(dim=1)
    return (m + torch.log1p(torch.expm1(-m) + others)).mean()


def _fit(x: Any, y: Any, n_classes: int, C: float, init: tuple[Any, Any] | None, max_iter: int, tol: float):
    """L-BFGS on the scaled objective; returns (weight, bias, n_iter, converged).

    The weights are solved for in diagonally preconditioned coordinates ``W = s * V`` (row j of
    ``W`` scaled by ``s_j``), with ``s_j`` chosen so that every coordinate's curvature at the start
    is about that of the intercept: ``1 / s_j^2 = E[x_j^2] + 2 * reg / h``, ``h = (1 - 1/K) / K``.
    Without it, strong regularisation (small C) makes the weights far stiffer than the intercept
    and L-BFGS stalls before the intercept reaches the class priors; raw features of unequal
    scale are evened out too. The minimiser is unchanged.
    """
    import torch

    n, d = x.shape
    reg = 0.5 / (C * n)
    h = (1.0 - 1.0 / n_classes) / n_classes
    scale = (torch.linalg.vector_norm(x, dim=0).square() / n + 2 * reg / h).rsqrt()[:, None]
    if init is None:
        v = torch.zeros(d, n_classes, device=x.device, dtype=x.dtype)
        b = torch.zeros(n_classes, device=x.device, dtype=x.dtype)
    else:
        v, b = init[0].detach() / scale, init[1].detach().clone()
    v.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad(set_to_none=False)
        w = scale * v
        loss = _cross_entropy(torch.addmm(b, x, w), y) + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[v].get("n_iter", 0))
    with torch.no_grad():
        gmax = max(v.grad.abs().max().item(), b.grad.abs().max().item()) if v.grad is not None else 0.0
    return (scale * v).detach(), b.detach(), n_iter, n_iter < max_iter or gmax <= tol


def _encode(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(classes, y)
    pos = np.clip(pos, 0, len(classes) - 1)
    if not np.array_equal(classes[pos], y):
        missing = sorted(set(np.asarray(y).tolist()) - set(classes.tolist()))
        raise ValueError(f"labels {missing[:10]} do not occur in the training labels")
    return pos


def fit_logistic(
    x: Any,
    y: np.ndarray,
    *,
    C: float,
    init: LogisticModel | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    device: str = "cpu",
) -> LogisticModel:
    """Fit ``LogisticRegression(C=C)`` (multinomial, L2 on weights) on features [N, D] and labels [N].

    ``init`` warm-starts from an earlier model over the same classes and dimensions.
    """
    import torch

    y = np.asarray(y)
    classes = np.unique(y)
    xt = _to_device(x, device)
    yt = torch.from_numpy(_encode(y, classes)).to(xt.device)
    start = None
    if init is not None:
        if not np.array_equal(init.classes, classes) or init.weight.shape[0] != xt.shape[1]:
            raise ValueError("init model has other classes or dimensions than the data")
        start = (init.weight.to(xt.device), init.bias.to(xt.device))
    w, b, n_iter, conv = _fit(xt, yt, len(classes), C, start, max_iter, tol)
    return LogisticModel(w, b, classes, float(C), n_iter, conv)


def _to_device(x: Any, device: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.require(np.asarray(x), dtype=np.float32, requirements=["C", "W"])).to(device)


# ------------------------------------------------------------------------------------------ sweep
@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How the probe searches C and solves each fit."""

    c_min: float = 1e-6
    c_max: float = 1e6
    steps_per_decade: int = 8
    val_fraction: float = 0.2
    #: L-BFGS iterations per fit
    max_iter: int = 1000
    #: stop when every gradient entry of the (mean-scaled) objective is below this
    tol: float = 1e-8
    #: scale features by the training mean and std first
    standardize: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.c_min <= self.c_max:
            raise ValueError(f"need 0 < c_min <= c_max, got c_min={self.c_min}, c_max={self.c_max}")
        if self.steps_per_decade < 1:
            raise ValueError(f"steps_per_decade must be >= 1, got {self.steps_per_decade}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.max_iter < 1 or not self.tol > 0:
            raise ValueError(f"need max_iter >= 1 and tol > 0, got {self.max_iter}, {self.tol}")


@dataclasses.dataclass
class ProbeResult:
    """Test metrics of the probe refitted at the chosen C, plus how C was chosen."""

    top1: float
    top5: float
    balanced_accuracy: float
    C: float
    #: "sweep" (chosen on a validation split), "fixed" (c_min == c_max) or "given" (passed in)
    C_source: str
    #: one entry per evaluated C, in evaluation order: C, val_top1, val_loss, n_iter, converged
    trace: list[dict[str, Any]]
    n_iter: int
    converged: bool
    model: LogisticModel | None = dataclasses.field(default=None, repr=False)
    #: per test sample: top-1 / top-5 hit and the predicted label (outcomes behind CIs)
    hits1: np.ndarray | None = dataclasses.field(default=None, repr=False)
    hits5: np.ndarray | None = dataclasses.field(default=None, repr=False)
    pred: np.ndarray | None = dataclasses.field(default=None, repr=False)


def _sweep(xtr, ytr, xva, yva, n_classes, grid, max_iter, tol):
    """CLIP's coarse-then-refine search over ``grid``; returns (best index, models, trace)."""
    import torch
    import torch.nn.functional as F

    solved: dict[int, tuple[Any, Any]] = {}
    score: dict[int, tuple[float, float]] = {}
    trace: list[dict[str, Any]] = []

    def evaluate(i: int) -> None:
        nearest = min(solved, key=lambda j: abs(j - i), default=None)
        w, b, n_iter, conv = _fit(xtr, ytr, n_classes, float(grid[i]), solved.get(nearest), max_iter, tol)
        solved[i] = (w, b)
        with torch.no_grad():
            logits = torch.addmm(b, xva, w)
            acc = (logits.argmax(dim=1) == yva).float().mean().item()
            loss = F.cross_entropy(logits, yva).item()
        score[i] = (acc, loss)
        trace.append(
            {"C": float(grid[i]), "val_top1": acc, "val_loss": loss, "n_iter": n_iter, "converged": conv}
        )

    def best() -> int:
        # highest accuracy; among ties the lowest validation loss
        return max(score, key=lambda j: (score[j][0], -score[j][1]))

    per_decade = (len(grid) - 1) / max(math.log10(grid[-1] / grid[0]), 1e-12)
    stride = max(1, round(2 * per_decade))
    coarse = list(range(0, len(grid), stride))
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    for i in coarse:
        evaluate(i)
    step = stride // 2
    while step >= 1:
        centre = best()
        for j in (centre - step, centre + step):
            if 0 <= j < len(grid) and j not in score:
                evaluate(j)
        step //= 2
    i = best()
    return i, solved[i], trace


def _prepare(x_train: Any, x_test: Any, standardize: bool, device: str) -> tuple[Any, Any]:
    xtr = _to_device(x_train, device)
    xte = _to_device(x_test, device)
    if standardize:
        mean, std = xtr.mean(dim=0), xtr.std(dim=0).clamp_min(1e-12)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    return xtr, xte


def linear_probe(
    x_train: Any,
    y_train: np.ndarray,
    x_test: Any,
    y_test: np.ndarray,
    *,
    settings: ProbeSettings | None = None,
    C: float | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> ProbeResult:
    """Choose C on a stratified validation split, refit on all of ``x_train``, score ``x_test``.

    Pass ``C`` to skip the sweep. If some class has fewer than two training samples no stratified
    split exists and a ValueError asks for ``C`` (:func:`label_efficiency` then passes the C chosen
    on the full training set). Test labels must all occur in the training labels.
    """
    settings = settings or ProbeSettings()
    xtr, xte = _prepare(x_train, x_test, settings.standardize, device)
    return _probe(xtr, np.asarray(y_train), xte, np.asarray(y_test), settings, C=C, seed=seed)


def _probe(xtr: Any, y_train: np.ndarray, xte: Any, y_test: np.ndarray, st: ProbeSettings, *, C, seed):
    import torch

    classes = np.unique(y_train)
    if len(classes) < 2:
        raise ValueError("the training labels hold fewer than two classes")
    n_classes = len(classes)
    ytr = _encode(y_train, classes)
    yte = _encode(y_test, classes)
    dev = xtr.device
    ytr_t = torch.from_numpy(ytr).to(dev)
    trace: list[dict[str, Any]] = []
    init = None
    if C is not None:
        source = "given"
    elif st.c_min == st.c_max:
        C, source = float(st.c_min), "fixed"
    else:
        split = stratified_split(ytr, st.val_fraction, seed)
        if split is None:
            raise ValueError("a class has fewer than two training samples: no validation split; pass C")
        tr, va = (torch.from_numpy(s).to(dev) for s in split)
        grid = c_grid(st.c_min, st.c_max, st.steps_per_decade)
        i, init, trace = _sweep(xtr[tr], ytr_t[tr], xtr[va], ytr_t[va], n_classes, grid, st.max_iter, st.tol)
        C, source = float(grid[i]), "sweep"
    w, b, n_iter, conv = _fit(xtr, ytr_t, n_classes, C, init, st.max_iter, st.tol)
    with torch.no_grad():
        scores = torch.addmm(b, xte, w).cpu().numpy()
    pred = scores.argmax(axis=1)
    hits1, hits5 = topk_hits(scores, yte, 1), topk_hits(scores, yte, min(5, n_classes))
    return ProbeResult(
        top1=float(hits1.mean()),
        top5=float(hits5.mean()),
        balanced_accuracy=balanced_accuracy(pred, yte),
        C=float(C),
        C_source=source,
        trace=trace,
        n_iter=n_iter,
        converged=conv,
        model=LogisticModel(w, b, classes, float(C), n_iter, conv),
        hits1=hits1,
        hits5=hits5,
        pred=classes[pred],
    )


# ------------------------------------------------------------------------------ label efficiency
def label_efficiency(
    x_train: Any,
    y_train: np.ndarray,
    x_test: Any,
    y_test: np.ndarray,
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0,),
    settings: ProbeSettings | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[float, list[tuple[int, ProbeResult]]]:
    """The probe on per-class stratified subsets of the training set: ``{fraction: [(seed, result)]}``.

    Each subset keeps at least one sample of every class (:func:`stratified_subsample` with the
    run's seed). Fraction 1.0 is the whole training set, run once with ``seed``. A subset too small
    for a stratified validation split reuses the C chosen on the whole training set
    (``C_source == "full"``); that sweep runs only when needed. Standardisation statistics come
    from the whole training set's features (no labels involved). Models are not kept.
    """
    st = settings or ProbeSettings()
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    xtr, xte = _prepare(x_train, x_test, st.standardize, device)
    full: list[ProbeResult] = []

    def full_result() -> ProbeResult:
        if not full:
            full.append(_probe(xtr, y_train, xte, y_test, st, C=None, seed=seed))
            full[0].model = None
        return full[0]

    out: dict[float, list[tuple[int, ProbeResult]]] = {}
    for frac in sorted({float(f) for f in fractions}, reverse=True):
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"label fractions must lie in (0, 1], got {frac}")
        if frac == 1.0:
            out[frac] = [(seed, full_result())]
            continue
        runs = []
        for s in seeds:
            idx = stratified_subsample(y_train, frac, s)
            sub_x, sub_y = xtr[_index(idx, xtr.device)], y_train[idx]
            if st.c_min != st.c_max and stratified_split(sub_y, st.val_fraction, s) is None:
                res = _probe(sub_x, sub_y, xte, y_test, st, C=full_result().C, seed=s)
                res.C_source = "full"
            else:
                res = _probe(sub_x, sub_y, xte, y_test, st, C=None, seed=s)
            res.model = None
            runs.append((s, res))
        out[frac] = runs
    return out


def _index(idx: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(idx).to(device)
