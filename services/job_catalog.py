"""The composition root of the periodic jobs: every service's jobs in one list, for the
scheduler (`vicino serve scheduler`) and `vicino jobs`. Services never import each other; this
module, like the CLI, sits above them."""
from __future__ import annotations

from services.kernel.jobs import JobDefinition
from services.recommender.jobs import recommender_jobs
from services.recommender.settings import RecommenderSettings
from services.scheduler.settings import SchedulerSettings
from services.scheduler.use_cases.housekeeping import housekeeping_jobs


def all_jobs(scheduler: SchedulerSettings, recommender: RecommenderSettings) -> list[JobDefinition]:
    return housekeeping_jobs(scheduler) + recommender_jobs(recommender)
