"""The one training and evaluation loop every method uses (ERM, GroupDRO, JTT, DFR, DDB).

What a method changes is pluggable, not copied:

- *what is sampled*: one or more :class:`TrainSource` (a dataset plus a sampling rule:
  shuffle, weighted sampling with replacement, or an explicit index list such as JTT's
  upsampled error set). The first source defines the epoch; further sources (DDB's
  generated images) are cycled alongside it, each batch concatenated to the first.
- *what is minimised*: an :class:`Objective` receives the per-example losses together
  with ``y``, ``a``, ``index`` and ``source`` of the batch and returns the scalar to
  minimise (GroupDRO's online group weights, per-example weights, DDB's
  ``L_train + sum_c gamma_c * L_gen(class c)``).

Determinism: every epoch reseeds torch / numpy / random and the samplers from
``(seed, epoch)``, so a run resumed from ``last.pt`` continues exactly as an
uninterrupted one would (on CPU; CUDA kernels may differ in the last bits). On CUDA the
loop uses bf16 autocast, channels-last tensors and pinned host memory; the device is
always an argument, never implied.

Each evaluated epoch appends one JSON line to ``metrics.jsonl`` (see
``spuraug/runs.py``) with per-group metrics on every evaluation split, so any
model-selection rule can be applied afterwards; ``checkpoints/best.pt`` holds the model
selected online by the configured rule and ``checkpoints/last.pt`` everything needed to
resume. All files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from spuraug import atomic
from spuraug.metrics import evaluate_predictions
from spuraug.records import EpochLine

#: Model-selection rules: name -> (evaluation split, metric). ``test_oracle`` is a
#: labelled reference only (it looks at test labels).
SELECTION_RULES: dict[str, tuple[str, str]] = {
    "val_worst_group_acc": ("val", "worst_group_acc"),
    "val_worst_class_acc": ("val", "worst_class_acc"),
    "test_oracle": ("test", "worst_group_acc"),
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------
# devices, seeds, files
# ----------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``"auto"`` means CUDA when present."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for ``(run seed, epoch, stream)``: the same on every resume."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, empty, not a checkpoint)."""


def load_state(path: Path, device: str | torch.device = "cpu") -> dict:
    """``torch.load`` with ``weights_only=True`` (state dicts and plain values only).

    A file that exists but cannot be read raises :class:`UnreadableCheckpoint` naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
        why = (str(e).strip().splitlines() or [""])[0][:120]
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({type(e).__name__}: {why})") from None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------------
# what is sampled
# ----------------------------------------------------------------------------------
class _EpochSampler(Sampler[int]):
    """Index order of one epoch of a :class:`TrainSource`, seeded per epoch."""

    def __init__(self, source: TrainSource, seed: int) -> None:
        self.source = source
        self.seed = seed

    def __len__(self) -> int:
        return self.source.epoch_size()

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        src = self.source
        if src.weights is not None:
            w = torch.as_tensor(np.asarray(src.weights, dtype=np.float64))
            order = torch.multinomial(w, src.epoch_size(), replacement=True, generator=g)
            return iter(order.tolist())
        base = np.arange(len(src.dataset)) if src.indices is None else np.asarray(src.indices)
        if not src.shuffle:
            return iter(base.tolist())
        perm = torch.randperm(len(base), generator=g).numpy()
        return iter(base[perm].tolist())


@dataclass
class TrainSource:
    """A dataset to train on and how to sample it.

    - default: every example once per epoch, shuffled;
    - ``weights``: ``num_samples`` draws with replacement, probability proportional to
      ``weights`` (group-balanced sampling);
    - ``indices``: an explicit epoch (indices may repeat: JTT's upsampled error set).

    The dataset returns ``(x, y, a, index)``; ``a`` may be ``-1`` where unknown.
    """

    dataset: Dataset
    batch_size: int
    weights: Sequence[float] | np.ndarray | None = None
    num_samples: int | None = None
    indices: Sequence[int] | np.ndarray | None = None
    shuffle: bool = True
    drop_last: bool = False

    def epoch_size(self) -> int:
        if self.weights is not None:
            return int(self.num_samples if self.num_samples is not None else len(self.dataset))
        return len(self.dataset) if self.indices is None else len(self.indices)


def group_balanced_weights(g: np.ndarray, n_groups: int) -> np.ndarray:
    """Sampling weights ``1 / n_g`` so every non-empty group is drawn equally often."""
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    return 1.0 / counts[g]


def group_balanced_subset(g: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random group-balanced subset: every non-empty group cut to the size of
    the smallest non-empty group (DFR's validation subsets, SUBG's training set)."""
    g = np.asarray(g)
    by_group = [np.flatnonzero(g == k) for k in range(n_groups)]
    by_group = [ix for ix in by_group if len(ix)]
    m = min(len(ix) for ix in by_group)
    return np.concatenate([rng.permutation(ix)[:m] for ix in by_group])


def resolve_num_workers(value: int | str, device: str | torch.device | None = None) -> int:
    """``loader.num_workers`` as a number: an int as given; ``"auto"`` from the cores this
    process may use (``os.sched_getaffinity``). On CUDA the model runs on the GPU and every
    core but one decodes (at most 16); on the CPU the training step needs the cores itself and
    decoding a batch costs a few percent of a ResNet-50 step, so one worker per 8 cores
    (at least 1) overlaps it without oversubscribing (docs/harness.md, "CPU training speed")."""
    if isinstance(value, bool):
        raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value}")
        return value
    if value != "auto":
        raise ValueError(f"loader.num_workers: expected an integer >= 0 or 'auto', got {value!r}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if resolve_device(device).type == "cuda":
        return max(1, min(16, cores - 1))
    return max(1, cores // 8)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader set up for ``device`` (pinned memory on CUDA), deterministic in order."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=g,
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------
# what is minimised
# ----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One training step's examples, all sources concatenated.

    ``source`` holds each example's position in the ``sources`` mapping given to
    :func:`fit` (0 = the first, main, source); ``source_names`` names them.
    """

    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    source_names: tuple[str, ...] = ()


class Objective:
    """Turns per-example losses into the scalar that is minimised.

    Subclasses override :meth:`__call__`; stateful objectives (GroupDRO's group
    weights) also :meth:`state_dict` / :meth:`load_state_dict` (saved in ``last.pt``)
    and may report values in :meth:`log` (added to the epoch's JSON line).
    The default is the mean loss (ERM).
    """

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return losses.mean()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def log(self) -> dict:
        return {}


class WeightedObjective(Objective):
    """``sum_i w[index_i] * loss_i / sum_i w[index_i]`` over the main source's examples."""

    def __init__(self, weights: np.ndarray | torch.Tensor) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)

    def __call__(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        w = self.weights.to(losses.device)[batch.index]
        return (w * losses).sum() / w.sum().clamp_min(1e-12)


# ----------------------------------------------------------------------------------
# prediction and evaluation
# ----------------------------------------------------------------------------------
def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def use_channels_last(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> bool:
    """Whether ``model`` runs on channels-last tensors on ``device``: ``channels_last`` when
    given; else always on CUDA, and on the CPU where the model says it is faster
    (``model.cpu_channels_last``, measured per backbone: :class:`spuraug.models.ResNet50`)."""
    if channels_last is not None:
        return bool(channels_last)
    return device.type == "cuda" or bool(getattr(model, "cpu_channels_last", False))


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """``x`` on ``device``; a batch of images (4-d) in channels-last memory when ``channels_last``
    (None: on CUDA)."""
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device``, in channels-last memory where :func:`use_channels_last` says."""
    model.to(device)
    if use_channels_last(model, device, channels_last):
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    features: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Logits (``features=False``) or penultimate embeddings (``model.features``) of
    every example of ``dataset``, in dataset order, as float32 numpy, model in eval mode."""
    device = resolve_device(device)
    cl = use_channels_last(model, device, channels_last)
    prepare_model(model, device, cl)
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, device, num_workers=num_workers)
    out = []
    for x, *_ in tqdm(loader, desc="predict", leave=False, disable=None if progress else True, file=sys.stderr):
        with _autocast(device):
            z = model.features(to_device(x, device, cl)) if features else model(to_device(x, device, cl))
        out.append(z.float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def per_example_losses(
    model: nn.Module,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> np.ndarray:
    """Cross-entropy loss of ``model`` (eval mode) on every example of ``dataset``, in
    dataset order (``float64``). Give the dataset its eval transform: DDB picks the K
    lowest-loss training images per class with it, JTT's error set uses the same pass."""
    logits = torch.from_numpy(predict(model, dataset, device, batch_size, num_workers=num_workers))
    y = torch.as_tensor(np.array(dataset.y if hasattr(dataset, "y") else _labels(dataset)))
    return F.cross_entropy(logits.double(), y.long(), reduction="none").numpy()


def _labels(dataset: Dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def evaluate(
    model: nn.Module,
    dataset: Any,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    train_group_counts: Sequence[int] | None = None,
    num_workers: int = 0,
    channels_last: bool | None = None,
) -> dict:
    """:func:`spuraug.metrics.evaluate_predictions` of ``model`` on a :class:`SpuriousDataset`."""
    logits = predict(model, dataset, device, batch_size, num_workers=num_workers, channels_last=channels_last)
    return evaluate_predictions(
        dataset.y, dataset.a, logits.argmax(1), dataset.n_classes, dataset.n_attributes, train_group_counts
    )


def selection_score(line: Mapping, rule: str) -> float:
    """The value model selection maximises for one JSON line of ``metrics.jsonl``."""
    if rule not in SELECTION_RULES:
        raise KeyError(f"unknown selection rule {rule!r}; known rules: {', '.join(SELECTION_RULES)}")
    split, metric = SELECTION_RULES[rule]
    if split not in line or line[split] is None:
        raise KeyError(f"selection rule {rule!r} needs {split!r} metrics in the JSON line")
    return float(line[split][metric])


def select_line(lines: Sequence[Mapping], rule: str = "val_worst_group_acc") -> Mapping:
    """The JSON line a selection rule picks (first maximum: earlier epochs win ties)."""
    if not lines:
        raise ValueError("no evaluated epochs to select from")
    best = lines[0]
    for line in lines[1:]:
        if selection_score(line, rule) > selection_score(best, rule):
            best = line
    return best


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON line of ``path`` (a missing file is empty).

    A torn last line (a write interrupted by a crash) is dropped, and said in one line on
    stderr; a damaged line before it is a ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = [(n, s) for n, s in enumerate(path.read_text().splitlines(), start=1) if s.strip()]
    out = []
    for k, (n, text) in enumerate(rows):
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as e:
            if k == len(rows) - 1:
                print(f"{path}: dropped a torn last line {n} (an interrupted write): {text[:60]!r}", file=sys.stderr)
                break
            raise ValueError(f"{path}: line {n}: not valid JSON ({e.msg}); the file is damaged") from None
    return out


# ----------------------------------------------------------------------------------
# optimisers and steps
# ----------------------------------------------------------------------------------
def build_optimizer(
    params: Any, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw`` over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise KeyError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_params: Any = None, max_norm: float = 1.0
) -> None:
    """One gradient step on ``loss``: zero the gradients, backpropagate, clip the gradient
    norm of ``clip_params`` to ``max_norm`` (when given), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    optimizer.step()


def progress_bar(iterable: Any = None, desc: str = "", enabled: bool = True, **kwargs: Any) -> tqdm:
    """The one progress bar of training loops (stderr; hidden when ``enabled`` is false or
    stderr is not a terminal)."""
    return tqdm(iterable, desc=desc, disable=None if enabled else True, file=sys.stderr, **kwargs)


# ----------------------------------------------------------------------------------
# checkpoint and resume
# ----------------------------------------------------------------------------------
class ResumePoint:
    """The file a training loop resumes from (``path``), written atomically, with the one
    before it kept as ``<stem>.previous<suffix>``.

    :meth:`load` returns the newest readable state: when ``path`` is damaged (truncated,
    empty) it says so in one line naming the file and falls back to the previous state,
    or returns ``None`` (train from the start) when there is none. A crash between the two
    renames of :meth:`save` leaves only the previous file, which is then resumed from.
    """

    def __init__(self, path: str | os.PathLike, describe: Callable[[dict], str] | None = None) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name(f"{self.path.stem}.previous{self.path.suffix}")
        self.describe = describe or (lambda state: f"step {state.get('step')}")

    def exists(self) -> bool:
        return self.path.is_file() or self.previous.is_file()

    def load(self, device: str | torch.device = "cpu", loader: Callable[[Path, Any], dict] | None = None,
             restart: str = "from the start") -> dict | None:
        load = loader or load_state
        damaged = None
        if self.path.is_file():
            try:
                return load(self.path, device)
            except UnreadableCheckpoint as e:
                damaged = str(e)
        if self.previous.is_file():
            try:
                state = load(self.previous, device)
            except UnreadableCheckpoint as e:
                damaged = f"{damaged}; {e}" if damaged else str(e)
            else:
                if damaged:
                    print(f"{damaged}; resuming from {self.previous} ({self.describe(state)})", file=sys.stderr)
                return state
        if damaged:
            print(f"{damaged}; no earlier checkpoint, training again {restart}", file=sys.stderr)
        return None

    def save(self, state: dict) -> None:
        if self.path.is_file():
            os.replace(self.path, self.previous)
        atomic.torch_save(self.path, state)

    def drop_previous(self) -> None:
        """Delete the previous state (once training is over: only the newest is kept)."""
        self.previous.unlink(missing_ok=True)


def cpu_state(model: nn.Module) -> dict:
    """A copy of ``model``'s state dict on the CPU (what checkpoints hold)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------
# records and progress
# ----------------------------------------------------------------------------------
class MetricsLog:
    """A run's ``metrics.jsonl``: one JSON line per evaluated epoch.

    Each :meth:`append` replaces the whole file atomically (temporary file, then rename), so
    a crash never leaves a torn line; an older file's torn last line is dropped on
    :meth:`load` (:func:`read_jsonl` says so). ``path=None`` keeps the lines in memory."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.lines: list[dict] = []

    def load(self, up_to_epoch: int) -> list[dict]:
        """The lines of epochs ``<= up_to_epoch`` (the file is rewritten without the lines of a
        lost epoch: a crash between a line and its checkpoint, or a fallback to an older one)."""
        self.lines = [h for h in read_jsonl(self.path) if int(h["epoch"]) <= up_to_epoch] if self.path else []
        self._write()
        return self.lines

    def reset(self) -> None:
        """No lines (lines without a checkpoint belong to nothing)."""
        self.lines = []
        if self.path is not None and self.path.exists():
            self.path.unlink()

    def append(self, line: dict) -> None:
        self.lines.append(line)
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            text = "".join(json.dumps(x) + "\n" for x in self.lines)
            atomic.write_text(self.path, text)


def print_epoch(line: dict, eval_sets: Sequence[str]) -> None:
    """One progress line per evaluated epoch (stderr)."""
    parts = [f"epoch {line['epoch']}"]
    if line.get("train_loss") is not None:
        parts.append(f"loss {line['train_loss']:.4f}")
    for name in eval_sets:
        m = line.get(name)
        if m:
            parts.append(f"{name} wga {m['worst_group_acc']:.1f} avg {m['avg_acc']:.1f}")
    print("  ".join(parts), file=sys.stderr)


# ----------------------------------------------------------------------------------
# evaluate and select
# ----------------------------------------------------------------------------------
class Selector:
    """Online model selection: the best score of ``rule`` so far and its epoch (strictly
    greater wins: earlier epochs win ties, as :func:`select_line`)."""

    def __init__(self, rule: str) -> None:
        if rule not in SELECTION_RULES:
            raise KeyError(f"unknown selection rule {rule!r}; known rules: {', '.join(SELECTION_RULES)}")
        self.rule = rule
        self.best_score = -math.inf
        self.best_epoch: int | None = None

    def update(self, line: Mapping) -> bool:
        """Whether ``line`` is the new best (lines without the rule's split never are)."""
        if SELECTION_RULES[self.rule][0] not in line:
            return False
        score = selection_score(line, self.rule)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, int(line["epoch"])
            return True
        return False

    def state_dict(self) -> dict:
        return {"best_score": self.best_score if self.best_epoch is not None else 0.0, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_epoch = state.get("best_epoch")
        self.best_score = float(state["best_score"]) if self.best_epoch is not None else -math.inf

    def selected(self, history: Sequence[Mapping]) -> dict | None:
        """The line the rule picks from ``history`` (``None`` without the rule's split)."""
        if history and SELECTION_RULES[self.rule][0] in history[0]:
            return dict(select_line(history, self.rule))
        return None


def evaluate_sets(
    model: nn.Module, eval_sets: Mapping[str, Any], device: torch.device, batch_size: int = 256,
    train_group_counts: Sequence[int] | None = None, num_workers: int = 0, channels_last: bool | None = None,
) -> dict[str, dict]:
    """``{split: evaluate(model, ds)}`` for every evaluation split."""
    return {name: evaluate(model, ds, device, batch_size, train_group_counts, num_workers, channels_last=channels_last)
            for name, ds in eval_sets.items()}


# ----------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` leaves behind: the model (with the LAST weights), the JSON lines,
    and the line the selection rule picked."""

    model: nn.Module
    history: list[dict]
    selected: dict | None
    out_dir: Path | None
    resumed_from_epoch: int = 0
    extra: dict = field(default_factory=dict)


def _cycle(loader_fn: Callable[[int], DataLoader]) -> Iterator:
    rnd = 0
    while True:
        yield from loader_fn(rnd)
        rnd += 1


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed python, numpy and torch for ``epoch`` of a run (the same on every resume)."""
    es = epoch_seed(seed, epoch, 7)
    random.seed(es)
    np.random.seed(es % 2**32)
    torch.manual_seed(es)


def epoch_loaders(
    sources: Mapping[str, TrainSource], epoch: int, seed: int, device: torch.device, num_workers: int = 0
) -> tuple[DataLoader, dict[str, Iterator]]:
    """The main source's loader for ``epoch`` and endless iterators over the other sources,
    each seeded from ``(seed, epoch, source)``."""
    names = tuple(sources)

    def loader_for(name: str, rnd: int = 0) -> DataLoader:
        src = sources[name]
        stream = names.index(name) * 100_003 + rnd
        sampler = _EpochSampler(src, epoch_seed(seed, epoch, stream))
        return make_loader(
            src.dataset, src.batch_size, device, sampler=sampler, num_workers=num_workers,
            drop_last=src.drop_last, seed=epoch_seed(seed, epoch, stream + 1),
        )

    extra = {n: _cycle(lambda rnd, n=n: loader_for(n, rnd + 1)) for n in names[1:]}
    return loader_for(names[0]), extra


def _batch_of(parts: list, source_names: tuple[str, ...], device: torch.device,
              channels_last: bool | None = None) -> Batch:
    return Batch(
        x=to_device(torch.cat([p[0] for p in parts]), device, channels_last),
        y=torch.cat([torch.as_tensor(p[1]) for p in parts]).long().to(device),
        a=torch.cat([torch.as_tensor(p[2]) for p in parts]).long().to(device),
        index=torch.cat([torch.as_tensor(p[3]) for p in parts]).long().to(device),
        source=torch.cat([torch.full((len(p[1]),), p[4], dtype=torch.long) for p in parts]).to(device),
        source_names=source_names,
    )


def train_epoch(
    model: nn.Module,
    sources: Mapping[str, TrainSource],
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    epoch: int,
    step: int,
    *,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    max_steps: int | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    on_nonfinite: Callable[[float, int], NoReturn] | None = None,
    bar: Callable[[Any], Any] = lambda it: it,
    channels_last: bool | None = None,
) -> tuple[dict, int]:
    """One epoch over ``sources`` (the first defines it; the others are cycled alongside, each
    batch concatenated) minimising ``objective``. Returns the epoch's training line
    (``epoch, step, train_loss, images_per_s, step_time_s, peak_mem_mb``) and the step count."""
    source_names = tuple(sources)
    seed_epoch(seed, epoch)
    main_loader, extra_iters = epoch_loaders(sources, epoch, seed, device, num_workers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    loss_sum, n_seen, n_steps, t_train = 0.0, 0, 0, 0.0
    for x, y, a, idx in bar(main_loader):
        t0 = time.perf_counter()
        parts = [(x, y, a, idx, 0)]
        for k, n in enumerate(source_names[1:], start=1):
            parts.append((*next(extra_iters[n]), k))
        batch = _batch_of(parts, source_names, device, channels_last)
        with _autocast(device):
            logits = model(batch.x)
        losses = F.cross_entropy(logits.float(), batch.y, reduction="none")
        loss = objective(losses, batch)
        if not torch.isfinite(loss) and on_nonfinite is not None:
            on_nonfinite(loss.item(), step + 1)
        optimizer_step(optimizer, loss)
        step += 1
        n_steps += 1
        loss_sum += float(loss.detach()) * len(batch.y)
        n_seen += len(batch.y)
        t_train += time.perf_counter() - t0
        if step_callback is not None:
            step_callback(epoch, step)
        if max_steps is not None and n_steps >= max_steps:
            break
    line: dict[str, Any] = EpochLine(
        epoch=epoch,
        step=step,
        train_loss=loss_sum / max(n_seen, 1),
        images_per_s=n_seen / t_train if t_train > 0 else None,
        step_time_s=t_train / max(n_steps, 1),
        peak_mem_mb=peak_memory_mb(device),
    ).to_dict()
    return line, step


def build_lr_schedule(optimizer: torch.optim.Optimizer, name: str,
                      epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule ``name`` of a run, stepped once per epoch by :func:`fit`:
    ``"constant"`` (None: the papers' recipes) or ``"cosine"`` (torch's CosineAnnealingLR over
    ``epochs``: epoch ``e`` of ``E`` trains at ``lr * (1 + cos(pi * (e - 1) / E)) / 2``)."""
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {name!r}")


def fit(
    model: nn.Module,
    sources: Mapping[str, TrainSource] | TrainSource,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    eval_sets: Mapping[str, Any] | None = None,
    *,
    objective: Objective | None = None,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    selection: str = "val_worst_group_acc",
    train_group_counts: Sequence[int] | None = None,
    eval_every: int = 1,
    eval_batch_size: int = 256,
    keep_epochs: Sequence[int] = (),
    num_workers: int = 0,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    channels_last: bool | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> FitResult:
    """Train ``model`` for ``epochs`` epochs over ``sources`` minimising ``objective``.

    After every ``eval_every``-th epoch (and the last) the model is evaluated on each of
    ``eval_sets`` (``{"val": ds, "test": ds}``, eval transforms) and one JSON line is
    added to ``out_dir/metrics.jsonl``; ``out_dir/checkpoints/best.pt`` is the model
    state that ``selection`` prefers so far, ``last.pt`` the full state to resume from
    (``last.previous.pt`` the one before, while training), ``epoch{NNN}.pt`` model states of the epochs in
    ``keep_epochs``. If ``out_dir`` already holds a checkpoint the run resumes from it. A
    NaN or infinite loss raises :class:`NonFiniteLossError` before anything of that epoch
    is written.

    ``out_dir=None`` trains in memory (no files, no resume). ``channels_last`` (default: see
    :func:`use_channels_last`) sets the memory format of the model and its input batches.
    ``lr_scheduler`` (:func:`build_lr_schedule`) is stepped after each epoch and resumes with the run.
    """
    device = resolve_device(device)
    if isinstance(sources, TrainSource):
        sources = {"train": sources}
    if not sources:
        raise ValueError("fit needs at least one training source")
    objective = objective or Objective()
    eval_sets = dict(eval_sets or {})
    selector = Selector(selection)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    resume = ResumePoint(ckpt_dir / "last.pt", lambda s: f"epoch {s['epoch']}") if ckpt_dir is not None else None
    log = MetricsLog(out / "metrics.jsonl" if out is not None else None)
    channels_last = use_channels_last(model, device, channels_last)
    prepare_model(model, device, channels_last)
    # the optimizer was built over parameters that `prepare_model` moved in place; its
    # state (momentum buffers) follows on load_state_dict.

    start_epoch, step = 0, 0
    state = resume.load(device, restart="from epoch 1") if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        objective.load_state_dict(state.get("objective", {}))
        if lr_scheduler is not None and "lr_scheduler" in state:
            lr_scheduler.load_state_dict(state["lr_scheduler"])
        selector.load_state_dict(state)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        log.load(start_epoch)
    else:
        log.reset()

    def stop(value: float, at_step: int) -> NoReturn:
        has_last = resume is not None and resume.exists()
        where = f"{resume.path} (epoch {epoch - 1})" if has_last else "none (no epoch finished)"
        raise NonFiniteLossError(
            f"training loss became {value} at epoch {epoch}, step {at_step}; "
            f"the run stopped. Last good checkpoint: {where}. "
            "Lower the learning rate or check the data."
        )

    for epoch in range(start_epoch + 1, epochs + 1):
        with progress_bar(desc=f"epoch {epoch}/{epochs}", enabled=progress, leave=False, unit="batch") as bar:
            line, step = train_epoch(
                model, sources, optimizer, objective, epoch, step, seed=seed, device=device,
                num_workers=num_workers, max_steps=max_steps_per_epoch, step_callback=step_callback,
                on_nonfinite=stop, channels_last=channels_last, bar=lambda it, bar=bar: _counted(it, bar),
            )
        if lr_scheduler is not None:
            line["lr"] = optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
            lr_scheduler.step()
        if epoch % eval_every == 0 or epoch == epochs:
            line.update(evaluate_sets(model, eval_sets, device, eval_batch_size, train_group_counts, num_workers,
                                      channels_last=channels_last))
            obj_log = objective.log()
            if obj_log:
                line["objective"] = obj_log
            if selector.update(line) and ckpt_dir is not None:
                atomic.torch_save(ckpt_dir / "best.pt", cpu_state(model))
            log.append(line)
            if progress:
                print_epoch(line, eval_sets)
        if ckpt_dir is not None:
            if epoch in set(keep_epochs):
                atomic.torch_save(ckpt_dir / f"epoch{epoch:03d}.pt", cpu_state(model))
            resume.save({
                "model": cpu_state(model),
                "optimizer": optimizer.state_dict(),
                "objective": objective.state_dict(),
                **({"lr_scheduler": lr_scheduler.state_dict()} if lr_scheduler is not None else {}),
                "epoch": epoch,
                "step": step,
                **selector.state_dict(),
                "torch_rng": torch.get_rng_state(),
            })
    if resume is not None and start_epoch < epochs:
        resume.drop_previous()  # finished: the run keeps one resume file, as before
    return FitResult(model=model, history=log.lines, selected=selector.selected(log.lines), out_dir=out,
                     resumed_from_epoch=start_epoch)


def train_steps(
    step_loss: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip_params: Any = None,
    max_norm: float = 1.0,
    after_step: Callable[[int], None] | None = None,
    resume: ResumePoint | None = None,
    state: Callable[[int], dict] | None = None,
    restore: Callable[[dict], None] | None = None,
    save_every_steps: int | None = None,
    save_every_s: float | None = None,
    desc: str = "",
    progress: bool = True,
) -> int:
    """A step-counted training loop (the toy zoo's stages, its oracle and backbone): for each
    step, ``step_loss(step)`` draws the step's batch from its own generator and returns the
    loss; :func:`optimizer_step` (with optional gradient clipping); ``lr_scheduler.step()``
    (a torch or diffusers schedule, built on ``optimizer`` before the loop: step ``s`` trains
    at its ``s``-th rate); then ``after_step(step)`` (an EMA update).

    With ``resume``, the loop starts from its newest readable state (``restore(state)``
    loads it; the state's ``step`` is where to go on; the schedule's state travels with it)
    and saves ``state(next_step)`` every ``save_every_steps`` steps and at the end, or every
    ``save_every_s`` seconds. Each step draws from generators seeded by the step, so a
    resumed loop ends with the same weights as an uninterrupted one. Returns the step it
    started from."""
    start = 0
    if resume is not None:
        ck = resume.load()
        if ck is not None:
            restore(ck)
            start = int(ck["step"])
            if lr_scheduler is not None and start:
                if "lr_scheduler" in ck:
                    lr_scheduler.load_state_dict(ck["lr_scheduler"])
                else:  # a state saved without its schedule: replay the schedule to ``start``
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
                        for _ in range(start):
                            lr_scheduler.step()
    last_save = time.time()
    bar = progress_bar(range(start, steps), desc=desc, enabled=progress, initial=start, total=steps)
    for step in bar:
        loss = step_loss(step)
        optimizer_step(optimizer, loss, clip_params, max_norm)
        if lr_scheduler is not None:
            lr_scheduler.step()
        if after_step is not None:
            after_step(step)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if resume is not None:
            done = step + 1
            due = (save_every_steps is not None and (done % save_every_steps == 0 or done == steps)) or (
                save_every_s is not None and time.time() - last_save > save_every_s)
            if due:
                saved = state(done)
                if lr_scheduler is not None:
                    saved = {**saved, "lr_scheduler": lr_scheduler.state_dict()}
                resume.save(saved)
                last_save = time.time()
    return start


def _counted(iterable: Any, bar: tqdm) -> Iterator:
    """Yield from ``iterable``, advancing ``bar`` (its total taken from the iterable)."""
    if hasattr(iterable, "__len__"):
        bar.total = len(iterable)
    for item in iterable:
        yield item
        bar.update(1)
