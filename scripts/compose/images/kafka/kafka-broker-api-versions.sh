#!/bin/bash
exec /opt/kafka/bin/kafka-class.sh org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
