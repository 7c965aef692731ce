"""一网统管: city operations (rules, alarms, incidents, SLAs, Open311, environment indices)."""
