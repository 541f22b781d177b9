"""Command service: validates commands against aggregate state and appends events to Kafka."""
