"""The NGSI-LD temporal API (ETSI GS CIM 009 §5.6.11–§5.6.17, §5.7.3–§5.7.4) over `hub_attribute_history`.

- `models`: the registry of temporal evolutions without a current entity, and retention policies;
- `service`: parsing of temporal queries, reads (normalized, temporalValues, aggregatedValues) and writes;
- `api`: the router at /ngsi-ld/v1/temporal/entities and the retention admin endpoints;
- `retention`: the scheduled purge of expired history.
"""
