"""Every setting of a senca run, grouped as in ``config.toml``, with TOML reading and writing."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from senca.errors import SencaInputError
from senca.model import SencaConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class InputSettings:
    """Where the section comes from (see :func:`senca.io.read`)."""

    path: str | None = None
    format: str | None = None
    sample: str | None = None
    image: str | None = None
    image_scale: float | None = None
    labels: str | None = None


@dataclass
class PreprocessSettings:
    """QC, normalisation, HVG and PCA (see :func:`senca.pp.preprocess`)."""

    min_counts: int = 1
    min_spots: int = 3
    n_top_genes: int = 3000
    n_comps: int = 200


@dataclass
class GraphSettings:
    """Spatial graph (see :func:`senca.graph.spatial_graph`)."""

    method: str = "radius"
    radius: float | None = None
    n_neighbors: int = 6


@dataclass
class ImageSettings:
    """H&E patches, or precomputed per-spot image features instead of the ResNet.

    ``min_spot_px``: an image with fewer pixels across a spot is not used (the run says so in
    one line). Below it a patch shows the spot's colour but no texture: a nucleus of about
    10 um is under 1.5 px on a 55 um Visium spot at 8 px, so the ResNet has nothing to describe.
    A Visium lowres image has about 4 px across a spot, hires about 14, HER2ST's 2000 px
    display image 29. 0 uses any image (measured on a lowres image: benchmarks/README.md,
    "[image] min_spot_px").
    """

    patch_px: int = 64
    patch_spots: float = 2.0
    features: str | None = None
    min_spot_px: float = 8.0


@dataclass
class ClusterSettings:
    """Region finding on the embedding (see :func:`senca.tl.cluster`).

    ``restarts``: the model is trained this many times (seeds ``seed``, ``seed + 1000``, ...)
    and the regions are the per-spot consensus of the restarts' regions
    (:func:`senca.clustering.consensus_labels`). One run's regions depend on its random start;
    the consensus of three changes less from one seed to the next, at three times the
    training time; 1 for a quick look (measurements: benchmarks/README.md, section "Why the
    defaults are what they are", "[clustering] restarts").

    ``scale``: how the embedding is rescaled before the GMM (see
    :func:`senca.clustering.scale_features`). ``"none"`` by default: the embedding's variance
    spectrum is part of what it learned, and standardising each dimension gives its
    low-variance, uninformative directions the weight of the informative ones in the k-means
    start of EM (measurements in ``benchmarks/README.md``).

    ``restart_jobs``: how many restarts train at once, each in its own process (CPU only; on a
    GPU they run one after another). The regions are the same as with 1; the wall time falls
    towards that of one restart when there are as many free cores, and the memory grows with
    every process (each holds its own copy of the section; measurements in
    ``benchmarks/restart_jobs.md``). ``"auto"``: one process per free core, or one per restart
    where that keeps every core busy to the end (three restarts on two cores), from the
    ``senca`` command or an interactive session (see :func:`senca.pipeline.restart_jobs`). The
    processes import the main module, as spawned ones do, so a script that sets a number needs
    the ``if __name__ == "__main__":`` guard.
    """

    method: str = "gmm"
    k: int | None = None
    scale: str = "none"
    refine: bool = True
    restarts: int = 3
    restart_jobs: int | str = "auto"


@dataclass
class RunSettings:
    """All settings of one run; ``config.toml`` holds one table per field."""

    input: InputSettings = field(default_factory=InputSettings)
    preprocessing: PreprocessSettings = field(default_factory=PreprocessSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    model: SencaConfig = field(default_factory=SencaConfig)
    clustering: ClusterSettings = field(default_factory=ClusterSettings)
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict; ``None`` values left out (TOML has no null)."""
        out: dict[str, Any] = {"seed": self.seed, "device": self.device}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "model":
                out["model"] = value.to_dict()
            elif dataclasses.is_dataclass(value):
                out[f.name] = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunSettings:
        """Build settings from a nested dict (missing values keep their defaults)."""
        settings = cls()
        tables = {f.name: f for f in fields(cls)}
        for key, value in values.items():
            if key not in tables:
                raise SencaInputError(f"{source}: unknown setting {key!r}; expected one of {', '.join(tables)}")
            current = getattr(settings, key)
            if not dataclasses.is_dataclass(current):
                _check_types(cls, {key: value}, f"{source}:")
                setattr(settings, key, value)
                continue
            if not isinstance(value, dict):
                raise SencaInputError(f"{source}: [{key}] must be a table")
            known = {f.name for f in fields(current)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SencaInputError(f"{source}: unknown setting(s) {unknown} in [{key}]; known: {sorted(known)}")
            _check_types(type(current), value, f"{source}: [{key}]")
            try:
                setattr(settings, key, dataclasses.replace(current, **value))
            except SencaInputError as err:  # the model's own range checks
                raise SencaInputError(f"{source}: [{key}]: {err}") from err
        return settings

    def validate(self, source: str = "settings") -> RunSettings:
        """Check every setting's type and range, and that the device exists, before any data is read.

        Raises
        ------
        SencaInputError
            Naming the setting (as ``[table] name`` of ``config.toml``) and what was expected.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                _check_types(type(value), dataclasses.asdict(value), f"{source}: [{f.name}]")
            else:
                _check_types(type(self), {f.name: value}, f"{source}:")
        for table, name, test, expected in _RANGES:
            value = getattr(getattr(self, table), name) if table else getattr(self, name)
            if value is not None and not test(value):
                where = f"[{table}] {name}" if table else name
                raise SencaInputError(f"{source}: {where} = {value!r}; expected {expected}")
        last_seed = self.seed + 1000 * (self.clustering.restarts - 1)
        if last_seed >= 2**32:
            raise SencaInputError(f"{source}: seed = {self.seed} with {self.clustering.restarts} restarts uses seeds up to "
                                  f"{last_seed}; expected seeds below 2**32")
        check_device(self.device, source)
        return self


_RANGES: list[tuple[str | None, str, Any, str]] = [
    (None, "seed", lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    ("input", "format", lambda v: v in ("her2st", "visium", "h5ad"), "'her2st', 'visium' or 'h5ad'"),
    ("input", "image_scale", lambda v: 0 < v <= 100, "a positive number (image pixels per spot-coordinate pixel)"),
    ("preprocessing", "min_counts", lambda v: v >= 0, ">= 0"),
    ("preprocessing", "min_spots", lambda v: v >= 0, ">= 0"),
    ("preprocessing", "n_top_genes", lambda v: v >= 1, ">= 1"),
    ("preprocessing", "n_comps", lambda v: v >= 2, ">= 2"),
    ("graph", "method", lambda v: v in ("radius", "knn"), "'radius' or 'knn'"),
    ("graph", "radius", lambda v: v > 0, "a positive number of spot spacings"),
    ("graph", "n_neighbors", lambda v: v >= 1, ">= 1"),
    ("image", "patch_px", lambda v: 4 <= v <= 1024, "4 to 1024 pixels"),
    ("image", "patch_spots", lambda v: 0 < v <= 100, "a positive number of spot diameters, at most 100"),
    ("clustering", "method", lambda v: v in ("gmm", "kmeans", "leiden"), "'gmm', 'kmeans' or 'leiden'"),
    ("clustering", "k", lambda v: v >= 2, "at least 2 regions"),
    ("clustering", "scale", lambda v: v in ("none", "standardize", "whiten"), "'none', 'standardize' or 'whiten'"),
    ("clustering", "restarts", lambda v: v >= 1, "an integer >= 1"),
    ("clustering", "restart_jobs", lambda v: v == "auto" or (not isinstance(v, str) and v >= 1), "'auto' or an integer >= 1"),
    ("model", "lr", lambda v: 0 < v <= 1, "a positive learning rate up to 1"),
    ("model", "weight_decay", lambda v: v >= 0, ">= 0"),
    ("model", "dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "temperature", lambda v: v > 0, "> 0"),
    ("model", "dec_alpha", lambda v: v > 0, "> 0"),
    ("model", "dec_balance", lambda v: v >= 0, ">= 0"),
    ("model", "aug_jitter", lambda v: v >= 0, ">= 0"),
    ("model", "full_batch_max_spots", lambda v: v >= 1, ">= 1"),
    ("model", "n_clusters_range", lambda v: 2 <= v[0] <= v[1], "[low, high] with 2 <= low <= high"),
    *[("model", name, lambda v: v >= 0, ">= 0 (a loss weight)")
      for name in ("w_recon", "w_recon_fused", "w_recon_image", "w_recon_image_features", "w_image_view", "w_contrast",
                   "w_dec", "neighbour_positive_weight")],
]


def check_device(device: str, source: str = "settings") -> None:
    """Raise unless ``device`` is ``auto``, ``cpu`` or a CUDA device that this machine has."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SencaInputError(f"{source}: device = {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SencaInputError(f"{source}: device = {device!r}, but CUDA is not available on this machine; use 'cpu' or 'auto'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise SencaInputError(f"{source}: device = {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise SencaInputError(f"{source}: device = {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _accepts(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_accepts(v, a) for v, a in zip(value, args)))
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(typing.get_args(hint))} values ({', '.join(map(_describe, typing.get_args(hint)))})"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", type(None): "unset"}
    return names.get(hint, str(hint))


def _check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Raise when a value does not have the type its field of ``cls`` declares (TOML gives any type)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _accepts(value, hints[name]):
            raise SencaInputError(f"{where} {name} = {value!r}; expected {_describe(hints[name])}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SencaInputError(f"{path}: not valid TOML ({err})") from err


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(values: dict[str, Any]) -> str:
    """Write a dict of scalars and one level of tables as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for name, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
