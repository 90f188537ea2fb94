"""Find DDB's example images (source, mask, generated) and pruning verdicts on disk.

The DDB stages write cached artifact folders under ``runs/<dataset>/ddb_artifacts/``
(spuraug/ddb/pipeline.py); the prune stage writes ``seed<S>/prune-<key>/table.csv`` with
one row per generated image (``source_path``, ``mask_path``, ``generated_path``,
``keep``, ``p``, ``psi``, ``rho``, ...). This module reads any ``*.csv`` / ``*.jsonl`` /
``*.json`` table under a folder whose name starts with ``prune`` (below
``ddb_artifacts/`` or ``ddb/``) and recognises the columns below; image paths may be
absolute or relative to the working directory, the table's folder, its parent, or the
artifacts folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

KEPT_KEYS = ("kept", "keep", "verdict")
SOURCE_KEYS = ("source_path", "source_image", "source")
MASK_KEYS = ("mask_path", "mask")
#: The grid of examples a version folder holds when DDB ran (written by the sweep).
EXAMPLES_PNG = "ddb_examples.png"
GENERATED_KEYS = ("generated_path", "generated", "edited_path", "image_path", "path")


def _read_table(path: Path) -> list[dict]:
    try:
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return list(csv.DictReader(f))
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, csv.Error, UnicodeDecodeError):
        return []
    if isinstance(data, list):
        return [d for d in data if isinstance(d, dict)]
    if isinstance(data, dict):
        for key in ("rows", "samples", "examples", "table"):
            if isinstance(data.get(key), list):
                return [d for d in data[key] if isinstance(d, dict)]
    return []


def _truthy(v) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("1", "true", "yes", "kept", "keep"):
            return True
        if t in ("0", "false", "no", "pruned", "prune"):
            return False
    return None


def _resolve(value, roots: list[Path]) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    if p.is_absolute():
        return str(p) if p.is_file() else None
    for root in roots:
        if (root / p).is_file():
            return str(root / p)
    return None


def _first(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def find_examples(runs_dir: str | Path, dataset: str) -> list[dict]:
    """Rows ``{"source", "mask", "generated", "kept", "p", "rho"}`` with existing image paths.

    Only rows whose generated image exists are returned; an empty list when DDB has not
    run on ``dataset``.
    """
    out = []
    for base in ddb_artifact_dirs(runs_dir, dataset):
        out += _examples_below(base)
    return out


def ddb_artifact_dirs(runs_dir: str | Path, dataset: str) -> list[Path]:
    """The folders DDB writes its stage artifacts to, those that exist."""
    return [d for d in (Path(runs_dir) / dataset / "ddb_artifacts", Path(runs_dir) / dataset / "ddb") if d.is_dir()]


def _examples_below(base: Path) -> list[dict]:
    out = []
    tables = [p for p in sorted(base.rglob("*")) if p.suffix in (".csv", ".jsonl", ".json")
              and p.name not in ("manifest.json", "key.json") and ".partial." not in p.name
              and any(part.startswith("prune") for part in p.relative_to(base).parts[:-1])]
    for table in tables:
        roots = [Path.cwd(), table.parent, table.parent.parent, base]
        for row in _read_table(table):
            kept = _truthy(_first(row, KEPT_KEYS))
            generated = _resolve(_first(row, GENERATED_KEYS), roots)
            if kept is None or generated is None:
                continue
            out.append({
                "source": _resolve(_first(row, SOURCE_KEYS), roots),
                "mask": _resolve(_first(row, MASK_KEYS), roots),
                "generated": generated,
                "kept": kept,
                "p": _float(row.get("p", row.get("prob_source"))),
                "rho": _float(row.get("rho", row.get("attribution_in_mask"))),
            })
    return out


def ddb_grid(runs_dir: str | Path, dataset: str, out_png: Path, n_rows: int = 8) -> Path | None:
    """A grid of DDB examples (source | mask | generated | verdict), half kept and half pruned.

    Reads the prune tables that :func:`find_examples` finds under ``runs/<dataset>/``;
    returns ``None`` when there are none. The sweep writes it into the version folder
    (:data:`EXAMPLES_PNG`), where the leaderboard finds it.
    """
    examples = find_examples(runs_dir, dataset)
    if not examples:
        return None
    kept = [e for e in examples if e["kept"]]
    pruned = [e for e in examples if not e["kept"]]
    half = n_rows // 2
    chosen = kept[:half] + pruned[: n_rows - min(half, len(kept))]
    chosen += kept[half: half + n_rows - len(chosen)]
    import matplotlib  # deferred: matplotlib is slow to import and only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy, only plotting needs it

    fig, axes = plt.subplots(len(chosen), 3, figsize=(6.3, 2.1 * len(chosen)), squeeze=False)
    for row, e in zip(axes, chosen):
        for ax, key, title in zip(row, ("source", "mask", "generated"), ("source", "mask", "generated")):
            ax.set_xticks([])  # keep the frame: an all-white mask stays visible
            ax.set_yticks([])
            p = e.get(key)
            if p and Path(p).is_file():
                with Image.open(p) as im:
                    if key == "mask":  # fixed range: an all-object mask must show white, not black
                        ax.imshow(im.convert("L"), cmap="gray", vmin=0, vmax=255)
                    else:
                        ax.imshow(im.convert("RGB"))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8)
            ax.set_title(title, fontsize=8)
        verdict = "KEPT" if e["kept"] else "PRUNED"
        detail = "  ".join(f"{k}={e[k]:.3g}" for k in ("p", "rho") if isinstance(e.get(k), int | float))
        row[2].set_title(f"{verdict} {detail}".strip(), fontsize=8, color="#1a7f37" if e["kept"] else "#c62828")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
