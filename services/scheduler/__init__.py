"""The scheduler: runs the periodic jobs of every service (retraining, export, erasures applied
to the Parquet log, stream housekeeping, KPI roll-ups) under a Redis lock per run, and shows
their runs at GET /v1/jobs."""
