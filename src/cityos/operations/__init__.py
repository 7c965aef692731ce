"""Operating the platform itself: backups and restores (metrics and readiness live in cityos.core)."""
