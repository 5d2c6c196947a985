"""Pure scheduling rules: schedules and their occurrences, run records, stream housekeeping."""
