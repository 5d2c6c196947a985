"""Tests that run the stack as processes: `vicino up`, every service served on its own, the load
smoke run, faults (SIGKILL, Redis restarts), the notebooks executed, schemathesis against served APIs."""
