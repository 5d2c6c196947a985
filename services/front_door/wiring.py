"""The front door's composition root: each public service's app, as its own composition root
builds it, with what the front door must not run (the push worker, the scheduler's firing)
turned off: those run in their own processes."""
from __future__ import annotations

from fastapi import FastAPI

from .app import FrontDoor


def build_front_door(*, geo=None, recommender=None, push=None, scheduler=None) -> FrontDoor:
    """Settings of each service (None: read from the environment, as `vicino serve <service>`
    would). The scheduler's jobs API lists the job catalogue without firing any job."""
    from vicino.services.cli.job_catalog import all_jobs
    from vicino.services.geo.app import create_app as create_geo
    from vicino.services.geo.settings import GeoSettings
    from vicino.services.push_gateway.app import create_app as create_push
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.recommender.app import create_app as create_recommender
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.scheduler.app import create_app as create_scheduler
    from vicino.services.scheduler.settings import SchedulerSettings

    recommender = recommender or RecommenderSettings()
    scheduler = scheduler or SchedulerSettings()
    apps: dict[str, FastAPI] = {
        "geo": create_geo(geo or GeoSettings()),
        "recommender": create_recommender(recommender),
        "push": create_push(push or PushSettings(), run_worker=False),
        "scheduler": create_scheduler(scheduler, all_jobs(scheduler, recommender), run_schedule=False),
    }
    return FrontDoor(apps)
