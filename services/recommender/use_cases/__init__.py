"""Use cases: load state, call the pure core, save and publish."""
