"""Incidents and work orders: routing, lifecycle, SLA clocks, escalation, reports."""
