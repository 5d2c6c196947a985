"""The shared kernel: only what crosses process boundaries (contracts, ids, clock, errors, auth)."""
