"""The recommender service: the omnichannel data layer (customers and their identifiers,
interactions and hot history, the offer catalogue, store stock, campaign rules) and, on top of it,
the ranking of offers for a customer at a store."""
