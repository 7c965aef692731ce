"""Resident and enterprise profiles assembled from department records shared with this domain."""
