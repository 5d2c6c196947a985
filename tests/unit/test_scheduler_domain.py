"""The scheduler's pure rules: schedules and occurrences, run records, stream housekeeping."""
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from vicino.services.scheduler.domain.runs import JobRun
from vicino.services.scheduler.domain.schedules import Schedule, ScheduleError
from vicino.services.scheduler.domain.stream_housekeeping import (ConsumerState, GroupState, PendingEntry, consumed_below,
                                                           departed_consumers, next_id, stuck_entries, trim_bound)

UTC = timezone.utc


@pytest.mark.parametrize("text,shown", [("every 5m", "every 5m"), ("EVERY  300s", "every 5m"), ("every 90s", "every 90s"),
                                        ("every 2h", "every 2h"), ("every 1d", "every 1d"),
                                        ("daily 03:30", "daily 03:30"), ("off", "off")])
def test_schedules_parse_and_print(text, shown):
    assert str(Schedule.parse(text)) == shown


@pytest.mark.parametrize("text", ["", "hourly", "every 5", "every 0m", "every 5s", "daily 24:00", "daily 3:30",
                                  "every -1m", "cron * * * * *"])
def test_bad_schedules_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ScheduleError, match="every|shortest"):
        Schedule.parse(text)


def test_every_occurrences_are_wall_clock_multiples_so_replicas_agree():
    s = Schedule.parse("every 5m")
    t = datetime(2026, 11, 26, 10, 5, 0, tzinfo=UTC).timestamp()
    # fired a little late on one replica, later on another: the same occurrence
    assert s.occurrence(t + 0.2, UTC) == s.occurrence(t + 59, UTC) == str(int(t))
    assert s.occurrence(t - 0.1, UTC) != s.occurrence(t, UTC)


def test_daily_occurrence_is_the_local_date_of_the_latest_scheduled_time():
    s = Schedule.parse("daily 03:30")
    rome = ZoneInfo("Europe/Rome")
    at = datetime(2026, 11, 26, 3, 30, 5, tzinfo=rome).timestamp()
    assert s.occurrence(at, rome) == "2026-11-26"
    # before 03:30 local the latest occurrence is yesterday's
    assert s.occurrence(datetime(2026, 11, 26, 3, 0, tzinfo=rome).timestamp(), rome) == "2026-11-25"
    # 02:45 UTC is 03:45 in Rome: today's there, yesterday's in UTC
    t = datetime(2026, 11, 26, 2, 45, tzinfo=UTC).timestamp()
    assert (s.occurrence(t, rome), s.occurrence(t, UTC)) == ("2026-11-26", "2026-11-25")


def test_next_occurrence_is_the_schedules_own_across_midnight_and_dst():
    assert Schedule.parse("every 5m").next_at(1_000_000_000.0, timezone.utc) == 1_000_000_200
    assert Schedule.parse("every 5m").next_at(1_000_000_200.0, timezone.utc) == 1_000_000_500  # strictly after
    rome = ZoneInfo("Europe/Rome")
    daily = Schedule.parse("daily 03:30")
    before = datetime(2026, 3, 28, 12, 0, tzinfo=rome).timestamp()  # the night DST starts follows
    assert datetime.fromtimestamp(daily.next_at(before, rome), rome) == datetime(2026, 3, 29, 3, 30, tzinfo=rome)
    early = datetime(2026, 7, 1, 2, 0, tzinfo=rome).timestamp()
    assert datetime.fromtimestamp(daily.next_at(early, rome), rome) == datetime(2026, 7, 1, 3, 30, tzinfo=rome)
    assert Schedule.parse("off").next_at(before, rome) is None


def test_off_has_no_occurrence():
    with pytest.raises(ScheduleError):
        Schedule.parse("off").occurrence(0, UTC)


def test_a_running_run_without_its_lock_is_lost():
    run = JobRun("j", "r1", "schedule", "h", 100.0)
    assert run.as_seen(lock_held=True).outcome == "running"
    assert run.as_seen(lock_held=False).outcome == "lost"
    ended = run.finished(103.5, {"n": 1})
    assert ended.as_seen(lock_held=False).outcome == "ok" and ended.duration_s == 3.5
    failed = run.failed(101.0, ValueError("x" * 5000))
    assert failed.outcome == "failed" and failed.error.startswith("ValueError: x") and len(failed.error) == 2000
    assert JobRun.from_dict(failed.to_dict()) == failed


def test_consumed_bound_is_the_oldest_pending_or_past_the_last_delivered_of_every_group():
    groups = [GroupState("a", "100-5", None), GroupState("b", "90-0", "80-3")]
    assert consumed_below(groups, ("a", "b")) == ("80-3", None)
    assert consumed_below(groups, ("a",)) == ("100-6", None)
    assert next_id("7-0") == "7-1"
    minid, why = consumed_below(groups, ("a", "c"))
    assert minid is None and "c does not exist" in why
    # a group that has read nothing keeps everything
    assert consumed_below([GroupState("a", "0-0", None)], ("a",)) == ("0-1", None)


def test_trim_bound_takes_the_stricter_of_consumption_and_retention():
    now = 1_000.0
    assert trim_bound("500000-0", None, now) == "500000-0"
    assert trim_bound(None, 600.0, now) == "400000-0"
    assert trim_bound("500000-0", 600.0, now) == "400000-0"   # retention keeps more
    assert trim_bound("300000-2", 600.0, now) == "300000-2"   # pending keeps more
    assert trim_bound(None, None, now) is None
    assert trim_bound(None, 5_000.0, now) == "0-0"


def test_stuck_entries_split_by_deliveries_and_departed_consumers():
    pending = [PendingEntry("1-0", "c1", 700_000, 12), PendingEntry("2-0", "c1", 700_000, 3),
               PendingEntry("3-0", "c2", 1_000, 50)]
    bury, wait = stuck_entries(pending, stuck_after_ms=600_000, max_deliveries=10)
    assert [p.entry_id for p in bury] == ["1-0"] and [p.entry_id for p in wait] == ["2-0"]
    consumers = [ConsumerState("old", 0, 90_000_000), ConsumerState("busy", 2, 90_000_000),
                 ConsumerState("live", 0, 50)]
    assert departed_consumers(consumers, 86_400_000) == ["old"]
