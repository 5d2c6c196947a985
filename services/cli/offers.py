"""`vicino offers ...`: the offer catalogue from the command line, through the recommender's HTTP
API with the admin token (as `vicino stores import` does for stores).

`vicino offers import FILE` reads (optionally gzipped):
- `.json`: an array of offers, or `{"offers": [...]}`;
- `.ndjson` / `.jsonl`: one offer object per line;
- `.csv`: a header row, then one offer per row. Columns (any order; those marked * required):
  offer_id*, title*, body, item_ids*, category*, price*, promo_price, currency*, valid_from*,
  valid_to*, store_ids, brands, min_stock, channels, priority, fulfilment.
  List columns (item_ids, store_ids, brands, channels) separate values with `|`; an empty cell
  means "not set" (every store, any brand, every channel, no promo price, no min_stock).
  Instants are RFC 3339 with an offset, or epoch seconds.
A row or line that cannot be read (wrong number of cells, a number that is not one, bad JSON) is
skipped and reported with its line number; the service judges the rest, one by one.
"""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import orjson
import typer

from vicino.services.cli.guards import admin_token_or_exit, call_api_or_exit

offers_app = typer.Typer(help="Manage the offer catalogue (recommender service).", no_args_is_help=True)

CSV_COLUMNS = ("offer_id", "title", "body", "item_ids", "category", "price", "promo_price", "currency",
               "valid_from", "valid_to", "store_ids", "brands", "min_stock", "channels", "priority", "fulfilment")
CSV_REQUIRED = ("offer_id", "title", "item_ids", "category", "price", "currency", "valid_from", "valid_to")
_LISTS = ("item_ids", "store_ids", "brands", "channels")
_FLOATS = ("price", "promo_price")
_INTS = ("min_stock", "priority")


class OfferFileError(ValueError):
    """The file as a whole cannot be read (unknown format, missing columns, not JSON)."""


@dataclass
class ReadOffers:
    offers: list[dict] = field(default_factory=list)
    where: list[str] = field(default_factory=list)           # per offer: "line 7", "item 3"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _csv_offer(row: dict[str, str]) -> dict:
    """One CSV row as an offer body; ValueError says which cell is unreadable."""
    offer: dict = {}
    for name, raw in row.items():
        text = raw.strip()
        if text == "":
            continue  # not set: the service's default applies, or it names the missing field
        if name in _LISTS:
            offer[name] = [v.strip() for v in text.split("|") if v.strip()]
        elif name in _FLOATS:
            try:
                offer[name] = float(text)
            except ValueError:
                raise ValueError(f"{name} {text[:30]!r} is not a number") from None
        elif name in _INTS:
            try:
                offer[name] = int(text)
            except ValueError:
                raise ValueError(f"{name} {text[:30]!r} is not an integer") from None
        elif name in ("valid_from", "valid_to"):
            offer[name] = text  # RFC 3339 or epoch seconds: the service reads both (kernel.times) and judges it
        else:
            offer[name] = text
    return offer


def _read_csv(f, out: ReadOffers) -> None:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if unknown or missing:
        raise OfferFileError("CSV header: " + "; ".join(
            ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) +
            ([f"missing column(s) {', '.join(missing)}"] if missing else [])) +
            f" (columns: {', '.join(CSV_COLUMNS)})")
    reader.fieldnames = header
    for row in reader:
        where = f"line {reader.line_num}"  # where the row ends (a quoted cell may span lines)
        if None in row or any(v is None for v in row.values()):
            out.skipped.append((where, f"expected {len(header)} cells"))
            continue
        try:
            out.offers.append(_csv_offer(row))
        except ValueError as e:
            out.skipped.append((where, str(e)))
            continue
        out.where.append(where)


def _read_ndjson(f, out: ReadOffers) -> None:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            out.skipped.append((f"line {n}", f"not valid JSON: {e}"))
            continue
        out.offers.append(item)
        out.where.append(f"line {n}")


def read_offers(path: Path) -> ReadOffers:
    name = path.name.lower().removesuffix(".gz")
    out = ReadOffers()
    with _open_text(path) as f:
        if name.endswith(".csv"):
            _read_csv(f, out)
        elif name.endswith((".ndjson", ".jsonl")):
            _read_ndjson(f, out)
        elif name.endswith(".json"):
            try:
                doc = orjson.loads(f.read())
            except orjson.JSONDecodeError as e:
                raise OfferFileError(f"{path.name} is not valid JSON: {e}") from None
            items = doc.get("offers") if isinstance(doc, dict) else doc
            if not isinstance(items, list):
                raise OfferFileError(f'{path.name}: expected a JSON array of offers or {{"offers": [...]}}')
            out.offers = items
            out.where = [f"item {i}" for i in range(len(items))]
        else:
            raise OfferFileError(f"{path.name}: expected .json, .ndjson, .jsonl or .csv (optionally .gz)")
    return out


@offers_app.command("import")
def offers_import(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                              help=".json (array), .ndjson/.jsonl or .csv, optionally .gz"),
                  url: str = typer.Option("http://127.0.0.1:8000", envvar="VICINO_RECOMMENDER_URL",
                                          help="base URL of the stack (the front door) or of the recommender"),
                  token: Optional[str] = typer.Option(None, envvar="VICINO_ADMIN_TOKEN",
                                                      help="admin token (default: the one `vicino up` keeps in "
                                                           "VICINO_DATA_DIR)"),
                  batch: int = typer.Option(1000, min=1, max=10_000, help="offers per request")) -> None:
    """Upsert offers from a file; bad rows are reported with their line and skipped."""
    from vicino.services.launcher.demo_offers import post_offers

    admin = admin_token_or_exit(token)
    try:
        read = read_offers(file)
    except OfferFileError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)
    totals = call_api_or_exit(url, admin, lambda client: post_offers(client, read.offers, batch))
    problems = [(where, f"skipped: {why}") for where, why in read.skipped]
    problems += [(read.where[r["index"]], f"rejected {r['offer_id'] or 'an offer'}: {r['reason']}")
                 for r in totals["rejected"]]
    problems.sort(key=lambda p: int(p[0].split()[-1]))  # in file order
    typer.echo(f"{len(read.offers)} offers sent: {totals['created']} created, {totals['updated']} updated, "
               f"{len(totals['rejected'])} rejected; {len(read.skipped)} unreadable rows skipped")
    for where, what in problems[:50]:
        typer.echo(f"  {where}: {what}")
    if len(problems) > 50:
        typer.echo(f"  ... and {len(problems) - 50} more")
