"""Notifications to applicants: in-app inbox and pluggable SMS / email senders."""
