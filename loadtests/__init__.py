"""Load tests of the whole stack: locust users (`locustfile.py`), their movement (`mobility.py`)
and the runner that starts the stack, runs locust and writes the report (`run.py`)."""
