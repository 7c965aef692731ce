"""数据资源: the data resource catalogue (一池汇聚), open data (CKAN Action API v3, DCAT-AP 3, downloads,
30-day snapshots) and the governance around them.

One domain rather than `governance/` plus `opendata/`: open data is a view over the catalogue (the same
datasets, fields, classes, versions and rows, read under the open tiers), so two domains would either
import each other's service, which the house rules forbid, or copy the catalogue through the hub.
"""
