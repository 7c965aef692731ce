"""The NGSI-LD API at /ngsi-ld/v1 (ETSI GS CIM 009 v1.8.1): entities, batch, discovery, @contexts.

One module per part of the API: `entities` (/entities...), `batch` (/entityOperations/...),
`discovery` (/types, /attributes) and `contexts` (/jsonldContexts), each with its own router;
`common`, `views` and `query` hold what they share. Every name this module had before the split is
still importable from here (the app, the subscription, registration and temporal APIs use them).
"""

from __future__ import annotations

from fastapi import APIRouter

from cityos.hub.api import batch, contexts, discovery, entities
from cityos.hub.api.batch import batch_create, batch_delete, batch_merge, batch_query, batch_update, batch_upsert
from cityos.hub.api.common import (
    BATCH_BODY,
    DELETE,
    ENTITY_BODY,
    ENTITY_SCHEMA,
    FRAGMENT_BODY,
    ID_LIST_BODY,
    PREFIX,
    QUERY_PARAMS,
    READ,
    READ_PARAMS,
    TENANT,
    WRITE,
    Hub,
    hub_of,
)
from cityos.hub.api.contexts import add_context, drop_context, get_context, list_contexts
from cityos.hub.api.discovery import attribute_info, list_attributes, list_types, type_info
from cityos.hub.api.entities import (
    PURGE_SELECTORS,
    append_attrs,
    create_entity,
    delete_attr,
    delete_entity,
    merge_entity,
    patch_attr,
    purge_entities,
    query_entities,
    replace_attr,
    replace_entity,
    retrieve_entity,
    update_attrs,
    visible_record,
)
from cityos.hub.api.query import QUERY_SELECTORS, build_query, query_body_params, require_selector, respond_entities
from cityos.hub.api.views import (
    FORMATS,
    Instances,
    View,
    entity_out,
    geojson_feature,
    joined,
    linked_view,
    linker_for,
    only_datasets,
    shows,
    view_of,
)

# The app includes this one router. Its parts come in the order their routes had when they were one
# module, so the route table and the OpenAPI document read as before (Starlette serves the first
# route that matches; the parts' paths do not overlap, but their order is kept all the same).
router = APIRouter()
for _part in (entities, batch, discovery, contexts):
    router.include_router(_part.router)

__all__ = [
    "BATCH_BODY",
    "DELETE",
    "ENTITY_BODY",
    "ENTITY_SCHEMA",
    "FORMATS",
    "FRAGMENT_BODY",
    "ID_LIST_BODY",
    "PREFIX",
    "PURGE_SELECTORS",
    "QUERY_PARAMS",
    "QUERY_SELECTORS",
    "READ",
    "READ_PARAMS",
    "TENANT",
    "WRITE",
    "Hub",
    "Instances",
    "View",
    "add_context",
    "append_attrs",
    "attribute_info",
    "batch_create",
    "batch_delete",
    "batch_merge",
    "batch_query",
    "batch_update",
    "batch_upsert",
    "build_query",
    "create_entity",
    "delete_attr",
    "delete_entity",
    "drop_context",
    "entity_out",
    "geojson_feature",
    "get_context",
    "hub_of",
    "joined",
    "linked_view",
    "linker_for",
    "list_attributes",
    "list_contexts",
    "list_types",
    "merge_entity",
    "only_datasets",
    "patch_attr",
    "purge_entities",
    "query_body_params",
    "query_entities",
    "replace_attr",
    "replace_entity",
    "require_selector",
    "respond_entities",
    "retrieve_entity",
    "router",
    "shows",
    "type_info",
    "update_attrs",
    "view_of",
    "visible_record",
]
