"""Streaming CRM engine services."""
