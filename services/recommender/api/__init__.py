"""HTTP API of the recommender service."""
