"""Every setting of a senca run, grouped as in ``config.toml``, with TOML reading and writing."""

from __future__ import annotations

import dataclasses
import math
import sys
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
    display image 29. 0 uses any image.
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
    (:func:`senca.clustering.consensus_labels`). One run's regions depend on its random start
    (single runs of a HER2ST section moved by up to 0.5 ARI between seeds); the consensus of
    three is steadier and better on average: mean ARI of the 8 HER2ST sections over seeds 0-4,
    0.275 with one run, 0.296 with three (seeds 0-2: 0.285 / 0.292, seeds 3-4: 0.259 / 0.303);
    DLPFC 151510, seeds 0-2: 0.521 with one run, 0.520 with three (both measured before the
    image target was left unaveraged, which raised A1). It costs three times the training
    time; 1 for a quick look.

    ``scale``: how the embedding is rescaled before the GMM (see
    :func:`senca.clustering.scale_features`). ``"none"`` by default: the embedding's variance
    spectrum is part of what it learned, and standardising each dimension gives its
    low-variance, uninformative directions the weight of the informative ones in the k-means
    start of EM (measurements in ``benchmarks/README.md``).

    ``restart_jobs``: how many restarts train at once, each in its own process (CPU only; on a
    GPU they run one after another). The regions are the same as with 1; the wall time falls
    towards that of one restart when there are as many free cores, and the memory grows with
    every process (each holds its own copy of the section): DLPFC 151510 on 2 cores, 218 s with
    1, 144 s with 2, 126 s with 3 (``benchmarks/restart_jobs.md``). The processes are spawned,
    so a script that sets it needs the ``if __name__ == "__main__":`` guard.
    """

    method: str = "gmm"
    k: int | None = None
    scale: str = "none"
    refine: bool = True
    restarts: int = 3
    restart_jobs: int = 1


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
            if key == "model":
                if not isinstance(value, dict):
                    raise SencaInputError(f"{source}: [model] must be a table")
                setattr(settings, key, SencaConfig.from_dict({**current.to_dict(), **value}))
            elif dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise SencaInputError(f"{source}: [{key}] must be a table")
                known = {f.name for f in fields(current)}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise SencaInputError(f"{source}: unknown setting(s) {unknown} in [{key}]; known: {sorted(known)}")
                setattr(settings, key, dataclasses.replace(current, **value))
            else:
                setattr(settings, key, value)
        return settings


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
