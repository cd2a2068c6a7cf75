"""Triggers service: turns stage transitions, events and timers into marketing actions on the
trigger topics, within consent, frequency caps, quiet hours and control groups."""
