"""Operator tools on top of the services: the `crm` command, dataset replay and readers, the
demo stream, the local Kafka + Redis stack and reports. Tools import services; no service
imports tools."""
