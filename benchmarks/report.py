"""From run records to ``results.json`` and ``RESULTS.md``.

A run record is the dict a child process writes for one (method, section, seed): ``method``,
``dataset``, ``section``, ``seed``, ``status`` (``"ok"`` or ``"failed"``), and for a finished
run ``ari``, ``nmi``, ``seconds``, ``peak_mb`` (plus the regions per spot, for the figures).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from benchmarks.protocol import DATASETS, SECTIONS

logger = logging.getLogger(__name__)

VERSIONED = ("senca", "torch", "numpy", "scipy", "pandas", "scanpy", "anndata", "scikit-learn", "torch-geometric",
             "igraph", "leidenalg", "matplotlib", "spagcn-modern", "stagate-modern", "graphst-modern", "POT",
             "scikit-misc")


def protocol_order(sections: Iterable[str]) -> list[str]:
    """Section names sorted as in the protocol (names it does not know last, in their order)."""
    order = [s.name for s in SECTIONS]
    return sorted(sections, key=lambda name: order.index(name) if name in order else len(order))


def aggregate(records: Iterable[dict]) -> dict:
    """Summarise finished runs over seeds into the ``results.json`` schema.

    Returns
    -------
    ``{dataset: {method: {section: {"ari": mean, "ari_std": s, "nmi": mean, "seconds": median,
    "peak_mb": max}}}}`` over the runs with status ``"ok"``; ``ari_std`` is the sample
    standard deviation over seeds (0 for a single seed). Datasets, methods and sections keep
    the order in which they first appear.
    """
    runs: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for record in records:
        if record["status"] == "ok":
            runs[record["dataset"], record["method"], record["section"]].append(record)
    results: dict = {}
    for (dataset, method, section), group in runs.items():
        ari = np.array([r["ari"] for r in group], dtype=float)
        results.setdefault(dataset, {}).setdefault(method, {})[section] = {
            "ari": round(float(ari.mean()), 4),
            "ari_std": round(float(ari.std(ddof=1)) if len(ari) > 1 else 0.0, 4),
            "nmi": round(float(np.mean([r["nmi"] for r in group])), 4),
            "seconds": round(float(np.median([r["seconds"] for r in group])), 2),
            "peak_mb": round(float(max(r["peak_mb"] for r in group)), 1),
        }
    return results


def per_section(results: dict, method: str, metric: str = "ari") -> dict[str, float]:
    """``{section: value}`` of one method over every dataset."""
    return {section: values[metric] for dataset in results.values()
            for section, values in dataset.get(method, {}).items()}


@dataclass
class PairedTest:
    """Paired Wilcoxon signed-rank test of the reference against one method over sections."""

    method: str
    sections: list[str] = field(default_factory=list)
    mean_difference: float = math.nan
    wins: int = 0
    losses: int = 0
    p_value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    note: str = ""


BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_SEED = 0


def bootstrap_interval(differences: np.ndarray, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences, resampling the sections.

    The p-value says whether the lead is there; this says how large it may be. With few
    sections the percentile interval is somewhat too narrow, so it is no substitute for the test.
    """
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), size=(draws, len(differences)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_tests(results: dict, reference: str, methods: Sequence[str]) -> list[PairedTest]:
    """Two-sided Wilcoxon signed-rank test of ``reference`` vs each method on per-section mean ARI.

    Pairs are the sections (of every dataset) where both have results. Zero differences are
    dropped (``zero_method="wilcox"``); with no non-zero difference the test is not defined
    and ``p_value`` stays NaN with a note. Each test also carries the 95% bootstrap interval of
    the mean difference (:func:`bootstrap_interval`).
    """
    ref = per_section(results, reference)
    tests = []
    for method in methods:
        if method == reference:
            continue
        other = per_section(results, method)
        # Protocol order, so the bootstrap draws (by position) do not depend on the order runs finished in.
        sections = protocol_order(s for s in ref if s in other)
        test = PairedTest(method, sections)
        if not sections:
            test.note = "no section in common"
            tests.append(test)
            continue
        a = np.array([ref[s] for s in sections])
        b = np.array([other[s] for s in sections])
        diff = a - b
        test.mean_difference = float(diff.mean())
        test.wins, test.losses = int((diff > 0).sum()), int((diff < 0).sum())
        test.ci_low, test.ci_high = bootstrap_interval(diff)
        if not np.any(diff != 0):
            test.note = "all differences are zero"
        else:
            test.p_value = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
            if len(sections) < 6:
                test.note = f"only {len(sections)} section(s): p cannot fall below 0.05"
        tests.append(test)
    return tests


def versions() -> dict[str, str]:
    """Python, the machine and the installed versions of the packages that matter here."""
    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_results_json(results: dict, path: Path) -> None:
    """Write ``results.json`` (datasets in protocol order, sections in protocol order)."""
    ordered = {dataset: {method: {s: sections[s] for s in protocol_order(sections)}
                         for method, sections in results[dataset].items()}
               for dataset in DATASETS if dataset in results}
    path.write_text(json.dumps(ordered, indent=2) + "\n")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table: the first ``text_columns`` columns left-aligned, numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


DATASET_TITLES = {"her2st": "HER2ST", "dlpfc": "DLPFC"}


def dataset_mean(results: dict, method: str, metric: str = "ari", dataset: str | None = None) -> tuple[float, int]:
    """Mean over the sections of ``dataset`` (every dataset when ``None``) the method ran on, and their number."""
    datasets = [dataset] if dataset else list(results)
    values = [v[metric] for d in datasets for v in results.get(d, {}).get(method, {}).values()]
    return (float(np.mean(values)) if values else math.nan), len(values)


@dataclass
class ReportContext:
    """What RESULTS.md says besides the numbers."""

    command: str
    quick: bool
    seeds: list[int]
    methods: list[str]
    sections: list[str]
    reference: str
    params: dict[str, dict]
    not_run: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    reused: dict[str, list[str]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    section_info: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)


def _reported_methods(results: dict, ctx: ReportContext) -> list[str]:
    return [m for m in ctx.methods if any(m in by_method for by_method in results.values())]


def _section_rows(ctx: ReportContext, cell, mean_cell=None) -> list[list[str]]:
    """One row per section (protocol order); a mean row after each dataset's sections and one over all."""
    rows = []
    chosen = [s for s in SECTIONS if s.name in ctx.sections]
    for i, section in enumerate(chosen):
        rows.append([section.name] + cell(section))
        last_of_dataset = i + 1 == len(chosen) or chosen[i + 1].dataset != section.dataset
        if mean_cell is not None and last_of_dataset:
            n = sum(s.dataset == section.dataset for s in chosen)
            rows.append([f"**{DATASET_TITLES.get(section.dataset, section.dataset)} mean**"] + mean_cell(n, section.dataset))
    if mean_cell is not None and len({s.dataset for s in chosen}) > 1:
        rows.append([f"**mean, all {len(chosen)} sections**"] + mean_cell(len(chosen), None))
    return rows


def _cells(results: dict, ctx: ReportContext, methods: Sequence[str], section, fmt) -> list[str]:
    """One table row's cells: ``fmt(values)`` per method, "n/a" where it does not apply, "—" where missing."""
    out = []
    for method in methods:
        values = results.get(section.dataset, {}).get(method, {}).get(section.name)
        if values is None:
            out.append("n/a" if section.name in ctx.not_applicable.get(method, []) else "—")
        else:
            out.append(fmt(values))
    return out


def _metric_table(results: dict, ctx: ReportContext, metric: str, with_std: bool) -> list[str]:
    methods = _reported_methods(results, ctx)

    def fmt(values: dict) -> str:
        if with_std and len(ctx.seeds) > 1:
            return f"{values[metric]:.3f} ± {values[metric + '_std']:.3f}"
        return f"{values[metric]:.3f}"

    def cell(section) -> list[str]:
        return _cells(results, ctx, methods, section, fmt)

    def mean_cell(n_total: int, dataset: str | None) -> list[str]:
        out = []
        for method in methods:
            mean, n = dataset_mean(results, method, metric, dataset)
            out.append("—" if n == 0 else f"**{mean:.3f}**" + ("" if n == n_total else f" ({n}/{n_total})"))
        return out

    return _table(["section"] + methods, _section_rows(ctx, cell, mean_cell))


def _cost_table(results: dict, ctx: ReportContext) -> list[str]:
    methods = _reported_methods(results, ctx)

    def cell(section) -> list[str]:
        return _cells(results, ctx, methods, section, lambda v: f"{v['seconds']:.0f} s / {v['peak_mb']:.0f} MB")

    return _table(["section"] + methods, _section_rows(ctx, cell))


def _wilcoxon_lines(results: dict, ctx: ReportContext) -> list[str]:
    tests = wilcoxon_tests(results, ctx.reference, _reported_methods(results, ctx))
    rows = [[t.method, t.note, str(len(t.sections)), _fmt(t.mean_difference),
             f"{_fmt(t.ci_low)} to {_fmt(t.ci_high)}", f"{t.wins}/{t.losses}", _fmt(t.p_value, 4)] for t in tests]
    return _table([f"{ctx.reference} vs", "note", "sections", "mean ARI difference", "95% bootstrap interval",
                   "wins/losses", "p (two-sided)"], rows, text_columns=2)


def section_info(records: Iterable[dict]) -> dict[str, dict]:
    """``{section: {"k", "n_scored"}}`` from finished runs (the same for every method that keeps all spots)."""
    info: dict[str, dict] = {}
    for record in records:
        if record["status"] == "ok" and "k" in record:
            entry = info.setdefault(record["section"], {"k": record["k"], "n_scored": record["n_scored"]})
            entry["n_scored"] = max(entry["n_scored"], record["n_scored"])
    return info


def _sections_table(ctx: ReportContext) -> list[str]:
    rows = []
    for section in SECTIONS:
        if section.name in ctx.sections and section.name in ctx.section_info:
            info = ctx.section_info[section.name]
            rows.append([section.name, section.dataset, section.platform, "yes" if section.image else "no",
                         str(info["k"]), str(info["n_scored"])])
    return _table(["section", "dataset", "platform", "H&E", "k", "scored spots"], rows, text_columns=4)


def render_markdown(results: dict, ctx: ReportContext) -> str:
    """The text of RESULTS.md."""
    ref = ctx.reference
    seeds = ", ".join(map(str, ctx.seeds))
    lines = [
        "# senca benchmark results",
        "",
        "Regenerated, with `results.json` and the figures beside it, by:",
        "",
        "```",
        ctx.command,
        "```",
        "",
    ]
    if ctx.quick:
        lines += ["**Quick check** (`--quick`): one seed and a tenth of every method's training epochs. "
                  "These numbers are not the benchmark.", ""]
    lines += [
        "## Protocol",
        "",
        "- Sections: the 8 labelled HER2ST sections (legacy ST) and DLPFC 151510 (10x Visium, 500 genes), "
        "151673 and 151674 (10x Visium, 5,000 genes, read from Space Ranger MTX folders). "
        "Only A1 has an H&E image (the 2000 px display image, scale 0.28761); DLPFC is run without its "
        "600 px low-resolution image (spots about 4 px across).",
        "- k = the number of reference labels other than \"undetermined\"; ARI and NMI on the spots "
        "whose label is present and not \"undetermined\".",
        f"- Seeds {seeds}; cells give the mean (± sample standard deviation) over seeds.",
        "- Each (method, section, seed) runs in its own child process: seconds = wall time of the method "
        "on the section as read (preprocessing, training, clustering; reading the files excluded), median "
        "over seeds; peak memory = the child's maximum resident set size (`ru_maxrss`, imports included), "
        "maximum over seeds.",
        "- One set of hyper-parameters for every section (listed below); nothing is tuned per section.",
        "- Ablations of senca switch the image, the fusion or the losses, so they run where the section has "
        "an image (A1); `n/a` elsewhere.",
        "",
        *_sections_table(ctx),
        "",
        "## ARI per section",
        "",
        *_metric_table(results, ctx, "ari", with_std=True),
        "",
        "## NMI per section",
        "",
        *_metric_table(results, ctx, "nmi", with_std=False),
        "",
        f"## Paired Wilcoxon signed-rank test: {ref} vs each method",
        "",
        f"Over the sections (HER2ST and DLPFC) where both ran, on the per-section mean ARI; "
        f"difference = {ref} − method; two-sided, exact for small samples, zero differences dropped. "
        f"The interval is a percentile bootstrap of the mean difference ({BOOTSTRAP_DRAWS} resamplings of the "
        f"sections, seed {BOOTSTRAP_SEED}): how large the lead may be; with this few sections it is somewhat "
        f"too narrow, so the p-value remains the test.",
        "",
        *_wilcoxon_lines(results, ctx),
        "",
        "## Wall time and peak memory",
        "",
        "Median seconds over seeds / maximum peak resident memory over seeds "
        f"({ctx.versions.get('machine', '')}).",
        "",
        *_cost_table(results, ctx),
        "",
    ]
    if ctx.reused:
        lines += ["## Copied from the previous results", "",
                  "These entries were not run by this command (`--reuse`): they are copied from the previous "
                  "`results.json` (there, the mean over that run's seeds), measured with the same protocol and the "
                  "same settings and code path of the method; the method ran on the other sections.", ""]
        lines += [f"- **{method}**: {', '.join(sections) if sections else 'no section'}"
                  for method, sections in ctx.reused.items()]
        lines.append("")
    if ctx.not_run or ctx.failed:
        lines += ["## Not run or failed", ""]
        lines += [f"- **{method}**: not run — {reason}" for method, reason in ctx.not_run.items()]
        lines += [f"- **{r['method']}** on {r['section']} (seed {r['seed']}): failed — {r.get('error', 'no message')}"
                  for r in ctx.failed]
        lines.append("")
    if ctx.figures:
        lines += ["## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in ctx.figures]
        lines.append("")
    lines += ["## Hyper-parameters", "",
              "The same for every section; senca and its ablations use `senca.settings.RunSettings()` at its "
              "defaults (only the ablation switches and, with `--quick`, the epochs changed).", ""]
    for method in ctx.methods:
        if method in ctx.params:
            lines += [f"### {method}", "", "```json", json.dumps(ctx.params[method], indent=1, default=str), "```", ""]
    versions_rows = [[name, version] for name, version in ctx.versions.items()]
    lines += ["## Versions", "", *_table(["package", "version"], versions_rows, text_columns=2), ""]
    return "\n".join(lines)
