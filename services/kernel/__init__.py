"""The shared kernel: the pure contracts that cross process boundaries, and nothing that does I/O.

`contracts/` holds the versioned event and state schemas with their Redis key layout; beside it
the ids, the clock, the error tree (`problems`), the token formats (`auth`) and what a scheduled
job is (`jobs`). What services share at run time (Redis clients, the stream consumer, the HTTP
edge, observability) lives in `vicino.services.runtime`.
"""
