"""The connections service."""
