"""Stager service: keeps each customer's state in Redis, places the customer in the stages of
every model (brand pyramid, AIPL, lifecycle, shopping path, value grid, SICAS) and emits stage
transitions."""
