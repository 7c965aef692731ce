"""智慧出行: public transport (GTFS) and journey planning for citizens.

Its own package rather than a `traffic/transit` sub-package: signal control and congestion manage
the road network for the city's operators, while transit timetables, journey planning and bike
share answer citizens' trip questions. The two share no tables and change for different reasons
(an operator's signal plan vs. an agency's new feed), so they are separate bounded contexts; they
meet on the hub (stops, routes and bike stations are published there as Smart Data Models entities).
"""
