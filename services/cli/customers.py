"""`vicino customers import FILE`: customers from a CRM export, through the recommender's
`POST /v1/customers:batch` with the admin token (or any key with the app_backend role).

The file is CSV (optionally .gz) or Parquet, one customer a row. Columns (any order; only
customer_id required): customer_id, email, phone, loyalty_card (each, when set, an identifier of
that kind: an e-mail address or phone number is kept only as its SHA-256), consent_location,
consent_marketing, consent_personalisation (true/false, 1/0, yes/no; empty leaves that purpose
as it is), locale (BCP 47: "it-IT"), country (ISO 3166-1 alpha-2: "IT"). A file with any other
column is refused before anything is sent (exit 2). A row that cannot be read (no customer_id,
a consent value that is none of those, an identifier an earlier row gave another customer) is
rejected here with its line; the service judges the rest, item by item (an identifier already
linked to another customer in Vicino rejects the row: never a merge). A few batches are in
flight at once.
"""
from __future__ import annotations

import asyncio
import csv
import gzip
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer

from vicino.services.cli.guards import ADMIN_TOKEN_OPTION, admin_token_or_exit

customers_app = typer.Typer(help="Customers from a CRM: identifiers, consent, locale.", no_args_is_help=True)

IDENTIFIER_COLUMNS = ("email", "phone", "loyalty_card")  # the column is the identifier's kind
CONSENT_COLUMNS = {"consent_location": "location", "consent_marketing": "marketing",
                   "consent_personalisation": "personalisation"}
COLUMNS = ("customer_id", *IDENTIFIER_COLUMNS, *CONSENT_COLUMNS, "locale", "country")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
MAX_BATCH = 1000            # the service's limit per request
RETRIES = 4                 # a batch answered 503 (or unreachable) is sent again, this many times at most


class CustomerFileError(ValueError):
    """The file as a whole cannot be read (format, columns)."""


class FileFormat(str, Enum):
    auto = "auto"
    csv = "csv"
    parquet = "parquet"


@dataclass
class Row:
    where: int                  # line of the CSV (where the row ends), or row number of the Parquet file
    customer: dict              # the item of the batch
    identifier_columns: list[str] = field(default_factory=list)  # the column of each identifier sent


@dataclass
class ReadCustomers:
    rows: list[Row] = field(default_factory=list)
    unreadable: list[tuple[int, str, str]] = field(default_factory=list)  # (where, customer_id, why)
    where_name: str = "line"


@dataclass
class ImportReport:
    sent: int = 0
    created: int = 0
    updated: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (where, customer_id, reason), file order
    seconds: float = 0.0


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def customer_of(cells: dict) -> tuple[dict, list[str]]:
    """One row (column -> cell, cells as read) as a batch item, and the column of each identifier
    in it; ValueError says which cell cannot be read."""
    customer_id = _text(cells.get("customer_id"))
    if not customer_id:
        raise ValueError("customer_id is empty")
    body: dict = {"customer_id": customer_id}
    identifiers, columns = [], []
    for kind in IDENTIFIER_COLUMNS:
        value = _text(cells.get(kind))
        if value:
            identifiers.append({"kind": kind, "value": value})
            columns.append(kind)
    if identifiers:
        body["identifiers"] = identifiers
    consent = {}
    for column, purpose in CONSENT_COLUMNS.items():
        value = _text(cells.get(column)).lower()
        if value in _TRUE:
            consent[purpose] = True
        elif value in _FALSE:
            consent[purpose] = False
        elif value:
            raise ValueError(f"{column} {value[:20]!r} is none of true/false, 1/0, yes/no (empty: unchanged)")
    if consent:
        body["consent"] = consent
    for name in ("locale", "country"):
        value = _text(cells.get(name))
        if value:
            body[name] = value
    return body, columns


def _check_columns(header: list[str]) -> None:
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise CustomerFileError(f"unknown column(s) {', '.join(unknown)} (columns: {', '.join(COLUMNS)}); "
                                "nothing was sent")
    if "customer_id" not in header:
        raise CustomerFileError(f"no customer_id column (columns: {', '.join(COLUMNS)}); nothing was sent")


def _add(out: ReadCustomers, where: int, cells: dict) -> None:
    try:
        body, columns = customer_of(cells)
    except ValueError as e:
        out.unreadable.append((where, _text(cells.get("customer_id")), str(e)))
        return
    out.rows.append(Row(where, body, columns))


def _read_csv(path: Path, out: ReadCustomers) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        _check_columns(header)
        reader.fieldnames = header
        for cells in reader:
            if None in cells or any(v is None for v in cells.values()):
                out.unreadable.append((reader.line_num, _text(cells.get("customer_id")),
                                       f"expected {len(header)} cells"))
                continue
            _add(out, reader.line_num, cells)


def _read_parquet(path: Path, out: ReadCustomers) -> None:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    _check_columns(file.schema_arrow.names)
    out.where_name = "row"
    n = 0
    for batch in file.iter_batches(batch_size=10_000):
        for cells in batch.to_pylist():
            n += 1
            _add(out, n, cells)


def _one_owner_per_identifier(out: ReadCustomers) -> None:
    """An identifier on rows of two customers: the later rows are rejected here, so that the
    first row wins whatever order the batches in flight reach the service in."""
    from vicino.services.recommender.domain.identity import IdentifierError, normalise_identifier

    first: dict[str, tuple[int, str]] = {}
    kept = []
    for row in out.rows:
        clash = None
        for ident, column in zip(row.customer.get("identifiers", []), row.identifier_columns):
            try:
                key = normalise_identifier(ident["kind"], ident["value"])
            except IdentifierError:
                continue  # the service says what is wrong with it
            where, owner = first.setdefault(key, (row.where, row.customer["customer_id"]))
            if owner != row.customer["customer_id"]:
                clash = f"{column}: the same {column} as {out.where_name} {where} ({owner}); an identifier " \
                        "belongs to one customer"
                break
        if clash:
            out.unreadable.append((row.where, row.customer["customer_id"], clash))
        else:
            kept.append(row)
    out.rows = kept


def read_customers(path: Path, fmt: FileFormat = FileFormat.auto) -> ReadCustomers:
    name = path.name.lower()
    if fmt is FileFormat.auto:
        if name.endswith((".csv", ".csv.gz")):
            fmt = FileFormat.csv
        elif name.endswith(".parquet"):
            fmt = FileFormat.parquet
        else:
            raise CustomerFileError(f"{path.name}: expected .csv, .csv.gz or .parquet, or say --format")
    out = ReadCustomers()
    try:
        (_read_csv if fmt is FileFormat.csv else _read_parquet)(path, out)
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise CustomerFileError(f"{path.name}: cannot be read as {fmt.value}: {e}") from None
    except Exception as e:  # pyarrow's errors (not Parquet, truncated) share no base class worth naming
        if fmt is FileFormat.parquet:
            raise CustomerFileError(f"{path.name}: cannot be read as Parquet: {e}") from None
        raise
    _one_owner_per_identifier(out)
    return out


def _reason(errors: list[dict], row: Row) -> str:
    """The service's errors in the file's words: `identifiers.1` is the column it came from."""
    parts = []
    for e in errors or []:
        where = e.get("field") or ""
        head, _, rest = where.partition(".")
        if head == "identifiers" and rest.split(".")[0].isdigit() and int(rest.split(".")[0]) < len(row.identifier_columns):
            where = row.identifier_columns[int(rest.split(".")[0])]
        elif head == "consent" and rest in CONSENT_COLUMNS.values():
            where = f"consent_{rest}"
        parts.append(f"{where}: {e.get('message')}" if where else str(e.get("message")))
    return "; ".join(parts) or "rejected"


async def _post(client, batch: list[Row]) -> dict:
    import httpx

    body = {"customers": [r.customer for r in batch]}
    for attempt in range(RETRIES + 1):
        try:
            r = await client.post("/v1/customers:batch", json=body)
        except httpx.TransportError:
            if attempt == RETRIES:
                raise
        else:
            if r.status_code != 503 or attempt == RETRIES:
                r.raise_for_status()
                return r.json()
        await asyncio.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


async def import_customers(client, rows: list[Row], *, batch: int = MAX_BATCH, in_flight: int = 4,
                           progress: Callable[[str, int, int], None] | None = None) -> ImportReport:
    """Sends `rows` in batches, `in_flight` at a time, with `client` (an httpx.AsyncClient bound
    to the stack with a key that holds app_backend). A batch refused as a whole raises
    httpx.HTTPStatusError (after retries of a 503)."""
    report = ImportReport(sent=len(rows))
    started = time.perf_counter()
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    slots = asyncio.Semaphore(in_flight)
    done = 0

    async def one(chunk: list[Row]) -> None:
        nonlocal done
        async with slots:
            answer = await _post(client, chunk)
        report.created += answer["created"]
        report.updated += answer["updated"]
        for result in answer["results"]:
            if result["status"] == "rejected":
                row = chunk[result["index"]]
                report.rejected.append((row.where, row.customer["customer_id"], _reason(result.get("errors"), row)))
        done += len(chunk)
        if progress is not None:
            progress("import", done, len(rows))

    if progress is not None:
        progress("import", 0, len(rows))
    tasks = [asyncio.ensure_future(one(chunk)) for chunk in batches]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    report.rejected.sort()
    report.seconds = time.perf_counter() - started
    return report


def write_rejects(path: Path, where_name: str, rejected: list[tuple[int, str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([where_name, "customer_id", "reason"])
        w.writerows(rejected)


@customers_app.command("import")
def customers_import(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                                 help=".csv (optionally .gz) or .parquet"),
                     fmt: FileFormat = typer.Option(FileFormat.auto, "--format", help="default: from the file name"),
                     batch: int = typer.Option(MAX_BATCH, min=1, max=MAX_BATCH, help="customers per request"),
                     in_flight: int = typer.Option(4, "--in-flight", min=1, max=16, help="requests at once"),
                     rejects: Optional[Path] = typer.Option(None, "--rejects", dir_okay=False,
                                                            help="also write the rejected rows here (CSV: line, "
                                                                 "customer_id, reason)"),
                     url: str = typer.Option("http://127.0.0.1:8000", envvar="VICINO_URL",
                                             help="base URL of the stack (the front door) or of the recommender"),
                     token: Optional[str] = ADMIN_TOKEN_OPTION) -> None:
    """Create or update customers from a CRM export; a report of the rejected rows at the end."""
    import httpx

    from vicino.services.cli.progress import progress_bar

    key = admin_token_or_exit(token)
    try:
        read = read_customers(file, fmt)
    except CustomerFileError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)

    async def run() -> ImportReport:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            bar, progress = progress_bar({"import": "importing customers"}, width=22)
            with bar:
                return await import_customers(client, read.rows, batch=batch, in_flight=in_flight, progress=progress)

    try:
        report = asyncio.run(run())
    except httpx.HTTPStatusError as e:
        typer.echo(f"vicino: {e.response.status_code} {e.response.text[:500]}", err=True)
        raise typer.Exit(1)
    except httpx.HTTPError as e:
        typer.echo(f"vicino: cannot reach {url}: {e}", err=True)
        raise typer.Exit(1)
    rejected = sorted(report.rejected + read.unreadable)
    rows = len(read.rows) + len(read.unreadable)
    rate = f", {report.sent / report.seconds:,.0f} customers/s" if report.seconds > 0 else ""
    typer.echo(f"{rows:,} rows: {report.created:,} created, {report.updated:,} updated, {len(rejected):,} rejected "
               f"(in {report.seconds:.1f} s{rate})")
    for where, customer_id, reason in rejected[:50]:
        typer.echo(f"  {read.where_name} {where} ({customer_id or 'no customer_id'}): {reason}")
    if len(rejected) > 50:
        typer.echo(f"  ... and {len(rejected) - 50:,} more" + ("" if rejects else " (--rejects FILE writes them all)"))
    if rejects is not None:
        write_rejects(rejects, read.where_name, rejected)
        typer.echo(f"rejected rows written to {rejects}")
