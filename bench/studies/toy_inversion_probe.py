"""Does a textual-inversion setting give tokens that draw their class's digit? A probe on the toy zoo.

    python -m bench.studies.toy_inversion_probe [--loss-region image|object|box] [--steps 1000]
                                        [--n-eval 384] [--words] [--out FILE]

Learns one token per toy class with :func:`spuraug.ddb.invert.train_token` (30 training
images per class, the toy config's recipe) from the TRUE object masks instead of the
segmenter's, so only the inversion setting varies:

- ``image``: the paper's whole-image inversion (fully masked);
- ``object``: ``loss_region: object`` with the object's box grown 2 px as the masked region
  and the object's mask as the loss region (what DDB's toy config does with the segmenter);
- ``box``: ``loss_region: object`` with the box as both masked and loss region.

Then repaints the object's box (grown 2 px) of ``--n-eval`` balanced toy *test* images, half
of each class, with "a photo of a <other class token> digit" (20 steps, guidance 7.5, seed
0) and reads them with the world oracle: the share showing the other class's digit
(overall and per target class), the share still showing the source digit, the share
keeping the background. ``--words`` also repaints with the initializer word and with the
other class's true digit word. About 2 minutes per setting on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.provenance import emit_report
from spuraug.data.toy import ToyConfig, ToyDataset
from spuraug.ddb import invert as inv
from spuraug.ddb.config import InvertConfig
from spuraug.toyworld.check import box_masks, inpaint, load_inpainter
from spuraug.toyworld.oracle import load_oracle
from spuraug.toyworld.quality import composition_report
from spuraug.toyworld.render import DIGIT_WORDS
from spuraug.toyworld.zoo import resolve_model_id

TOKENS = ("<class-0>", "<class-1>")


def learn_tokens(loss_region: str, steps: int, out: Path, seed: int = 0) -> dict[str, Path]:
    """Each class's learned embedding file (``out/class<c>/learned_embeds.safetensors``)."""

    model = resolve_model_id("spuraug/toy-sd-inpainting")
    train = ToyDataset("train", ToyConfig())
    comps = inv.load_sd_components(model)
    ids = inv.add_tokens(comps, list(TOKENS), "digit")
    cfg = InvertConfig(model=model, initializer_token="digit", noun="digit", resolution=64, max_train_steps=steps,
                       loss_region="image" if loss_region == "image" else "object", fuse_accumulation=True,
                       seed=seed)
    files = {}
    for c in (0, 1):
        pos = inv.select_images(train.y, c, cfg.n_images, cfg.image_seed)
        masks = np.stack([train.mask(int(p)) for p in pos])
        boxes = box_masks(masks, 2)
        objects = list(boxes) if loss_region == "box" else list(masks)
        inv.train_token(comps, [train.load_image(int(p)) for p in pos], TOKENS[c], ids[c], cfg, out / f"class{c}",
                        desc=f"invert class {c}", regions=list(boxes), objects=objects)
        files[TOKENS[c]] = out / f"class{c}" / inv.EMBEDS_FILE
    return files


def balanced_test_selection(n_eval: int):
    """The probes' test images: ``n_eval // 2`` of each class (fixed draw), their target
    class (the other one), and the test split."""

    test = ToyDataset("test", ToyConfig())
    rng = np.random.default_rng(1)
    sel = np.concatenate([rng.choice(np.flatnonzero(test.y == s), n_eval // 2, replace=False) for s in (0, 1)])
    return test, sel, 1 - test.y[sel]


def repaint_rates(pipe, oracle, test, sel: np.ndarray, target: np.ndarray, prompts: list[str]) -> dict:
    """Repaint the object boxes (grown 2 px) of ``test[sel]`` with ``prompts`` (20 steps,
    guidance 7.5, seed 0) and read them with the oracle: the share showing the target
    class's digit (overall and per target class), the source digit, the source background."""

    cfg = test.config
    images = inpaint(pipe, test.images[sel], box_masks(test.masks[sel], 2), prompts, seed=0, guidance_scale=7.5)
    rep = composition_report(images, [cfg.digits[j] for j in target],
                             [cfg.backgrounds[a] for a in test.a[sel]], oracle=oracle)
    ok = rep["pred_digit"] == np.array([cfg.digits[j] for j in target])
    source = rep["pred_digit"] == np.array([cfg.digits[s] for s in test.y[sel]])
    return {"n": int(len(sel)), "target_digit": round(float(ok.mean()), 4),
            "source_digit": round(float(source.mean()), 4),
            "background_kept": round(rep["background_rate"], 4),
            "target_digit_by_target_class": {str(j): round(float(ok[target == j].mean()), 4) for j in (0, 1)}}


def evaluate(embeddings: dict[str, Path], n_eval: int, words: bool) -> dict:

    test, sel, target = balanced_test_selection(n_eval)
    cfg = test.config
    pipe = load_inpainter()
    for token, path in embeddings.items():  # as DDB's inpainting stage loads them
        pipe.load_textual_inversion(str(path), token=token)
    probes = {"token": [f"a photo of a {TOKENS[j]} digit" for j in target]}
    if words:
        probes["initializer_word"] = ["a photo of a digit digit"] * len(sel)
        probes["true_word"] = [f"a photo of a {DIGIT_WORDS[cfg.digits[j]]} digit" for j in target]
    oracle = load_oracle()
    return {name: repaint_rates(pipe, oracle, test, sel, target, prompts) for name, prompts in probes.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss-region", choices=("image", "object", "box"), default="object")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n-eval", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0, help="the inversion's seed")
    ap.add_argument("--words", action="store_true", help="also repaint with the initializer word and the true word")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = learn_tokens(args.loss_region, args.steps, Path(tmp), args.seed)
        report = {"args": vars(args), **evaluate(files, args.n_eval, args.words)}
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return emit_report(report, args.out)


if __name__ == "__main__":
    main()
