"""一网通办: one-stop government services (catalogue, applications, BPMN workflows, deadlines)."""
