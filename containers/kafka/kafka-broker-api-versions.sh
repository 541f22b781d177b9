#!/bin/sh
# The official image's health-check tool, at the same path.
exec java -Xmx128m -cp "/opt/kafka/libs/*" -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
