"""Builds the demo offer catalogue (`demo_data/offers_online_retail.json`) from real sales: the
UCI Online Retail transaction log (Chen, 2015; CC BY 4.0), a UK gift retailer's 2010-2011
invoices. Run once by hand; the launcher only reads the file it writes:

    python -m vicino.services.launcher.build_demo_offers [--source online_retail.csv.gz] [--count 300]

Rules, all deterministic (the same input gives the same file):
- Sales only: invoices starting with "C" (cancellations), quantities or prices <= 0 and
  non-product codes are dropped. Product codes are five digits with an optional letter suffix
  (85123A); everything else is postage, fees, samples or adjustments (POST, DOT, M, BANK CHARGES,
  AMAZONFEE, C2, CRUK, PADS, S, B, D, gift vouchers...).
- Best-selling: ranked by the number of distinct invoices that bought the item, which is less
  swayed by a single wholesale order than the units sold.
- Title: the item's most frequent description, in title case. Price: its most frequent unit
  price (GBP; ties go to the higher, the retail rather than the bulk price). Promo price: 10-20 %
  lower, the percentage fixed per item by a hash of its stock code.
- Category: the product noun of the description, `category_of` of the kernel's published
  contract kernel/contracts/item_categories.py (training categorises items the same way).
- Validity: relative days (`valid_from_days`, `valid_to_days`), turned into instants when the
  demo is loaded (vicino.services.launcher.demo_offers) so the catalogue is current whenever it runs;
  every 30th offer starts in the future.
- Variety for the demo: every 20th offer has a min_stock, every 15th is click_and_collect,
  every 40th a reservation, every 50th online only (web, app, email); the 30 best sellers get
  priority 2, the next 70 priority 1.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import re
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from vicino.services.kernel.contracts.item_categories import category_of

SOURCE = Path("/work/shared/datasets/online-retail/online_retail.csv.gz")
OUT = Path(__file__).parent / "demo_data" / "offers_online_retail.json"
PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,2}$")


def title_of(description: str) -> str:
    """WHITE HANGING HEART T-LIGHT HOLDER -> White Hanging Heart T-Light Holder; 50'S -> 50's."""
    words = " ".join(description.strip(" .").split())
    titled = re.sub(r"[A-Za-z]+", lambda m: m.group(0).capitalize(), words)
    return re.sub(r"(?<=')[A-Za-z]+", lambda m: m.group(0).lower(), titled)


def _hash(code: str) -> int:
    return zlib.crc32(code.encode())


def read_sales(source: Path) -> tuple[dict[str, set], dict[str, Counter], dict[str, Counter]]:
    """Per product code: the invoices, the descriptions seen and the unit prices seen."""
    invoices: dict[str, set] = defaultdict(set)
    descriptions: dict[str, Counter] = defaultdict(Counter)
    prices: dict[str, Counter] = defaultdict(Counter)
    with gzip.open(source, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            code = row["StockCode"].strip()
            if row["InvoiceNo"].startswith("C") or not PRODUCT_CODE.match(code):
                continue
            try:
                quantity, price = int(row["Quantity"]), float(row["UnitPrice"])
            except ValueError:
                continue
            description = (row["Description"] or "").strip()
            if quantity <= 0 or price <= 0 or not description:
                continue
            invoices[code].add(row["InvoiceNo"])
            descriptions[code][description] += 1
            prices[code][price] += 1
    return invoices, descriptions, prices


def build(source: Path, count: int) -> list[dict]:
    invoices, descriptions, prices = read_sales(source)
    ranked = sorted(invoices, key=lambda c: (-len(invoices[c]), c))[:count]
    offers = []
    for rank, code in enumerate(ranked, start=1):
        description = descriptions[code].most_common(1)[0][0]
        price = max(prices[code].items(), key=lambda kv: (kv[1], kv[0]))[0]
        h = _hash(code)
        discount = 10 + h % 11
        promo = max(0.01, round(price * (100 - discount) / 100, 2))
        if promo >= price:
            promo = round(price - 0.01, 2)
        title = title_of(description)
        offer = {
            "offer_id": f"uci-{code}",
            "title": title,
            "body": f"{title}: now £{promo:.2f} instead of £{price:.2f}",
            "item_ids": [code],
            "category": category_of(description),
            "price": price,
            "promo_price": promo,
            "currency": "GBP",
            "valid_from_days": 3 + h % 5 if rank % 30 == 0 else -(h % 7),
            "valid_to_days": 14 + h % 30,
            "priority": 2 if rank <= 30 else 1 if rank <= 100 else 0,
            "fulfilment": "in_store",
        }
        if rank % 20 == 0:
            offer["min_stock"] = 3 + h % 8
        if rank % 15 == 0:
            offer["fulfilment"] = "click_and_collect"
        elif rank % 40 == 0:
            offer["fulfilment"] = "reservation"
        elif rank % 50 == 0:
            offer["fulfilment"] = "online"
            offer["channels"] = ["web", "app", "email"]
        offers.append(offer)
    return offers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    offers = build(args.source, args.count)
    doc = {
        "source": "UCI Machine Learning Repository, Online Retail (id 352), Chen, D. (2015), "
                  "https://doi.org/10.24432/C5BW33, CC BY 4.0",
        "generated_by": "python -m vicino.services.launcher.build_demo_offers",
        "validity": "valid_from_days and valid_to_days count days from the moment the demo is loaded",
        "offers": offers,
    }
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"{len(offers)} offers written to {args.out} ({args.out.stat().st_size // 1024} KB); categories: "
          f"{dict(Counter(o['category'] for o in offers).most_common())}")


if __name__ == "__main__":
    main()
