"""SpatialData stores (``.zarr``, as ``spatialdata-io`` writes for Visium and others), in and out.

Needs the optional ``spatialdata`` package (``pip install "senca[spatialdata]"``). What is read:
the store's table (counts in ``X``), the spots it annotates (a shapes element of circles, whose
``radius`` gives the spot diameter) in the ``global`` coordinate system, and one H&E image
(``*hires*`` by name, else ``*lowres*``, else the only image) whose transformation to ``global``
is a scale. Points, labels (segmentation masks) and other tables are left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from senca.errors import SencaInputError
from senca.io._tables import validate_counts
from senca.io.image import attach_image

logger = logging.getLogger(__name__)

COORDINATE_SYSTEM = "global"
REGIONS_TABLE = "senca_regions"


def _spatialdata():
    try:
        import spatialdata
    except ImportError as err:
        raise SencaInputError("reading or writing SpatialData (.zarr) needs the spatialdata package: "
                              "pip install \"senca[spatialdata]\"") from err
    return spatialdata


def is_spatialdata(path: Path) -> bool:
    """Whether ``path`` is a SpatialData zarr store (a folder with ``zarr.json`` or ``.zgroup``
    and one of the element groups)."""
    if not path.is_dir() or not ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return False
    return any((path / group).is_dir() for group in ("tables", "shapes", "images"))


def _affine(element, name: str, path: Path) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transformations = get_transformation(element, get_all=True)
    if COORDINATE_SYSTEM not in transformations:
        raise SencaInputError(f"{path}: element {name!r} has no transformation to the {COORDINATE_SYSTEM!r} "
                              f"coordinate system (it has {sorted(transformations)})")
    return np.asarray(transformations[COORDINATE_SYSTEM].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))


def _pick_table(sdata, path: Path, table: str | None):
    tables = list(sdata.tables)
    if table is not None:
        if table not in sdata.tables:
            raise SencaInputError(f"{path}: no table {table!r}; tables: {', '.join(tables) or 'none'}")
        return table
    candidates = [t for t in tables if t != REGIONS_TABLE]
    if len(candidates) != 1:
        raise SencaInputError(f"{path}: expected one table of counts, found {len(candidates)} ({', '.join(candidates) or 'none'})")
    return candidates[0]


def _pick_image(sdata) -> str | None:
    names = list(sdata.images)
    for word in ("hires", "lowres"):
        matching = [n for n in names if word in n]
        if matching:
            return matching[0]
    return names[0] if len(names) == 1 else None


def read_spatialdata(path: str | Path, table: str | None = None, load_image: bool = True) -> ad.AnnData:
    """Read a SpatialData store into senca's AnnData layout (as :func:`read_visium` gives).

    Parameters
    ----------
    path
        The ``.zarr`` store.
    table
        Name of the table of counts; by default the only table (other than senca's own).
    load_image
        Attach the H&E image (see the module docstring for which one).

    Returns
    -------
    AnnData with raw counts in ``X``, ``obsm["spatial"]`` (``global`` coordinates of the spot
    centres), ``uns["spatial"][<shapes element>]`` with ``spot_diameter_fullres`` and the image
    with its ``tissue_hires_scalef``; the table's instance ids stay in their ``obs`` column and
    ``uns["spatialdata"]`` records the store, table, shapes element and that column, so that
    :func:`write_regions` annotates the same spots.
    """
    path = Path(path)
    sd = _spatialdata()
    try:
        sdata = sd.read_zarr(path)
    except Exception as err:  # noqa: BLE001 - zarr/ome-zarr raise many types for a bad store
        raise SencaInputError(f"{path}: cannot read as a SpatialData store ({type(err).__name__}: {err})") from err
    name = _pick_table(sdata, path, table)
    adata = sdata.tables[name]
    attrs = adata.uns.get("spatialdata_attrs", {})
    region, region_key, instance_key = attrs.get("region"), attrs.get("region_key"), attrs.get("instance_key")
    if isinstance(region, (list, tuple, np.ndarray)):
        if len(region) != 1:
            raise SencaInputError(f"{path}: table {name!r} annotates {len(region)} elements ({list(region)}); expected one section")
        region = region[0]
    if region not in sdata.shapes:
        raise SencaInputError(f"{path}: table {name!r} annotates {region!r}, which is not a shapes element "
                              f"(shapes: {', '.join(sdata.shapes) or 'none'}); expected the spots as circles")
    shapes = sdata.shapes[region]
    if "radius" not in shapes.columns:
        raise SencaInputError(f"{path}: shapes {region!r} have no 'radius' column; expected circles (spots)")
    ids = adata.obs[instance_key].to_numpy()
    missing = pd.Index(ids).difference(shapes.index)
    if len(missing):
        raise SencaInputError(f"{path}: {len(missing)} spot(s) of table {name!r} are not in shapes {region!r} (e.g. {missing[0]!r})")
    spots = shapes.loc[ids]
    to_global = _affine(shapes, region, path)
    xy = np.c_[spots.geometry.x.to_numpy(), spots.geometry.y.to_numpy(), np.ones(len(spots))] @ to_global.T
    units_per_shape_unit = float(np.sqrt(abs(np.linalg.det(to_global[:2, :2]))))

    out = ad.AnnData(X=validate_counts(adata.X, path, f"counts of table {name!r}"),
                     obs=adata.obs.drop(columns=[c for c in (region_key,) if c in adata.obs]).copy(),
                     var=adata.var.copy())
    out.obs_names = [str(i) for i in adata.obs_names]
    out.obsm["spatial"] = xy[:, :2]
    diameter = 2.0 * float(np.median(spots["radius"].to_numpy())) * units_per_shape_unit
    out.uns["spatial"] = {str(region): {"images": {}, "scalefactors": {"spot_diameter_fullres": diameter},
                                        "metadata": {"source": str(path)}}}
    out.uns["spatialdata"] = {"store": str(path), "table": name, "shapes": str(region), "instance_key": str(instance_key)}
    image_name = _pick_image(sdata) if load_image else None
    if image_name is not None:
        _attach(out, sdata, image_name, str(region), path)
    elif load_image:
        logger.warning("%s: no image named *hires* or *lowres* and not exactly one image (%s); continuing without one",
                       path, ", ".join(sdata.images) or "none")
    logger.info("read %s (table %r, spots %r): %d spots x %d genes", path, name, region, out.n_obs, out.n_vars)
    return out


def _full_resolution(image):
    """The full-resolution level of a SpatialData image (a DataArray, or a multiscale DataTree)."""
    import xarray

    if isinstance(image, xarray.DataArray):
        return image
    from spatialdata import get_pyramid_levels

    return get_pyramid_levels(image, n=0)


def _attach(adata: ad.AnnData, sdata, name: str, library: str, path: Path) -> None:
    element = _full_resolution(sdata.images[name])
    affine = _affine(sdata.images[name], name, path)
    linear = affine[:2, :2]
    if not np.allclose(linear, np.diag(np.diag(linear))) or not np.isclose(linear[0, 0], linear[1, 1]) or not np.allclose(affine[:2, 2], 0):
        raise SencaInputError(f"{path}: image {name!r} maps to {COORDINATE_SYSTEM!r} by {affine[:2].tolist()}; "
                              "expected an equal scale in x and y without rotation or translation")
    image = np.asarray(element.transpose("y", "x", "c").values)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8) if image.max() > 1.0 else (image * 255).round().astype(np.uint8)
    attach_image(adata, image[..., :3], 1.0 / float(linear[0, 0]), library, "hires", source=f"{path}:{name}")
    logger.info("%s: using image %r", path, name)


def write_regions(adata: ad.AnnData, store: str | Path, region_key: str = "senca_region") -> Path:
    """Write the regions as a SpatialData table ``senca_regions`` in a new store ``store``.

    The store holds the spots (circles, in the ``global`` coordinate system of ``obsm["spatial"]``)
    and the table annotating them: ``obs`` with the regions, their names and confidence,
    ``obsm["X_senca"]`` and the colours in ``uns``. It can be added to the input store with
    ``sdata.tables["senca_regions"] = sd.read_zarr(store).tables["senca_regions"]`` when the
    spots there have the same name and ids (``uns["spatialdata"]`` of a section read with
    :func:`read_spatialdata`).
    """
    sd = _spatialdata()
    from geopandas import GeoDataFrame
    from shapely import points
    from spatialdata.models import ShapesModel, TableModel

    store = Path(store)
    source = adata.uns.get("spatialdata", {})
    shapes_name = str(source.get("shapes", "spots"))
    scalefactors = next(iter(adata.uns.get("spatial", {}).values()), {}).get("scalefactors", {})
    radius = float(scalefactors.get("spot_diameter_fullres", 1.0)) / 2.0
    instance_key = source.get("instance_key")
    ids = pd.Index(adata.obs[instance_key] if instance_key in adata.obs else adata.obs_names.astype(str), name="instance_id")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    shapes = ShapesModel.parse(GeoDataFrame({"radius": np.full(len(ids), radius)}, geometry=points(xy), index=ids))
    columns = [c for c in adata.obs.columns if c.startswith(region_key) or c == "label"]
    table = ad.AnnData(obs=adata.obs[columns].copy(), obsm={"X_senca": np.asarray(adata.obsm["X_senca"])})
    table.obs["region"] = pd.Categorical([shapes_name] * len(ids))
    table.obs["instance_id"] = ids.to_numpy()
    table.obs_names = adata.obs_names
    table.uns = {k: list(v) for k, v in adata.uns.items() if k.endswith("_colors")}
    table = TableModel.parse(table, region=shapes_name, region_key="region", instance_key="instance_id")
    sd.SpatialData(shapes={shapes_name: shapes}, tables={REGIONS_TABLE: table}).write(store)
    return store
