"""The push gateway: delivers the recommender's push jobs through FCM, APNs, a signed webhook or
the log, once per visit, and keeps a receipt of every delivery."""
