"""Rules over live hub data and the alarms they raise."""
