"""Reading a hub's ``/metrics`` over real HTTP, parsed by prometheus_client's parser."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from cli_helpers import TIME, Proc
from prometheus_client.parser import text_string_to_metric_families
from waiting import scaled

# The start-up line of the metrics door (hub.cli.door_lines).
METRICS_LINE = re.compile(
    rf"{TIME} <<Server>>: serving Prometheus metrics \(HTTP\) on "
    r"(?P<url>http://127\.0\.0\.1:\d+/metrics)"
)

# The series a family of each type exports beside its name.
SUFFIXES = {
    "_total": ("counter",),
    "_created": ("counter", "histogram", "summary"),
    "_bucket": ("histogram",),
    "_count": ("histogram", "summary"),
    "_sum": ("histogram", "summary"),
}


class Scrape:
    """One scrape: every sample, by its name and labels."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def names(self) -> set[str]:
        """Every family name and every sample name (with _total, _bucket... suffixes)."""
        return {f.name for f in self.families} | {s.name for s in self.samples}

    def exports(self, name: str) -> bool:
        """Whether ``name`` is a family or one of its series, even one with no
        sample yet (a labelled counter before its first count)."""
        if name in self.names():
            return True
        families = {f.name: f.type for f in self.families}
        for suffix, types in SUFFIXES.items():
            base = name.removesuffix(suffix)
            if base != name and families.get(base) in types:
                return True
        return False

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``
        (0 when a labelled child has not been counted yet); the metric itself
        must be exported."""
        assert self.exports(name), f"{name} is not exported"
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


def metrics_url(proc: Proc) -> str:
    """Where a hub process serves its metrics: its start-up lines say."""
    return proc.expect(METRICS_LINE)["url"]


def fetch(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=scaled(10)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())


async def scrape(url: str) -> Scrape:
    """``fetch`` off the event loop: the hub under test may be on this very loop."""
    return await asyncio.to_thread(fetch, url)
