#!/bin/bash
# Runs a Kafka class with the jars in /opt/kafka/libs (as the distribution's kafka-run-class.sh).
exec java ${KAFKA_TOOL_OPTS:--Xmx256m -XX:TieredStopAtLevel=1} \
  -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties -cp '/opt/kafka/libs/*' "$@"
