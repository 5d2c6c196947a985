"""The composition root of the periodic jobs: every service's jobs in one list, for the
scheduler (`vicino serve scheduler`) and `vicino jobs`. Services never import each other; this
module, like the CLI, sits above them."""
from __future__ import annotations

from vicino.services.kernel.jobs import JobDefinition
from vicino.services.recommender.jobs import recommender_jobs
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.scheduler.settings import SchedulerSettings
from vicino.services.scheduler.use_cases.housekeeping import housekeeping_jobs


def all_jobs(scheduler: SchedulerSettings, recommender: RecommenderSettings) -> list[JobDefinition]:
    return housekeeping_jobs(scheduler) + recommender_jobs(recommender)
