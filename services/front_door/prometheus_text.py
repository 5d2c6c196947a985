"""Several Prometheus text expositions as one (the front door's /metrics). Pure: no I/O.

The services of one process export the same families (their request counters carry a `service`
label); a family is written once, with every service's samples, and a sample that two of them
export alike (same name and labels) once."""
from __future__ import annotations


def _family(line: str) -> str:
    return line.split(" ", 3)[2]


def merge_expositions(texts: list[str]) -> str:
    meta: dict[str, list[str]] = {}      # family -> its HELP and TYPE lines, first seen
    samples: dict[str, dict[str, str]] = {}  # family -> sample key -> line
    order: list[str] = []
    for text in texts:
        family = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = _family(line)
                if family not in meta:
                    meta[family], samples[family] = [], {}
                    order.append(family)
                if not any(m.startswith(line[:7]) for m in meta[family]):
                    meta[family].append(line)
                continue
            if line.startswith("#") or family is None:
                continue
            key = line.rsplit(" ", 1)[0]
            samples[family].setdefault(key, line)
    out = []
    for family in order:
        out += meta[family]
        out += samples[family].values()
    return "\n".join(out) + "\n"
