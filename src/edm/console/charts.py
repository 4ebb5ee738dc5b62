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
