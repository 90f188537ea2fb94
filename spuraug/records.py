"""The suite's record schema: every file a run or a DDB stage writes, and how it is read.

- :class:`RunConfig`: ``config.json`` of a run folder, the resolved config of
  :func:`spuraug.config.load_config`;
- :class:`EpochLine`: one line of ``metrics.jsonl`` (one evaluated epoch);
- :class:`RunResult`: ``result.json`` of a finished run;
- :class:`StageManifest`: ``manifest.json`` of a DDB stage folder, with the images the
  stage processed and the seconds it took (over every attempt).

Writers build these and call ``to_dict``/``write``; readers call ``read``/``from_dict``,
which check the required fields and raise :class:`RecordError` naming the file and the
field. Keys a writer adds beyond the schema (a method's own fields in ``result.json``, a
stage's counts and models in its manifest) are kept in ``extra`` and written back after
the schema's fields, so files written before this module read and round-trip unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from spuraug import atomic

__all__ = ["EpochLine", "RecordError", "RunConfig", "RunResult", "StageManifest", "read_json"]

#: Metrics every evaluation (``val``, ``test`` of an epoch line or a result) carries.
METRIC_KEYS: tuple[str, ...] = ("worst_group_acc", "avg_acc", "adjusted_avg_acc", "groups")


class RecordError(ValueError):
    """A record file that does not follow the schema; the message names the file and field."""


def read_json(path: str | os.PathLike) -> Any:
    """The JSON of ``path``; :class:`RecordError` naming the file when it is missing or torn."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None


class _Record:
    """``from_dict``/``to_dict`` of a dataclass with an ``extra`` dict for keys beyond the schema."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Any, where: str = "record"):
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key in cls.REQUIRED:
            if key not in data:
                raise RecordError(f"{where}: missing field {key!r}")
        names = cls._names()
        known = {k: data[k] for k in names if k in data}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)  # type: ignore[call-arg]

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self._names()}
        out.update(self.extra)  # type: ignore[attr-defined]
        return out

    @classmethod
    def read(cls, path: str | os.PathLike):
        return cls.from_dict(read_json(path), str(path))

    def write(self, path: str | os.PathLike) -> None:
        atomic.write_json(path, self.to_dict())


@dataclass
class RunConfig(_Record):
    """``config.json``: the resolved config of one run (see :func:`spuraug.config.load_config`)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("dataset", "method", "model", "hparams", "config_hash")

    dataset: str
    method: str
    dataset_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    loader: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)
    #: Everything else (``erm`` for methods that start from ERM, ``config_file``,
    #: ``sources``, ``config_hash``), in the order load_config writes it.
    extra: dict = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        return str(self.extra["config_hash"])

    @classmethod
    def from_dict(cls, data: Any, where: str = "config.json") -> RunConfig:
        return super().from_dict(data, where)


@dataclass
class EpochLine(_Record):
    """One line of ``metrics.jsonl``: the training figures of an epoch and, when it was
    evaluated, the metrics of every evaluation split (``val``, ``test``) and the
    objective's log (GroupDRO's group weights, DFR's C, ...)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("epoch",)

    epoch: int
    step: int | None = None
    train_loss: float | None = None
    images_per_s: float | None = None
    step_time_s: float | None = None
    peak_mem_mb: float | None = None
    #: Evaluation splits by name, then ``objective``, in the order they were added.
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> dict | None:
        """The metrics of evaluation split ``name`` (``None`` when not evaluated)."""
        return self.extra.get(name)

    @classmethod
    def from_dict(cls, data: Any, where: str = "metrics.jsonl") -> EpochLine:
        return super().from_dict(data, where)


@dataclass
class RunResult(_Record):
    """``result.json``: the selected epoch's metrics of a finished run, with its annotation
    setting, timing and config; a method's own fields (``ddb``, ``dfr``, ``error_set``) in
    ``extra``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("dataset", "method", "seed", "test")

    dataset: str
    method: str
    seed: int
    selection: str | None = None
    selected_epoch: int | None = None
    annotation: dict | None = None
    val: dict | None = None
    test: dict | None = None
    config_hash: str | None = None
    wall_time_s: float | None = None
    config: dict | None = None
    #: The names of the groups of the data the run was made on, indexed by ``g = y *
    #: n_attributes + a`` (``"four / sky"`` for ``dataset_options.digits=[4,9]``,
    #: ``backgrounds=[sky,brick]``), so that tables never guess them from the dataset's
    #: defaults. ``None`` in results written before the field existed (and then not written back).
    group_names: list[str] | None = None
    #: torch's intra-op CPU threads during the run: CPU kernels split reductions by thread
    #: count, so the same run on 1 and 2 threads differs in the last bits and, after training,
    #: in its accuracies (bench/launch.py local_parallelism). ``None`` in older results.
    torch_threads: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in ("group_names", "torch_threads"):
            if out.get(key) is None:
                out.pop(key, None)  # a result written before the field round-trips unchanged
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "result.json") -> RunResult:
        result = super().from_dict(data, where)
        if not isinstance(result.test, dict):
            raise RecordError(f"{where}: field 'test' is not an object")
        for key in METRIC_KEYS:
            if key not in result.test:
                raise RecordError(f"{where}: field 'test' has no {key!r}")
        names = result.group_names
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise RecordError(f"{where}: field 'group_names' is not a list of strings: {names!r}")
        return result


@dataclass
class StageManifest(_Record):
    """``manifest.json`` of a DDB stage folder (:class:`spuraug.ddb.artifacts.Artifact`).

    ``wall_time_s`` adds up every attempt (an interrupted one leaves
    ``wall_time_s_partial`` until the stage finishes); ``images`` is what the stage
    processed (segment: sources, inpaint: planned samples, prune: scored samples; ``None``
    for a stage that does not process images one by one, and in manifests written before
    the field existed); ``images_per_s`` is the stage's rate. Counts, models, seeds and the
    stage's config are in ``extra``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("stage",)

    stage: str
    config_hash: str | None = None
    wall_time_s: float | None = None
    images: int | None = None
    images_per_s: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> StageManifest:
        return super().from_dict(data, where)

    def write(self, path: str | os.PathLike) -> None:
        """DDB artifacts' JSON style: sorted keys, anything else as ``str``."""
        atomic.write_json(path, self.to_dict(), sort_keys=True, default=str)
