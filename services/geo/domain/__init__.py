"""Pure geo logic: fences, the store index, visit transitions. No I/O here."""
