"""The unmapped-attribute report: source attribute keys that were seen but that neither a
convention reader nor the workflow's mapping used, with how many spans carried each, so a
format mismatch (everything unmapped, nothing read) shows instead of silently emptying data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cegraph.ingest.span import Reading, SourceSpan


def unmapped_keys(spans: Iterable[tuple[SourceSpan, Reading]], mapped: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for span, reading in spans:
        for key in span.attributes:
            if key not in reading.consumed and key not in mapped:
                counts[key] += 1
    return counts


def report(counts: Counter[tuple[str, str]], limit: int = 20) -> list[str]:
    """Lines for the summary: `workflow: key (n spans)`, most frequent first."""
    return [f"{wf}: {key} ({n} spans)" for (wf, key), n in counts.most_common(limit)]
