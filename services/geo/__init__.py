"""The geo service: stores as geofences in an in-memory H3 index, device fixes to visit events."""
