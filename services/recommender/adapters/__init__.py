"""Redis, HTTP and file-system adapters of the recommender."""
