"""HTTP edge of the geo service: routers, request/response schemas, validating dependencies."""
