#!/bin/sh
# Single-node KRaft broker configured like the official apache/kafka image: every environment
# variable KAFKA_X_Y becomes the property x.y ("__" stands for "_", "___" for "-"); without any,
# a broker+controller on :9092/:9093 advertised as localhost:9092.
set -eu
CONF=/opt/kafka/config/server.properties
mkdir -p /opt/kafka/config /var/lib/kafka/data
: > "$CONF"
env | grep '^KAFKA_' | grep -v '^KAFKA_\(HEAP_OPTS\|OPTS\|JVM_PERFORMANCE_OPTS\|LOG4J_OPTS\)=' \
  | while IFS='=' read -r name value; do
      key=$(echo "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
      echo "$key=$value" >> "$CONF"
    done
set_default() { grep -q "^$1=" "$CONF" || echo "$1=$2" >> "$CONF"; }
set_default node.id 1
set_default process.roles broker,controller
set_default listeners PLAINTEXT://:9092,CONTROLLER://:9093
set_default advertised.listeners PLAINTEXT://localhost:9092
set_default controller.listener.names CONTROLLER
set_default listener.security.protocol.map CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
set_default controller.quorum.voters 1@localhost:9093
set_default log.dirs /var/lib/kafka/data
set_default offsets.topic.replication.factor 1
set_default transaction.state.log.replication.factor 1
set_default transaction.state.log.min.isr 1
set_default share.coordinator.state.topic.replication.factor 1
set_default share.coordinator.state.topic.min.isr 1
set_default group.initial.rebalance.delay.ms 0
CP="/opt/kafka/libs/*"
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  java -Xmx256m -cp "$CP" kafka.tools.StorageTool format -t "${CLUSTER_ID:-4L6g3nShT-eMCtK--X86sw}" \
    -c "$CONF" --ignore-formatted
fi
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
  -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp "$CP" kafka.Kafka "$CONF"
