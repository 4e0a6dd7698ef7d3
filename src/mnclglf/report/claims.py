"""The paper's claims (``results/claims.yaml``) judged from the reproduced cells, with the evidence.

A reviewer asks first whether the *claims* hold, not whether one cell is within a point of the
paper. Each claim is a list of comparisons ``a > b`` (relation ``greater``) or
``|a − b| < margin`` (``within``) between cells named in the paper's terms
(``table5/mnclglf/50``). One rule decides
every comparison: it holds when the difference clears twice its standard error (SE), fails when
it clears it the other way, and is otherwise **not decidable**.

* Several seeds on both sides: Δ is the mean difference; SE is the standard error of the per-seed
  differences (paired, when the seeds match), else sqrt(s_a²/n_a + s_b²/n_b).
* One seed: SE = √2·σ, with σ the seed-to-seed spread *measured on the same profile* (the
  pooled sample standard deviation of its cells of the same metric, top-1 or top-5, that have
  several seeds: top-5 moves less than top-1, so one σ for both would flatter top-1). A profile
  with one seed
  everywhere has no σ, and then no one-seed comparison is decidable: it is never "held".

A claim is **held** when all its comparisons hold, **not held** when one fails, **missing** when
all its cells are missing, otherwise **not decidable**. Beside it: how many comparisons hold on the
paper's own numbers. A profile of separate short runs (``profiles.<p>.epochs``, the quick profile)
checks the claims marked ``runs: short`` and lists the others as **not checked**.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnclglf.config import short_run
from mnclglf.errors import UserError
from mnclglf.report.ablations import Cell, fill

CLAIM_VERDICTS = ("held", "not held", "not decidable", "missing", "not checked")
Z = 2.0  # a difference decides a comparison when it exceeds Z standard errors
RELATIONS = ("greater", "within")
SHORT = "short"  # claims.yaml `runs: short`: checked by a profile of separate short runs


def load_claims(path: Path | str) -> list[dict[str, Any]]:
    """The claims of ``claims.yaml``, checked for the fields :func:`judge_claims` reads."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: claims file not found")
    claims = (yaml.safe_load(path.read_text()) or {}).get("claims") or []
    for c in claims:
        missing = [k for k in ("id", "table", "sentence", "relation", "pairs") if k not in c]
        if missing or c["relation"] not in RELATIONS:
            need = ", ".join(missing) or "a relation"
            raise UserError(f"{path}: claim {c.get('id')!r}: needs {need} "
                            f"(relations: {', '.join(RELATIONS)})")
    return claims


def expand(claim: dict[str, Any], datasets: list[str]) -> list[tuple[str, str]]:
    """The (a, b) cell keys of ``claim``: ``{ds}`` over ``datasets``, ``{x}`` over ``each.x``."""
    xs = [str(v) for v in (claim.get("each") or {}).get("x", [""])]
    out = []
    for ds, x, (a, b) in itertools.product(datasets, xs, claim["pairs"]):
        pair = (a.format(ds=ds, x=x), b.format(ds=ds, x=x))
        if pair not in out:
            out.append(pair)
    return out


def paper_value(paper: dict[str, Any], key: str) -> float | None:
    """The paper's number of a cell key (None: the paper has none, e.g. ``released/…``)."""
    parts = key.split("/")
    tables = ("table3", "table4", "table5", "table6")
    node: Any = paper.get(parts[0]) if parts[0] in tables else None
    for p in parts[1:]:
        if not isinstance(node, dict):
            return None
        node = next((v for k, v in node.items() if str(k) == p), None)
    return float(node) if isinstance(node, (int, float)) else None


def cell_key(c: Cell) -> str:
    """The claims' name of a Tables 3-6 cell (the inverse of the keys written in claims.yaml)."""
    if c.table == "table3":
        return f"table3/{c.dataset}/{c.row}/{c.column}"
    if c.table == "table4":
        return f"table4/{c.column}"
    return f"{c.table}/{c.row}/{c.column}"


def released_cells(datasets: list[str], run: str = "mnclglf-released") -> dict[str, Cell]:
    """``released/<dataset>/<top1|top5>``: the released reading's probe (not a paper cell)."""
    return {f"released/{ds}/{k}": Cell("table3", ds, run, k, None, ds, run, "linear.json", k)
            for ds in datasets for k in ("top1", "top5")}


def short_cells(claims: list[dict[str, Any]], dataset: str, epochs: int,
                runs: list[str]) -> dict[str, Cell]:
    """The cells of the ``runs: short`` claims: ``table5/<run>/<col>`` is the run ``<run>-e<N>``.

    The claim names the paper's (50-epoch) column, whose numbers are the paper's own support;
    ours carry no paper number: a separate short run has its own cosine schedule, so it is
    compared with the other short runs through the claims, never with Table 5's snapshot numbers.
    """
    released = "mnclglf-released"
    out = released_cells([dataset], short_run(released, epochs)) if released in runs else {}
    for claim in (c for c in claims if c.get("runs") == SHORT):
        for key in (k for pair in expand(claim, [dataset]) for k in pair):
            parts = key.split("/")
            if parts[0] == "table5" and parts[1] in runs:
                out[key] = Cell("table5", dataset, parts[1], parts[2], None, dataset,
                                short_run(parts[1], epochs), "linear.json", "top1")
    return out


Spread = tuple[float | None, int]  # (σ, how many cells it is pooled over); (None, 0): not measured


def seed_spread(cells: list[Cell], key: str) -> Spread:
    """Pooled sample std over seeds of the ``key`` (top1/top5) cells that have several seeds.

    A run shared by several tables (the main ``mnclglf`` run) counts once.
    """
    many = list({tuple(c.files): c for c in cells if c.n > 1 and c.key == key}.values())
    dof = sum(c.n - 1 for c in many)
    if not dof:
        return None, 0
    return math.sqrt(sum((c.n - 1) * statistics.variance(c.values) for c in many) / dof), len(many)


def spreads(cells: list[Cell]) -> dict[str, Spread]:
    """σ of each metric the claims compare, measured on these cells."""
    return {key: seed_spread(cells, key) for key in ("top1", "top5")}


def difference(a: Cell, b: Cell, spread: float | None) -> tuple[float, float | None, str]:
    """(Δ = a − b, its standard error or None, how the SE was made)."""
    d = (a.mean or 0.0) - (b.mean or 0.0)
    if a.n > 1 and b.n > 1:
        common = [s for s in a.seeds if s in b.seeds]
        if len(common) > 1:
            diffs = [a.values[a.seeds.index(s)] - b.values[b.seeds.index(s)] for s in common]
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            return statistics.fmean(diffs), se, f"{len(diffs)} seeds"
        se = math.sqrt(statistics.variance(a.values) / a.n + statistics.variance(b.values) / b.n)
        return d, se, f"{a.n} + {b.n} seeds"
    if spread is None:
        return d, None, "one seed, no seed-to-seed spread measured on this profile"
    return d, math.sqrt(2.0) * spread, f"one seed, SE √2·σ, σ {spread:.2f}"


def compare(relation: str, margin: float, d: float, se: float | None) -> str:
    """held / not held / not decidable of one comparison: Δ = ``d``, standard error ``se``."""
    if se is None:
        return "not decidable"
    noise = Z * se
    if relation == "within":
        if abs(d) + noise < margin:
            return "held"
        return "not held" if abs(d) - noise > margin else "not decidable"
    return "held" if d > noise else ("not held" if d < -noise else "not decidable")


def paper_holds(claim: dict[str, Any], a_key: str, b_key: str,
                paper: dict[str, Any]) -> bool | None:
    """Whether the paper's own numbers satisfy the comparison (None: the paper lacks a cell)."""
    pa, pb = paper_value(paper, a_key), paper_value(paper, b_key)
    if pa is None or pb is None:
        return None
    return compare(claim["relation"], float(claim.get("margin", 0.0)), pa - pb, 0.0) == "held"


def _comparison(claim: dict[str, Any], a_key: str, b_key: str, cells: dict[str, Cell],
                paper: dict[str, Any], sigmas: dict[str, Spread]) -> dict[str, Any]:
    a, b = cells.get(a_key), cells.get(b_key)
    pa, pb = paper_value(paper, a_key), paper_value(paper, b_key)
    margin = float(claim.get("margin", 0.0))
    out = {"a": a_key, "b": b_key, "ours_a": None, "ours_b": None, "delta": None, "se": None,
           "basis": "", "verdict": "missing",
           "paper_delta": None if pa is None or pb is None else round(pa - pb, 4),
           "paper_holds": paper_holds(claim, a_key, b_key, paper)}
    if a is None or b is None or a.n == 0 or b.n == 0:
        return out
    d, se, basis = difference(a, b, sigmas[a.key][0])
    out.update(ours_a=round(a.mean or 0.0, 4), ours_b=round(b.mean or 0.0, 4), delta=round(d, 4),
               se=None if se is None else round(se, 4), basis=basis,
               verdict=compare(claim["relation"], margin, d, se))
    return out


def claim_verdict(verdicts: list[str]) -> str:
    """A claim's verdict from its comparisons': missing if all are, not held if one is, held if all
    are."""
    if all(v == "missing" for v in verdicts):
        return "missing"
    if "not held" in verdicts:
        return "not held"
    return "held" if all(v == "held" for v in verdicts) else "not decidable"


def _evidence(comps: list[dict[str, Any]], verdict: str) -> str:
    """The comparison that decides the verdict, as 'Δ ± SE (basis)'."""
    present = [c for c in comps if c["delta"] is not None]
    if not present:
        return "no reproduced cells"
    pick = [c for c in present if c["verdict"] == verdict] or present
    c = min(pick, key=lambda c: (abs(c["delta"]) / c["se"] if c["se"] else math.inf,
                                 abs(c["delta"])))
    se = "SE unknown" if c["se"] is None else f"SE {c['se']:.2f}"
    head = f"{c['a']} − {c['b']}: Δ {c['delta']:+.2f}, {se} ({c['basis']})"
    if len(comps) == 1:
        return head
    counts = {v: sum(1 for x in comps if x["verdict"] == v) for v in CLAIM_VERDICTS}
    return f"{len(comps)} comparisons: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) \
        + f"; {head}"


def judge_claims(claims: list[dict[str, Any]], cells: dict[str, Cell], paper: dict[str, Any],
                 datasets: list[str], short: bool) -> list[dict[str, Any]]:
    """Every claim the profile checks, judged; a short-run profile lists the rest as not checked."""
    sigmas = spreads(list(cells.values()))
    out = []
    for claim in claims:
        mine = (claim.get("runs") == SHORT) == short
        if not mine and not short:
            continue
        pairs = expand(claim, datasets)
        base = {k: claim.get(k) for k in ("id", "table", "sentence", "relation", "margin", "note")}
        paper_pairs = expand(claim, list(paper.get("table3") or {}))
        own = [h for a, b in paper_pairs if (h := paper_holds(claim, a, b, paper)) is not None]
        base["paper_support"] = f"{sum(own)}/{len(own)}" if own else "—"
        if not mine:
            table = claim["table"].replace("table", "Table ")
            out.append({**base, "verdict": "not checked", "comparisons": [],
                        "evidence": f"needs the 200-epoch runs of {table} (the paper profile)"})
            continue
        comps = [_comparison(claim, a, b, cells, paper, sigmas) for a, b in pairs]
        verdict = claim_verdict([c["verdict"] for c in comps])
        out.append({**base, "verdict": verdict, "comparisons": comps,
                    "evidence": _evidence(comps, verdict)})
    return out


def claims_markdown(claims: list[dict[str, Any]], profile: str, sigmas: dict[str, Spread],
                    pipeline_check: bool) -> str:
    """The claim table of ``claims.md`` (and of ``summary.md``)."""
    lines = [f"# The paper's claims — {profile} profile", ""]
    if pipeline_check:
        lines += ["> **Pipeline check.** These runs are not on the paper's datasets: no claim "
                  "here is the paper's claim about them. The table tests the claim machinery end "
                  "to end.", ""]
    found = [f"σ({key}) = {s:.2f} points, pooled over {n} cells with several seeds"
             for key, (s, n) in sigmas.items() if s is not None]
    measured = ("; ".join(found) + "." if found else "No σ was measured here (one seed per run): "
                "no one-seed comparison is decidable; add seeds (`repeat_seeds`).")
    lines += [f"Rule: a comparison holds when its difference Δ exceeds {Z:g} standard errors (SE); "
              "several seeds: SE of the mean difference; one seed: SE = √2·σ, σ the seed-to-seed "
              f"spread measured on this profile. {measured}", "",
              "| claim | table | the paper says | verdict | evidence "
              "| holds on the paper's numbers |",
              "|---|---|---|---|---|---|"]
    for c in claims:
        sentence = " ".join(str(c["sentence"]).split())
        note = f" *Note: {' '.join(str(c['note']).split())}.*" if c.get("note") else ""
        lines.append(f"| `{c['id']}` | {c['table'].replace('table', '')} | {sentence}{note} | "
                     f"**{c['verdict']}** | {c['evidence']} | {c['paper_support']} |")
    counts = {v: sum(1 for c in claims if c["verdict"] == v) for v in CLAIM_VERDICTS}
    lines += ["", "Claims: " + ", ".join(f"{k} {v}" for v, k in counts.items() if k) + "."]
    return "\n".join(lines) + "\n"
