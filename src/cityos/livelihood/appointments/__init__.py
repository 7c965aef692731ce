"""预约 (appointments): schedules, slots and bookings for hospital departments, vaccination sites and
service-hall windows, served as our JSON API and as FHIR R4 Schedule / Slot / Appointment resources."""
