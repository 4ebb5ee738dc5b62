"""The console's charts of daily series: the JSON `edm.js` hands to uPlot, and the `ui.chart` macro of
`_macros.html` renders beside it as a figure with its legend and a table of the same figures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from babel.dates import format_skeleton

from edm.console.i18n import Catalogue


def day_chart(
    catalogue: Catalogue,
    *,
    chart_id: str,
    title: str,
    days: Sequence[Mapping[str, Any]],
    series: Iterable[tuple[str, str]],
    day: Callable[[Mapping[str, Any]], dt.date],
) -> dict[str, Any]:
    """A chart of one value per day for each (key, label msgid) of `series`, read from each of `days`; the x labels
    are the days (`day` finds a row's date) in the page's language."""
    return {
        "id": chart_id,
        "title": catalogue.gettext(title),
        "labels": [format_skeleton("MMMd", day(d), locale=catalogue.locale) for d in days],
        "series": [
            {"key": key, "label": catalogue.gettext(label), "values": [d[key] for d in days]} for key, label in series
        ],
    }


def time_chart(
    catalogue: Catalogue,
    *,
    chart_id: str,
    title: str,
    points: Sequence[Mapping[str, Any]],
    series: Iterable[tuple[str, str]],
    moment: Callable[[Mapping[str, Any]], dt.datetime],
    skeleton: str,
    x_label: str,
) -> dict[str, Any]:
    """A chart of one value per point in time for each (key, label msgid) of `series`; the x labels are each point's
    time (`moment` finds it, already in the viewer's zone) in the page's language, as the CLDR skeletons of `skeleton`
    spell it ("Hm" for hours; "MMMd Hm", the date then the time, for days and hours: CLDR has no skeleton for both in
    every language); `x_label` (a msgid) heads the first column of the chart's table."""
    return {
        "id": chart_id,
        "title": catalogue.gettext(title),
        "x_label": catalogue.gettext(x_label),
        "labels": [
            " ".join(format_skeleton(part, moment(p), locale=catalogue.locale) for part in skeleton.split())
            for p in points
        ],
        "series": [
            {"key": key, "label": catalogue.gettext(label), "values": [p[key] for p in points]} for key, label in series
        ],
    }
