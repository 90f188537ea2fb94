"""Stage 3: bicephalous pruning of the generated samples (both conditions must pass).

Condition 1 (prediction): ``p`` = ERM softmax probability of the SOURCE class ``i`` on
the edited image; prune when ``p >= Psi_i`` (mean probability of class ``i`` over the K
sources of class ``i``).

Condition 2 (attribution): Integrated Gradients (captum) of the ERM logits with the
ORIGINAL image as baseline and the EDITED image as input, target the new class ``j``;
``rho`` = sum of the attributions inside the object mask; prune when ``rho <= P``.

By IG's completeness the attributions over the whole image add up to
``f_j(edited) - f_j(original)`` (logits). ``rho = "raw"`` (default) uses the in-mask sum
as is, which is what the public code thresholds at P = 0.3; ``rho = "fraction"`` divides
it by the whole-image sum, the share of the logit change located on the object. The
table keeps both (``rho_raw``, ``attr_total``, ``rho_fraction``) and ``p``/``psi``, so
:func:`apply_rules` re-decides with other thresholds without recomputing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from spuraug.engine import prepare_model, resolve_device, to_device, use_channels_last

TABLE_COLUMNS = (
    "sample_id", "source_id", "source_class", "target_class", "label", "p", "psi", "p_target",
    "rho_raw", "attr_total", "rho_fraction", "logit_delta", "mask_area",
)


def mask_in_model_space(mask: Image.Image, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The object mask carried through the classifier's eval transform (resize/crop), as bool ``[H, W]``.

    The mask is pushed through ``transform`` as a black/white RGB image and compared with
    the transform of pure black and pure white images of the same size, so any
    combination of resizing, cropping and per-channel normalisation maps correctly.
    """
    m = mask.convert("L").point(lambda v: 255 if v > 127 else 0).convert("RGB")
    t = transform(m)[0]
    lo = transform(Image.new("RGB", m.size, (0, 0, 0)))[0]
    hi = transform(Image.new("RGB", m.size, (255, 255, 255)))[0]
    return (t - lo) > 0.5 * (hi - lo)


def score_samples(
    model: torch.nn.Module,
    edited: Sequence[Image.Image],
    originals: Sequence[Image.Image],
    masks: Sequence[Image.Image],
    source_class: Sequence[int],
    ig_target: Sequence[int],
    transform: Callable[[Image.Image], torch.Tensor],
    n_steps: int = 50,
    internal_batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """``p``, ``p_target``, ``rho_raw``, ``attr_total``, ``rho_fraction``, ``logit_delta`` for one batch."""
    from captum.attr import IntegratedGradients  # deferred: heavy, only attribution needs it

    device = resolve_device(device)
    cl = use_channels_last(model, device)
    prepare_model(model, device, cl).eval()
    x = to_device(torch.stack([transform(im.convert("RGB")) for im in edited]), device, cl)
    x0 = to_device(torch.stack([transform(im.convert("RGB")) for im in originals]), device, cl)
    mk = torch.stack([mask_in_model_space(m, transform) for m in masks]).to(device)
    tgt = torch.as_tensor(list(ig_target), device=device)
    src = torch.as_tensor(list(source_class), device=device)
    with torch.no_grad():
        logits = model(x).float()
        logits0 = model(x0).float()
    prob = logits.softmax(1)
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, baselines=x0, target=tgt, n_steps=n_steps, internal_batch_size=internal_batch_size)
    attr = attr.float().sum(1)  # over colour channels: one value per pixel
    rho = (attr * mk).flatten(1).sum(1)
    total = attr.flatten(1).sum(1)
    ar = torch.arange(len(x), device=device)
    out = []
    for k in range(len(x)):
        t = float(total[k])
        out.append({
            "p": float(prob[k, src[k]]), "p_target": float(prob[k, tgt[k]]), "rho_raw": float(rho[k]),
            "attr_total": t, "rho_fraction": float(rho[k]) / t if t != 0 else float("nan"),
            "logit_delta": float(logits[ar[k], tgt[k]] - logits0[ar[k], tgt[k]]), "mask_area": float(mk[k].float().mean()),
        })
    return out


def apply_rules(
    table: pd.DataFrame, threshold: float = 0.3, rho: str = "raw", use_condition1: bool = True,
    use_condition2: bool = True,
) -> pd.DataFrame:
    """Add the verdict columns to a copy of ``table``.

    ``cond1_keep = p < psi``; ``cond2_keep = rho > threshold`` (``rho`` is ``rho_raw`` or
    ``rho_fraction``); ``keep`` = both (a disabled condition counts as passed).
    """
    if rho not in ("raw", "fraction"):
        raise ValueError(f"ddb.prune.rho: {rho!r} is not 'raw' or 'fraction'")
    out = table.copy()
    out["cond1_keep"] = out["p"] < out["psi"]
    r = out["rho_raw"] if rho == "raw" else out["rho_fraction"]
    out["cond2_keep"] = (r > threshold).fillna(False).astype(bool)
    keep = np.ones(len(out), dtype=bool)
    if use_condition1:
        keep &= out["cond1_keep"].to_numpy(bool)
    if use_condition2:
        keep &= out["cond2_keep"].to_numpy(bool)
    out["keep"] = keep
    return out


def prune_counts(table: pd.DataFrame) -> dict:
    """Counts of generated / kept samples, per condition and per source class."""
    counts = {
        "generated": int(len(table)),
        "kept_condition1": int(table["cond1_keep"].sum()) if len(table) else 0,
        "kept_condition2": int(table["cond2_keep"].sum()) if len(table) else 0,
        "kept": int(table["keep"].sum()) if len(table) else 0,
        "per_source_class": {},
    }
    for c, g in table.groupby("source_class") if len(table) else []:
        counts["per_source_class"][str(int(c))] = {
            "generated": int(len(g)), "kept_condition1": int(g["cond1_keep"].sum()),
            "kept_condition2": int(g["cond2_keep"].sum()), "kept": int(g["keep"].sum()),
        }
    return counts


def score_table(
    model: torch.nn.Module,
    samples: pd.DataFrame,
    load_edited: Callable[[dict], Image.Image],
    load_original: Callable[[dict], Image.Image],
    load_mask: Callable[[dict], Image.Image],
    psi: dict[int, float],
    transform: Callable[[Image.Image], torch.Tensor],
    ig_target: str = "new",
    n_steps: int = 50,
    internal_batch_size: int = 64,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    done: pd.DataFrame | None = None,
    on_batch: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Score every generated sample (rows of the inpainting table); returns the table of :data:`TABLE_COLUMNS`.

    Rows already in ``done`` are kept and not recomputed; ``on_batch(table_so_far)`` is
    called after each batch (the caller saves it, so an interrupted run resumes).
    """
    rows = [] if done is None or len(done) == 0 else done.to_dict("records")
    have = {r["sample_id"] for r in rows}
    todo = [r for r in samples.to_dict("records") if r["sample_id"] not in have]
    pbar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="prune (IG)", unit="img", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            tgt = [int(r["target_class"]) if ig_target == "new" else int(r["source_class"]) for r in chunk]
            scores = score_samples(
                model, [load_edited(r) for r in chunk], [load_original(r) for r in chunk],
                [load_mask(r) for r in chunk], [int(r["source_class"]) for r in chunk], tgt, transform,
                n_steps=n_steps, internal_batch_size=internal_batch_size, device=device,
            )
            for r, s in zip(chunk, scores):
                rows.append({"sample_id": r["sample_id"], "source_id": r["source_id"],
                             "source_class": int(r["source_class"]), "target_class": int(r["target_class"]),
                             "label": int(r["label"]), "psi": float(psi[int(r["source_class"])]), **s})
            pbar.update(len(chunk))
            if on_batch is not None:
                on_batch(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))
    finally:
        pbar.close()
    order = {sid: k for k, sid in enumerate(samples["sample_id"])}
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.sort_values("sample_id", key=lambda s: s.map(order)).reset_index(drop=True)
