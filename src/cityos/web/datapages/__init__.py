"""The data pages (一池汇聚): the open-data portal for everyone, sharing between departments for officials,
and quality and lineage for the data office. Importing this package registers the pages."""

from cityos.web.datapages import keys, office, opendata, sharing

__all__ = ["keys", "office", "opendata", "sharing"]
