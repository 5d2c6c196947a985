"""What the services share at run time, as opposed to the contracts they speak (`kernel`):
opening Redis (standalone or Cluster), the lean pipelined client of the hot paths, the stream
consumer of every background worker, the HTTP edge (problem+json, body limits, metrics,
health), observability, the settings every service starts from, and calls to another service's
HTTP API. Services import it; it imports only the kernel, never a service.
"""
