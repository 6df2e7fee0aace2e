"""The cohort report: region maps in one grid, composition, markers and scores across sections."""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from senca import plotting
from senca.cohort.manifest import Section
from senca.cohort.match import match_sections
from senca.evaluation import ari_nmi
from senca.plotting.report import _STYLE, _img

logger = logging.getLogger(__name__)

COHORT_KEY = "cohort_region"
REPORT_FILES = ("regions.csv", "matching.csv", "composition.csv", "composition.png", "regions.png", "markers.csv",
                "scores.csv", "scores.json", "status.csv", "report.html")
_N_MARKERS = 10


def cohort_ids(summaries: list[dict], mode: str) -> pd.DataFrame:
    """Cohort region of every section's region: the region itself in joint mode, else matched
    by expression profile (:func:`senca.cohort.match.match_sections`); ids numbered by their
    spots over the cohort, ``"0"`` the largest."""
    if mode == "joint" or len(summaries) == 1:
        table = pd.DataFrame([{"section": s["name"], "region": r, COHORT_KEY: r, "correlation": np.nan}
                              for s in summaries for r in s["profiles"].index])
    else:
        table = match_sections({s["name"]: s["profiles"] for s in summaries})
    spots = pd.concat([s["spots"][["section", "region"]] for s in summaries])
    sizes = spots.merge(table, on=["section", "region"]).groupby(COHORT_KEY).size()
    order = sorted(sizes.index, key=lambda c: (-sizes[c], int(c) if str(c).isdigit() else c))
    table[COHORT_KEY] = table[COHORT_KEY].map({old: str(new) for new, old in enumerate(order)})
    return table


def cohort_markers(summaries: list[dict], matching: pd.DataFrame, n_genes: int = _N_MARKERS) -> pd.DataFrame:
    """Genes up in each cohort region across the sections.

    A region's profile in a section is its mean log expression minus the section's mean
    (:func:`senca.cohort.match.region_profiles`); a gene's score is that difference averaged
    over the sections that have the region, so a marker must hold across the cohort, not in
    one section. ``n_sections_up`` counts the sections where it is positive.
    """
    genes = None
    for s in summaries:
        genes = s["profiles"].columns if genes is None else genes.intersection(s["profiles"].columns, sort=False)
    rows = []
    lookup = {(r.section, r.region): r.cohort_region for r in matching.itertuples()}
    per_region: dict[str, list[np.ndarray]] = {}
    for s in summaries:
        profiles = s["profiles"][genes]
        for region, values in profiles.iterrows():
            per_region.setdefault(lookup[(s["name"], str(region))], []).append(values.to_numpy(dtype=float))
    for region in sorted(per_region, key=lambda c: int(c) if c.isdigit() else c):
        stacked = np.vstack(per_region[region])
        score = stacked.mean(axis=0)
        for rank, i in enumerate(np.argsort(-score)[:n_genes], start=1):
            rows.append({"region": region, "rank": rank, "gene": genes[i], "mean_log_fold_vs_section": round(float(score[i]), 4),
                         "n_sections_up": int((stacked[:, i] > 0).sum()), "n_sections": stacked.shape[0]})
    return pd.DataFrame(rows)


def cohort_scores(spots: pd.DataFrame, summaries: list[dict]) -> tuple[pd.DataFrame, dict]:
    """ARI/NMI of every labelled section, the pooled ARI/NMI, and a paired Wilcoxon test.

    The pooled scores compare the cohort ids of all spots of all sections with their labels at
    once: high only when the same id means the same label in every section. The paired test
    compares the sections' ARI with that of an expression-only baseline (spatially smoothed
    PCA + GMM, the same number of regions) on the same sections.
    """
    if "label" not in spots or spots["label"].isna().all():
        return pd.DataFrame(), {}
    rows = []
    for s in summaries:
        part = spots[spots["section"] == s["name"]]
        if s["baseline"] is None or part["label"].isna().all():
            continue
        senca = ari_nmi(part["label"], part[COHORT_KEY])
        rows.append({"section": s["name"], "ari": senca["ari"], "nmi": senca["nmi"],
                     "baseline_ari": s["baseline"]["ari"], "baseline_nmi": s["baseline"]["nmi"]})
    table = pd.DataFrame(rows)
    labelled = spots[spots["label"].notna()]
    summary = {"pooled": ari_nmi(labelled["label"], labelled[COHORT_KEY]), "n_sections": len(table),
               "mean_ari": float(table["ari"].mean()), "mean_baseline_ari": float(table["baseline_ari"].mean())}
    differences = table["ari"] - table["baseline_ari"]
    if len(table) >= 2 and (differences != 0).any():
        test = wilcoxon(table["ari"], table["baseline_ari"])
        summary["wilcoxon_vs_baseline"] = {"statistic": float(test.statistic), "p_value": float(test.pvalue),
                                           "n_sections": len(table), "senca_better": int((differences > 0).sum())}
    return table, summary


def _grid(spots: pd.DataFrame, summaries: list[dict]) -> ad.AnnData:
    obs = spots[["section", COHORT_KEY]].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    obs["section"] = pd.Categorical(obs["section"], categories=[s["name"] for s in summaries])
    order = sorted(obs[COHORT_KEY].unique(), key=lambda c: int(c) if c.isdigit() else c)
    obs[COHORT_KEY] = pd.Categorical(obs[COHORT_KEY], categories=order)
    grid = ad.AnnData(obs=obs, obsm={"spatial": spots[["x", "y"]].to_numpy(dtype=float)})
    grid.uns["spatial"] = {s["name"]: s["library"] for s in summaries if s["library"]}
    return grid


def write_cohort_report(out: Path, sections: list[Section], summaries: list[dict], status: pd.DataFrame, mode: str,
                        config_text: str, wall_seconds: float) -> pd.DataFrame | None:
    """Write the cohort files into ``out`` (each replaced whole) and return the scores table.

    Files: ``regions.csv`` (every spot: section, region of its section, cohort region, label),
    ``matching.csv``, ``composition.csv``/``.png``, ``regions.png`` (one map per section),
    ``markers.csv``, ``scores.csv``/``scores.json``, ``status.csv`` and ``report.html``.
    """
    staging = Path(tempfile.mkdtemp(prefix=".report.", suffix=".partial", dir=out))
    try:
        scores = _write(staging, sections, summaries, status, mode, config_text, wall_seconds)
        for name in REPORT_FILES:
            if (staging / name).is_file():
                os.replace(staging / name, out / name)
            elif (out / name).exists():
                (out / name).unlink()  # a table the current sections do not have (e.g. no labels now)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return scores


def _write(folder: Path, sections, summaries, status, mode, config_text, wall_seconds) -> pd.DataFrame | None:
    status.to_csv(folder / "status.csv", index=False)
    if not summaries:
        _html(folder, mode, status, None, {}, None, None, config_text, wall_seconds)
        return None
    matching = cohort_ids(summaries, mode)
    matching.to_csv(folder / "matching.csv", index=False)
    spots = pd.concat([s["spots"] for s in summaries], ignore_index=True).merge(matching[["section", "region", COHORT_KEY]],
                                                                               on=["section", "region"], how="left")
    spots.to_csv(folder / "regions.csv", index=False)
    groups = {s.name: (s.group or "", s.patient or "") for s in sections}
    composition = pd.crosstab(spots["section"], spots[COHORT_KEY], normalize="index")
    composition = composition.reindex([s["name"] for s in summaries])
    composition = composition[sorted(composition.columns, key=lambda c: int(c) if c.isdigit() else c)]
    table = composition.round(4)
    table.insert(0, "patient", [groups[n][1] for n in table.index])
    table.insert(0, "group", [groups[n][0] for n in table.index])
    table.insert(0, "spots", spots.groupby("section").size().reindex(table.index).to_numpy())
    table.to_csv(folder / "composition.csv")
    _save(plotting.composition(composition, title="cohort region composition per section"), folder / "composition.png")
    _save(plotting.regions_by_section(_grid(spots, summaries), "section", COHORT_KEY, title="cohort regions"), folder / "regions.png")
    markers = cohort_markers(summaries, matching)
    markers.to_csv(folder / "markers.csv", index=False)
    scores, summary = cohort_scores(spots, summaries)
    if not scores.empty:
        scores.to_csv(folder / "scores.csv", index=False)
        (folder / "scores.json").write_text(json.dumps(summary, indent=1) + "\n")
    _html(folder, mode, status, table, summary, scores, markers, config_text, wall_seconds)
    return scores


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def _html(folder, mode, status, composition, summary, scores, markers, config_text, wall_seconds) -> None:
    failed = status[status["status"] == "failed"]
    cards = [("sections", len(status)), ("finished", int((status["status"] != "failed").sum())), ("failed", len(failed)),
             ("mode", mode), ("wall time", f"{wall_seconds:.0f} s")]
    if summary:
        cards += [("pooled ARI", f"{summary['pooled']['ari']:.3f}"), ("mean ARI", f"{summary['mean_ari']:.3f}")]
    parts = ['<section><h2>Summary</h2><div class="cards">' + "".join(
        f"<div class='card'><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>" for k, v in cards) + "</div></section>"]
    if len(failed):
        parts.append("<section><h2>Failed sections</h2><p>Rerun the same command to retry them; finished sections are kept.</p>"
                     + failed[["section", "error"]].to_html(index=False, border=0) + "</section>")
    if composition is not None:
        parts.append(f"<section><h2>Cohort regions per section</h2>{_img(folder / 'regions.png', 'cohort regions per section')}</section>")
        parts.append(f"<section><h2>Region composition</h2>{_img(folder / 'composition.png', 'region composition', narrow=True)}"
                     + composition.to_html(border=0, float_format=lambda v: f"{v:.2f}") + "</section>")
    if scores is not None and not scores.empty:
        test = summary.get("wilcoxon_vs_baseline")
        line = (f"Paired Wilcoxon test of senca against smoothed PCA + GMM over {test['n_sections']} sections: "
                f"p = {test['p_value']:.3g} (senca higher in {test['senca_better']})" if test else
                "Too few labelled sections (or no difference) for a paired test.")
        pooled = summary["pooled"]
        parts.append(f"<section><h2>Agreement with the reference labels</h2><p>Pooled over all sections (one id must mean "
                     f"one label everywhere): ARI {pooled['ari']:.3f}, NMI {pooled['nmi']:.3f}. {html.escape(line)}</p>"
                     + scores.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}") + "</section>")
    if markers is not None and not markers.empty:
        top = markers[markers["rank"] <= 5].groupby("region", sort=False)["gene"].apply(", ".join).reset_index()
        parts.append("<section><h2>Markers per cohort region (mean over sections)</h2>"
                     + top.to_html(index=False, border=0) + "<p style='font-size:12px;color:#666'>Full table: markers.csv; "
                     "per-spot cohort regions: regions.csv; each section's own report: sections/NAME/report.html.</p></section>")
    parts.append(f"<section><h2>Status</h2>{status.to_html(index=False, border=0, na_rep='')}</section>")
    parts.append(f"<section><h2>Settings</h2><pre>{html.escape(config_text)}</pre></section>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>senca cohort report</title>'
            f"<style>{_STYLE}</style></head><body><header><h1>senca: cohort of {len(status)} sections</h1>"
            f"<p>Region ids agree across sections ({html.escape(mode)} mode)</p></header><main>{''.join(parts)}</main></body></html>\n")
    (folder / "report.html").write_text(page, encoding="utf-8")
