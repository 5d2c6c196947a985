"""Pure logic of the recommender: no I/O, no clock of its own."""
