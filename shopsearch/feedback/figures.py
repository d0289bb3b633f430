"""Analysts' figures from the feedback log: click-through, reciprocal rank of the products
shoppers clicked or confirmed, and how often the shop had no close match; overall, per build
and per category (`shopsearch bench feedback`)."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from shopsearch.errors import ConfigError
from shopsearch.feedback.records import LoggedSearch

CTR_KS = (1, 5, 10)
#: products a shopper engaged with (a "not this" is engagement, but no sign of the right product)
_POSITIVE = ("click", "confirm", "add_to_cart", "purchase")
NO_RESULTS = "(no results)"


@dataclass(frozen=True)
class Figures:
    """One group of searches. Rates are None where nothing could be measured."""

    searches: int
    ctr: dict[int, float | None]  # share of searches with a click at rank <= k
    mrr_clicked: float | None  # mean 1/best rank of a clicked, confirmed, carted or bought product
    clicked_searches: int  # the searches mrr_clicked averages over
    mrr_confirmed: float | None  # mean 1/best rank of a confirmed product ("this is it")
    confirmed_searches: int
    rejected_searches: int  # searches with a "not this"
    no_match: float | None  # share of calibrated searches answered "no close match"
    calibrated_searches: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ctr"] = {f"@{k}": v for k, v in self.ctr.items()}
        return d


@dataclass(frozen=True)
class FeedbackReport:
    since: datetime | None
    overall: Figures
    by_build: dict[str, Figures]
    by_category: dict[str, Figures]

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat() if self.since else None, "overall": self.overall.to_dict(),
                "by_build": {b: f.to_dict() for b, f in self.by_build.items()},
                "by_category": {c: f.to_dict() for c, f in self.by_category.items()}}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`7d`, `12h` (that long ago) or an ISO date/time (UTC unless it names a zone)."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"\s*(\d+)\s*([dh])\s*", text)
    if m:
        n = int(m.group(1))
        return now - (timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n))
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since must be like 7d, 12h or 2026-11-01, not {text!r}") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def category_of(search: LoggedSearch, depth: int = 1) -> str:
    """The search's category: that of the first product shown, cut to `depth` levels (0 = whole path)."""
    main = [h for h in search.hits if h.region == 0]
    if not main:
        return NO_RESULTS
    path = (main[0].category or "").strip("/")
    if not path:
        return "(uncategorised)"
    return "/".join(path.split("/")[:depth]) if depth else path


def _best_rank(s: LoggedSearch, skus: Iterable[str]) -> int | None:
    ranks = [r for r in (s.rank_of(sku) for sku in skus) if r is not None]
    return min(ranks) if ranks else None


def figures(searches: list[LoggedSearch]) -> Figures:
    n = len(searches)
    first_click = [_best_rank(s, s.skus_with("click")) for s in searches]
    engaged = [_best_rank(s, set().union(*(s.skus_with(e) for e in _POSITIVE))) for s in searches]
    engaged = [r for r in engaged if r is not None]
    confirmed = [r for r in (_best_rank(s, s.confirmed()) for s in searches) if r is not None]
    calibrated = [s for s in searches if s.match is not None]
    return Figures(
        searches=n,
        ctr={k: (sum(1 for r in first_click if r is not None and r <= k) / n) if n else None for k in CTR_KS},
        mrr_clicked=sum(1 / r for r in engaged) / len(engaged) if engaged else None,
        clicked_searches=len(engaged),
        mrr_confirmed=sum(1 / r for r in confirmed) / len(confirmed) if confirmed else None,
        confirmed_searches=len(confirmed),
        rejected_searches=sum(1 for s in searches if "reject" in s.verdicts().values()),
        no_match=sum(1 for s in calibrated if s.match == "none") / len(calibrated) if calibrated else None,
        calibrated_searches=len(calibrated),
    )


def feedback_report(searches: list[LoggedSearch], since: datetime | None = None,
                    category_depth: int = 1) -> FeedbackReport:
    by_build: dict[str, list[LoggedSearch]] = defaultdict(list)
    by_cat: dict[str, list[LoggedSearch]] = defaultdict(list)
    for s in searches:
        by_build[s.build_id].append(s)
        by_cat[category_of(s, category_depth)].append(s)
    return FeedbackReport(since, figures(searches), {b: figures(v) for b, v in sorted(by_build.items())},
                          {c: figures(v) for c, v in sorted(by_cat.items())})


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def text_table(report: FeedbackReport) -> str:
    """The report as aligned text: one line per group."""
    head = ["group", "searches", *[f"CTR@{k}" for k in CTR_KS], "MRR clicked", "MRR confirmed", "confirmed",
            "no match"]
    rows = [head]

    def row(name: str, f: Figures) -> list[str]:
        return [name, str(f.searches), *[_pct(f.ctr[k]) for k in CTR_KS], _num(f.mrr_clicked),
                _num(f.mrr_confirmed), str(f.confirmed_searches), _pct(f.no_match)]

    rows.append(row("all", report.overall))
    rows += [row(f"build {b}", f) for b, f in report.by_build.items()]
    rows += [row(f"category {c}", f) for c, f in report.by_category.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)
