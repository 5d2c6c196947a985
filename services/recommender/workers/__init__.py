"""Background consumers of Redis streams (run as their own processes, never in web workers)."""
