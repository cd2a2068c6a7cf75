"""Ingest service: validates events against the Avro contract and puts them on Kafka."""
