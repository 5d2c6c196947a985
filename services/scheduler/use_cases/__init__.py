"""What the scheduler does: run a job under its lock, and its own housekeeping jobs."""
