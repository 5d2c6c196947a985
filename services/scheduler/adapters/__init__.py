"""Redis at the edge: the run locks and run log, and the stream housekeeping commands."""
