/*
 * connectors/registry.c: the list of compiled-in connector types, and the
 * small accessors every connector uses. Adding a connector adds one line here.
 */
#include <string.h>

#include "connectors/connector.h"

extern const struct pb_connector_type pb_connector_opayo;
extern const struct pb_connector_type pb_connector_xero;
extern const struct pb_connector_type pb_connector_shopwebhook;
extern const struct pb_connector_type pb_connector_sagex3;
extern const struct pb_connector_type pb_connector_syspro;
extern const struct pb_connector_type pb_connector_paytrace;

const struct pb_connector_type *const pb_connector_types[] = {
    &pb_connector_opayo,
    &pb_connector_xero,
    &pb_connector_shopwebhook,
    &pb_connector_sagex3,
    &pb_connector_syspro,
    &pb_connector_paytrace,
    NULL,
};

const struct pb_connector_type *pb_connector_find(const char *name)
{
    for (size_t i = 0; pb_connector_types[i]; i++)
        if (strcmp(pb_connector_types[i]->name, name) == 0)
            return pb_connector_types[i];
    return NULL;
}

const char *pb_connection_setting(const struct pb_connection *c, const char *key, const char *def)
{
    json_t *v = c->settings ? json_object_get(c->settings, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : def;
}

long long pb_connection_setting_int(const struct pb_connection *c, const char *key, long long def)
{
    json_t *v = c->settings ? json_object_get(c->settings, key) : NULL;
    return json_is_integer(v) ? (long long)json_integer_value(v) : def;
}

const char *pb_connection_secret(const struct pb_connection *c, const char *key)
{
    json_t *v = c->secrets ? json_object_get(c->secrets, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

void pb_event_list_clear(struct pb_event_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        json_decref(l->ev[i].event);
        l->ev[i].event = NULL;
        free(l->ev[i].json);
        l->ev[i].json = NULL;
    }
    l->n = 0;
}

json_t *pb_sink_item_record(struct pb_sink_item *it)
{
    if (!it->result && it->result_json)
        it->result = json_loads(it->result_json, 0, NULL);
    return it->result;
}

json_t *pb_event_tree(struct pb_event_out *ev)
{
    if (!ev->event && ev->json)
        ev->event = json_loads(ev->json, 0, NULL);
    return ev->event;
}
