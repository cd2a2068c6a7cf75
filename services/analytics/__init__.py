"""Marketer analytics: stage history that scales (compressed bitmaps per stage and day)."""
