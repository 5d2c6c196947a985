"""Vicino: location-triggered, cross-channel offers for omnichannel retailers.

The one top-level package the distribution installs. Its code lives in the repository's own
folders, mapped by `package-dir` in pyproject.toml: `vicino.services` is `services/` (the geo
service, the recommender, the push gateway, the scheduler, the shared kernel and runtime, the
launcher and the CLI) and `vicino.models` is `models/` (the training library).
"""
