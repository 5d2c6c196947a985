"""Running Vicino on one machine: embedded Redis, `vicino up`, demo data, store files."""
