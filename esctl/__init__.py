"""Tools for people: `esctl`, the operator's CLI (one module per command group), and the local
launchers (`esctl.localstack`: Kafka, PostgreSQL and the services as local processes).

No service imports this package: it is what runs the system from a terminal, tests and
benchmarks, not what the services share (that is `shared`).
"""
