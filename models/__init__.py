"""The training library (LightFM over cross-channel history). Arrives with the recommender issue;
serving code never imports it."""
