"""Real infrastructure as local processes, for machines without Docker.

`kafka`: an Apache Kafka broker (KRaft) resolved from Maven Central and run with the local Java.
`postgres`: Debian's PostgreSQL, installed when missing and run on loopback.
"""
