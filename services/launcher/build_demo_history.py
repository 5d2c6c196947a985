"""Writes `demo_data/online_retail_recent.csv.gz`: the real UCI Online Retail lines invoiced from
2011-10-01 to the end of the data set (2011-12-09), copied unchanged, header included.

The demo imports it with `vicino history import` so that customers, the profile and (issue #4)
the recommender have real cross-channel history to work with; the full file stays in the
shared data sets. Run: `python -m vicino.services.launcher.build_demo_history [SOURCE]`.

Source: Chen, D. (2015). Online Retail. UCI Machine Learning Repository,
https://doi.org/10.24432/C5BW33, CC BY 4.0.
"""
from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"
TARGET = Path(__file__).resolve().parent / "demo_data" / "online_retail_recent.csv.gz"
SINCE = "2011-10-01"


def build(source: Path = SOURCE, target: Path = TARGET, since: str = SINCE) -> int:
    kept = 0
    with gzip.open(source, "rt", newline="") as src, gzip.GzipFile(target, "wb", mtime=0) as raw:
        header = src.readline()
        raw.write(header.encode())
        date_col = next(csv.reader([header])).index("InvoiceDate")
        for line in src:
            # the file is in date order; the date column never holds a comma
            if next(csv.reader([line]))[date_col] >= since:
                raw.write(line.encode())
                kept += 1
    return kept


if __name__ == "__main__":
    n = build(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
    print(f"{n} lines since {SINCE} -> {TARGET}")
