"""The cohort manifest: one row per section (TOML ``[[section]]`` tables or a CSV table)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from senca.errors import SencaInputError
from senca.io import FORMATS
from senca.settings import InputSettings, read_toml

FIELDS = ("path", "name", "sample", "format", "image", "image_scale", "labels", "group", "patient")
# A section's name becomes its output folder: keep it a plain file name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Section:
    """One section of a cohort: where to read it (as ``senca run`` takes it) and how it is grouped.

    ``name`` (default: ``sample``, else the input's file name without suffix) names its output
    folder and its panel in the cohort report; ``group`` and ``patient`` are carried into the
    cohort tables.
    """

    name: str
    input: InputSettings
    group: str | None = None
    patient: str | None = None


def read_manifest(path: str | Path) -> list[Section]:
    """Read and check a cohort manifest.

    TOML: one ``[[section]]`` table per section. CSV: a header naming the fields, one row per
    section, empty cells for missing values. Fields: ``path`` (required; relative paths are
    taken from the manifest's folder), ``name``, ``sample``, ``format``, ``image``,
    ``image_scale``, ``labels``, ``group``, ``patient``.

    Raises
    ------
    SencaInputError
        Naming the file, the row (CSV line or TOML section number) and the field: an unknown
        field, a missing path, a file that does not exist, a bad number or format, a name that
        is not a plain folder name, two sections with one name.
    """
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"{path}: manifest not found")
    if path.suffix.lower() == ".toml":
        document = read_toml(path)
        unknown = sorted(set(document) - {"section"})
        if unknown or not isinstance(document.get("section"), list):
            raise SencaInputError(f"{path}: expected [[section]] tables only (one per section); found {unknown or 'no [[section]]'}")
        rows = [(f"[[section]] {i}", row) for i, row in enumerate(document["section"], start=1)]
    elif path.suffix.lower() in (".csv", ".tsv"):
        rows = _csv_rows(path)
    else:
        raise SencaInputError(f"{path}: manifest must be a .toml or .csv file")
    if not rows:
        raise SencaInputError(f"{path}: the manifest lists no section")
    sections = [_section(path, where, row) for where, row in rows]
    seen: dict[str, str] = {}
    for (where, _), section in zip(rows, sections):
        if section.name in seen:
            raise SencaInputError(f"{path}: {where}, field 'name': {section.name!r} is used by {seen[section.name]} too; "
                                  "expected one name per section (set 'name' to tell them apart)")
        seen[section.name] = where
    return sections


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SencaInputError(f"{path}: not a UTF-8 text file ({err})") from err
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise SencaInputError(f"{path}: line {line} has more cells than the header")
        rows.append((f"line {line}", {k.strip(): (v.strip() if v is not None else "") for k, v in row.items()
                                      if v is not None and v.strip() != ""}))
    return rows


def _section(manifest: Path, where: str, row: dict) -> Section:
    def fail(field: str, problem: str) -> SencaInputError:
        return SencaInputError(f"{manifest}: {where}, field {field!r}: {problem}")

    if not isinstance(row, dict):
        raise SencaInputError(f"{manifest}: {where}: expected a table of fields")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {', '.join(FIELDS)}")
    values = {}
    for field, value in row.items():
        if field != "image_scale" and not isinstance(value, str):
            raise fail(field, f"got {value!r}; expected text")
        values[field] = value
    if "path" not in values:
        raise fail("path", "missing; expected the section's input (HER2ST-layout folder, Space Ranger folder or .h5ad file)")
    for field in ("path", "image", "labels"):
        if field in values:
            file = Path(values[field])
            file = file if file.is_absolute() else manifest.parent / file
            if not file.exists():
                raise fail(field, f"{file} does not exist")
            values[field] = str(file.resolve())
    if "format" in values and values["format"] not in FORMATS:
        raise fail("format", f"got {values['format']!r}; expected one of {', '.join(FORMATS)}")
    if "image_scale" in values:
        try:
            scale = float(values["image_scale"])
        except (TypeError, ValueError):
            scale = float("nan")
        if not scale > 0 or scale == float("inf"):
            raise fail("image_scale", f"got {values['image_scale']!r}; expected a positive number (image pixels per coordinate pixel)")
        values["image_scale"] = scale
    if "image" in values and "image_scale" not in values:
        raise fail("image_scale", "missing; expected it with 'image' (image pixels per coordinate pixel)")
    name = values.pop("name", None) or values.get("sample") or Path(values["path"]).name.removesuffix(".h5ad")
    if not _NAME.match(name):
        raise fail("name", f"{name!r} cannot name an output folder; expected letters, digits, '.', '_' or '-'")
    grouping = {key: values.pop(key) for key in ("group", "patient") if key in values}
    return Section(name=name, input=InputSettings(**values), **grouping)
