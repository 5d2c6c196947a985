"""What the tests, the benchmarks and the load tests all run the stack against: the protocol-
faithful local push providers (`push_servers`) and `vicino serve` as a process (`processes`).
Not installed, never imported by the product; tests/, bench/ and loadtests/ import it, so that
no tooling reaches into tests/.
"""
