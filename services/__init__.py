"""Vicino services: geo, and the shared kernel they speak through.

Each service is a package with the same vocabulary (app, settings, domain, adapters, api);
services never import each other, only `vicino.services.kernel`.
"""
