"""Versioned contracts between services: the only shapes that cross a process boundary."""
