"""Edges of the geo service: Redis repositories for stores, devices, consent and device state."""
