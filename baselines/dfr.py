"""DFR, Deep Feature Reweighting (Kirichenko, Izmailov, Wilson, ICLR 2023), validation protocol.

The protocol of the paper's ``dfr_evaluate_spurious.py`` (its defaults:
``balance_dfr_val=True``, ``notrain_dfr_val=True``), with its class-weight grid left out
(with balanced validation and no training data it tries only ``{0: 1, 1: 1}``):

1. Freeze the ERM model of the same seed (its final checkpoint, as the paper's code
   evaluates ``final_checkpoint.pt``; ``erm_checkpoint: best`` takes the selected one); embed validation and test
   with its penultimate layer (eval transform; the training split too, with the same
   transform, as the reference's ``train_transform`` has ``augment_data=False``).
   Embeddings are cached as ``embeddings.npz``.
2. Tune ``C`` over ``c_grid``: split validation randomly in halves; fit on a
   group-balanced subset of the first half (every group cut to the smallest group's
   size), standardised with a scaler fit on that subset; score worst-group accuracy on
   the second half; ``tune_repeats`` random splits summed; the first best ``C`` wins.
3. Final head: standardise with a scaler fit on the TRAINING embeddings
   (``dfr_on_validation_eval``: ``scaler.fit(all_embeddings["train"])``;
   ``scaler_fit: val`` fits it on the whole validation split instead); fit
   ``final_repeats`` L1 logistic regressions (liblinear) with the chosen ``C``, each on
   a fresh group-balanced subset of the whole validation split; average the coefficients
   and intercepts.

Deviation, stated: groups absent from validation (MetaShift's 2-group validation) are
ignored when balancing (the paper's code would cut every group to size 0).

``fit_split: train`` is the paper's DFR on training data (DFR^Tr_Tr, Kirichenko et al. 2023;
``dfr_train_subset_tune`` / ``dfr_train_subset_eval`` of the same script): the last
layer is refit on group-balanced subsets of the TRAINING embeddings (``balance_val`` then
balances the training split; it needs the training group labels), standardised with a scaler
fit on the training embeddings; ``C`` is still chosen by worst-group accuracy on validation,
now on the whole validation split (the reference scores each ``C`` on all of it, fit once on
one balanced training subset); ``final_repeats`` subsets averaged (the reference: 10). The
``scaler_fit: val`` then fits the scaler on the fitted training subsets. The
reference's ``max_iter=20`` of its tuning fits is left out (the solver's default, as in every
other fit here). With ``balance_val: false`` as well, the head is refit on the spurious,
unbalanced training split: close to ERM's own last layer, what ``bench/mutation.py`` injects as DFR's
regression (DFR without its reweighting data).

The averaged head, with the standardisation folded in, replaces the ERM model's ``fc``;
the result is saved as ``checkpoints/best.pt`` so :func:`spuraug.runs.load_model` works.
Validation metrics are in-sample with ``fit_split: val`` (validation trains the head).
Annotation: no/yes (yes/yes with ``fit_split: train`` and ``balance_val``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import sklearn
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from spuraug import atomic, engine
from spuraug.methods import Method, Param, param, register_method
from spuraug.metrics import evaluate_predictions
from spuraug.records import EpochLine
from spuraug.runs import load_model

#: The paper's grid of inverse L1 strengths.
PAPER_C_GRID: tuple[float, ...] = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def l1_logistic_regression(c: float, seed: int = 0) -> LogisticRegression:
    """scikit-learn's L1 logistic regression with the liblinear solver (the paper's model)."""
    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # ``penalty`` is deprecated from 1.8 on
        return LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", random_state=seed)
    return LogisticRegression(penalty="l1", C=c, solver="liblinear", random_state=seed)


#: A random group-balanced subset (every non-empty group cut to the smallest one's size).
balanced_subset = engine.group_balanced_subset


def worst_group_acc(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Worst accuracy over the groups present, in percent."""
    return min(100.0 * float(np.mean(pred[g == k] == y[g == k])) for k in np.unique(g))


def score_c_grid(
    xf: np.ndarray, yf: np.ndarray, xs: np.ndarray, ys: np.ndarray, gs: np.ndarray, c_grid: Sequence[float],
    standardize: bool = True, seed: int = 0, scaler_x: np.ndarray | None = None,
) -> dict[float, float]:
    """Worst-group accuracy on ``(xs, ys, gs)`` of a head fit on ``(xf, yf)`` for each ``C`` of
    the grid, standardised with a scaler fit on ``scaler_x`` (None: on ``xf``)."""
    if standardize:
        scaler = StandardScaler().fit(xf if scaler_x is None else scaler_x)
        xf, xs = scaler.transform(xf), scaler.transform(xs)
    return {float(c): worst_group_acc(l1_logistic_regression(float(c), seed).fit(xf, yf).predict(xs), ys, gs)
            for c in c_grid}


def pick_c(scores: dict[float, float]) -> float:
    """The ``C`` with the highest score, the first in grid order on ties."""
    return max(scores, key=lambda c: (scores[c], -list(scores).index(c)))


def tune_c(
    x: np.ndarray, y: np.ndarray, g: np.ndarray, n_groups: int, c_grid: Sequence[float],
    repeats: int, rng: np.random.Generator, balance: bool = True, standardize: bool = True, seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """Choose ``C`` by worst-group accuracy on one half of validation (``repeats`` random halves,
    scores summed); returns the best ``C`` (first in grid order on ties) and the scores."""
    scores = {float(c): 0.0 for c in c_grid}
    for _ in range(repeats):
        idx = rng.permutation(len(x))
        half = len(x) // 2
        held, fit_ix = idx[:half], idx[half:]
        if balance:
            fit_ix = fit_ix[balanced_subset(g[fit_ix], n_groups, rng)]
        for c, v in score_c_grid(x[fit_ix], y[fit_ix], x[held], y[held], g[held], c_grid, standardize, seed).items():
            scores[c] += v
    return pick_c(scores), scores


def tune_c_on_fit_split(
    x_fit: np.ndarray, y_fit: np.ndarray, g_fit: np.ndarray, x_score: np.ndarray, y_score: np.ndarray,
    g_score: np.ndarray, n_groups: int, c_grid: Sequence[float], rng: np.random.Generator, balance: bool = True,
    standardize: bool = True, seed: int = 0, scaler_x: np.ndarray | None = None,
) -> tuple[float, dict[float, float]]:
    """Choose ``C`` for a head fit on another split than validation (DFR^Tr_Tr, the reference's
    ``dfr_train_subset_tune``): fit on one (group-balanced if ``balance``) subset of ``x_fit``,
    standardised with a scaler fit on ``scaler_x`` (the reference: all training embeddings; None:
    the fitted subset), and score worst-group accuracy on all of ``x_score`` (validation). Returns
    the best ``C`` (first in grid order on ties) and the scores."""
    ix = balanced_subset(g_fit, n_groups, rng) if balance else np.arange(len(x_fit))
    scores = score_c_grid(x_fit[ix], y_fit[ix], x_score, y_score, g_score, c_grid, standardize, seed, scaler_x)
    return pick_c(scores), scores


def fit_final_head(
    x: np.ndarray, y: np.ndarray, g: np.ndarray, n_groups: int, c: float, repeats: int,
    rng: np.random.Generator, balance: bool = True, standardize: bool = True, seed: int = 0,
    scaler_x: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Average ``repeats`` L1 logistic regressions fit on balanced subsets of all of ``x``.

    The standardisation is fit on ``scaler_x`` (the reference: the training embeddings)
    or, when it is None, on ``x``. Returns ``(coef, intercept, mean, scale)``: the averaged
    sklearn coefficients (shape ``(1, d)`` for two classes) and the standardisation
    applied before them."""
    if standardize:
        scaler = StandardScaler().fit(x if scaler_x is None else scaler_x)
        mean, scale = scaler.mean_, scaler.scale_
    else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    xs = (x - mean) / scale
    coefs, intercepts = [], []
    for _ in range(repeats):
        ix = balanced_subset(g, n_groups, rng) if balance else np.arange(len(x))
        clf = l1_logistic_regression(c, seed).fit(xs[ix], y[ix])
        coefs.append(clf.coef_)
        intercepts.append(clf.intercept_)
    return np.mean(coefs, axis=0), np.mean(intercepts, axis=0), mean, scale


def fold_head(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray,
              n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of a linear layer on raw embeddings whose arg-max equals the
    standardised logistic regression's prediction (binary: class 1 logit, class 0 at 0)."""
    w = coef / scale
    b = intercept - (coef * (mean / scale)).sum(1)
    if n_classes == 2 and w.shape[0] == 1:
        w = np.concatenate([np.zeros_like(w), w])
        b = np.concatenate([np.zeros(1), b])
    return w.astype(np.float32), b.astype(np.float32)


@register_method("dfr")
class DFR(Method):
    """Last-layer retraining on group-balanced validation subsets (the paper's protocol)."""

    display_name: ClassVar[str] = "DFR"
    citation: ClassVar[str] = (
        "Kirichenko, Izmailov, Wilson. Last Layer Re-Training is Sufficient for Robustness to Spurious Correlations. ICLR 2023; PolinaKirichenko/deep_feature_reweighting"
    )
    order: ClassVar[int] = 30
    annotation: ClassVar[dict[str, bool]] = {"train_group_labels": False, "val_group_labels": True}
    uses_erm: ClassVar[bool] = True
    val_labels_beyond_selection: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        "erm_checkpoint": param("last", choices=("last", "best"),
                                help="the ERM model whose features are used (paper: the final checkpoint)"),
        "c_grid": param(list(PAPER_C_GRID), list),
        "tune_repeats": param(1, int, ge=1, help="random validation halves for tuning C"),
        "final_repeats": param(20, int, ge=1, help="balanced subsets averaged in the final head"),
        "balance_val": param(True, bool, help="fit the head on group-balanced subsets of the fit split (the "
                                              "reference's balance_dfr_val; with fit_split train: of training)"),
        "fit_split": param("val", choices=("val", "train"),
                           help="split the last layer is refit on: val = DFR (DFR^Tr_Val), train = DFR^Tr_Tr "
                                "(dfr_evaluate_spurious.py dfr_train_subset_tune/eval); C is tuned on validation"),
        "standardize": param(True, bool),
        "scaler_fit": param("train", choices=("train", "val"),
                            help="embeddings the final head's standardisation is fit on (reference: train)"),
    }

    def annotation_for(self, hparams: dict) -> dict[str, bool]:
        """Refitting on group-balanced TRAINING subsets (``fit_split: train``) uses training group labels."""
        ann = super().annotation_for(hparams)
        if hparams.get("fit_split", "val") == "train" and hparams.get("balance_val", True):
            ann["train_group_labels"] = True
        return ann

    def embeddings(self, ctx, erm_dir) -> dict[str, np.ndarray]:
        path = ctx.dir / "embeddings.npz"
        erm_hash = json.loads((erm_dir / "config.json").read_text())["config_hash"] + ctx.hparams["erm_checkpoint"]
        if path.is_file():
            cached = np.load(path)
            if str(cached["erm_config_hash"]) == erm_hash and "train_x" in cached:
                return dict(cached)

        model = load_model(erm_dir, ctx.hparams["erm_checkpoint"])
        out: dict[str, np.ndarray] = {"erm_config_hash": np.array(erm_hash)}
        for split in ("train", "val", "test"):
            ds = ctx.load_split(split, "eval")
            out[f"{split}_x"] = engine.predict(model, ds, ctx.device, ctx.config["eval"]["batch_size"],
                                               features=True, num_workers=ctx.num_workers, progress=ctx.progress)
            out[f"{split}_y"], out[f"{split}_a"] = ds.y, ds.a
        atomic.write_bytes(path, lambda h: np.savez(h, **out))
        return out

    def run(self, ctx) -> dict:

        hp = ctx.hparams
        erm_dir = ctx.ensure_erm()
        emb = self.embeddings(ctx, erm_dir)
        val, test = ctx.load_split("val"), ctx.load_split("test")
        n_groups, n_attr, n_classes = val.n_groups, val.n_attributes, val.n_classes
        xv, yv, gv = emb["val_x"], emb["val_y"], emb["val_y"] * n_attr + emb["val_a"]
        rng = np.random.default_rng(ctx.seed)
        scaler_x = emb["train_x"] if hp["scaler_fit"] == "train" else None
        if hp["fit_split"] == "val":
            best_c, scores = tune_c(xv, yv, gv, n_groups, hp["c_grid"], hp["tune_repeats"], rng,
                                    hp["balance_val"], hp["standardize"], ctx.seed)
            xf, yf, gf = xv, yv, gv
        else:  # DFR^Tr_Tr: refit on the training embeddings, C chosen on validation
            xf, yf, gf = emb["train_x"], emb["train_y"], emb["train_y"] * n_attr + emb["train_a"]
            best_c, scores = tune_c_on_fit_split(xf, yf, gf, xv, yv, gv, n_groups, hp["c_grid"], rng,
                                                 hp["balance_val"], hp["standardize"], ctx.seed, scaler_x=scaler_x)
        coef, intercept, mean, scale = fit_final_head(
            xf, yf, gf, n_groups, best_c, hp["final_repeats"], rng, hp["balance_val"], hp["standardize"], ctx.seed,
            scaler_x=scaler_x)
        w, b = fold_head(coef, intercept, mean, scale, n_classes)
        model = load_model(erm_dir, hp["erm_checkpoint"])
        with torch.no_grad():
            model.fc.weight.copy_(torch.from_numpy(w))
            model.fc.bias.copy_(torch.from_numpy(b))
        atomic.torch_save(ctx.dir / "checkpoints" / "best.pt", engine.cpu_state(model))
        counts = ctx.train_group_counts()
        metrics = {}
        for split, ds in (("val", val), ("test", test)):
            pred = (emb[f"{split}_x"] @ w.T + b).argmax(1)
            metrics[split] = evaluate_predictions(ds.y, ds.a, pred, n_classes, n_attr, counts)
        line = EpochLine(epoch=1, step=0, peak_mem_mb=engine.peak_memory_mb(ctx.device),
                         extra={**metrics, "objective": {"C": best_c, "c_scores": {str(k): v for k, v in scores.items()}}})
        log = engine.MetricsLog(ctx.dir / "metrics.jsonl")
        log.reset()
        log.append(line.to_dict())
        return {"selected_epoch": 1, "val": metrics["val"], "test": metrics["test"],
                "dfr": {"C": best_c, "c_scores": {str(k): v for k, v in scores.items()}, "erm_run": str(erm_dir),
                        "fit_split": hp["fit_split"], "val_metrics_in_sample": hp["fit_split"] == "val"}}
