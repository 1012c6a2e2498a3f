/*
 * connectors/sagex3/sagex3_xml.c: Sage X3 object XML, both ways, built and
 * read with libxml2 only.
 *
 * Out: a mapped document in mirror form (sagex3_internal.h) becomes
 *
 *   <PARAM><GRP ID="SOH0_1"><FLD NAME="SALFCY">FR011</FLD>...</GRP>
 *          <TAB ID="SOH4_1"><LIN NUM="1"><FLD NAME="ITMREF">ITM-100</FLD>...</LIN></TAB>
 *          <GRP ID="X"><LST NAME="ADDLIG" SIZE="2"><ITM>..</ITM><ITM>..</ITM></LST></GRP>
 *   </PARAM>
 *
 * Every element and attribute is created through the tree API
 * (xmlNewTextChild, xmlNewProp) and serialised by xmlsave, so a value such
 * as `</FLD><FLD NAME="BPCNUM">X` or `]]>` is escaped and stays a value.
 * No text from a document, a setting or X3 is ever pasted into XML text.
 * Before that, every string is checked against XML 1.0's Char production:
 * a control character (U+0001, a form feed) cannot be carried by XML at all,
 * escaped or not, so it is refused as a mapping error naming the field
 * instead of making X3 answer a parse error about our envelope.
 *
 * Numbers: decimals are JSON strings and go out exactly as written; JSON
 * integers are written in full; a JSON real is refused (PB_ERR_MAPPING),
 * because a double near money is a bug in the flow. Booleans are refused
 * too: X3 local menus want their number (1 = No, 2 = Yes).
 *
 * In: replies are parsed with XML_PARSE_NONET, without entity substitution,
 * and any document that carries a DTD is refused (X3 never sends one; a DTD
 * is how entity-expansion bombs arrive). <RESULT> becomes mirror form again,
 * every value a string.
 *
 * Everything here is a pure function of its arguments; libxml2 documents are
 * private to the call. Rejected: building XML with snprintf and an escape
 * function (one missed call site is an injection), and CDATA for objectXml
 * ("]]>" in a value would end it; escaped text has no such hole).
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/xmlsave.h>

#include "sagex3_internal.h"

/* ---- text ------------------------------------------------------------------------ */

int pb__sagex3_xml_text_ok(const char *s, size_t n, unsigned long *bad_cp)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;

    while (p < end) {
        unsigned long cp;
        size_t k;
        if (p[0] < 0x80) {
            cp = p[0];
            k = 1;
        } else if ((p[0] & 0xe0) == 0xc0) {
            cp = p[0] & 0x1f;
            k = 2;
        } else if ((p[0] & 0xf0) == 0xe0) {
            cp = p[0] & 0x0f;
            k = 3;
        } else if ((p[0] & 0xf8) == 0xf0) {
            cp = p[0] & 0x07;
            k = 4;
        } else {
            cp = 0xfffd0000ul; /* not UTF-8 */
            k = 0;
        }
        if (k == 0 || (size_t)(end - p) < k)
            goto bad_utf8;
        for (size_t i = 1; i < k; i++) {
            if ((p[i] & 0xc0) != 0x80)
                goto bad_utf8;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            goto bad_utf8;
        if ((cp < 0x20 && cp != 0x9 && cp != 0xa && cp != 0xd) || cp == 0xfffe || cp == 0xffff) {
            if (bad_cp)
                *bad_cp = cp;
            return 0;
        }
        p += k;
    }
    return 1;
bad_utf8:
    if (bad_cp)
        *bad_cp = 0xfffd;
    return 0;
}

/* ---- JSON -> PARAM ----------------------------------------------------------------- */

struct out {
    size_t bytes; /* rough size so far, to stop early */
    struct pb_err *err;
};

static enum pb_rc check_text(struct out *o, const char *where, const char *s, size_t n)
{
    unsigned long cp = 0;
    if (strlen(s) != n)
        return pb_err_set(o->err, PB_ERR_MAPPING,
                          "%s contains a NUL character, which XML cannot carry", where);
    if (!pb__sagex3_xml_text_ok(s, n, &cp))
        return pb_err_set(o->err, PB_ERR_MAPPING,
                          "%s contains the character U+%04lX, which XML 1.0 cannot carry (not "
                          "even escaped): clean the value in the flow",
                          where, cp);
    o->bytes += n;
    if (o->bytes > SAGEX3_OBJECT_XML_MAX)
        return pb_err_set(o->err, PB_ERR_TOOBIG, "the document is larger than %zu bytes",
                          (size_t)SAGEX3_OBJECT_XML_MAX);
    return PB_OK;
}

/* The text of a scalar value; NULL with err set when it cannot be one. */
static const char *scalar_text(struct out *o, const char *where, const json_t *v, char *buf,
                               size_t len)
{
    if (json_is_string(v)) {
        if (check_text(o, where, json_string_value(v), json_string_length(v)))
            return NULL;
        return json_string_value(v);
    }
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_real(v))
        pb_err_set(o->err, PB_ERR_MAPPING,
                   "%s is a JSON number with a fraction: write decimals as text (\"10.99\") so "
                   "that no double holds an amount",
                   where);
    else if (json_is_boolean(v))
        pb_err_set(o->err, PB_ERR_MAPPING,
                   "%s is a boolean: X3 local menus take their number (1 = No, 2 = Yes)", where);
    else
        pb_err_set(o->err, PB_ERR_MAPPING, "%s must be text, an integer or a list of those", where);
    return NULL;
}

static enum pb_rc add_fields(struct out *o, xmlNodePtr parent, const json_t *fields,
                             const char *path)
{
    const char *name;
    json_t *v;
    char where[160], num[32];

    json_object_foreach((json_t *)fields, name, v)
    {
        snprintf(where, sizeof where, "field %s.%.40s", path, name);
        if (!pb__sagex3_valid_id(name))
            return pb_err_set(o->err, PB_ERR_MAPPING,
                              "%s: not an X3 field name (upper-case letter, then upper-case "
                              "letters, digits or '_', at most %d)",
                              where, SAGEX3_ID_MAX);
        if (json_is_null(v))
            continue;
        if (json_is_array(v)) {
            xmlNodePtr lst = xmlNewChild(parent, NULL, BAD_CAST "LST", NULL);
            size_t i;
            json_t *item;
            if (!lst || !xmlNewProp(lst, BAD_CAST "NAME", BAD_CAST name))
                return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
            snprintf(num, sizeof num, "%zu", json_array_size(v));
            if (!xmlNewProp(lst, BAD_CAST "SIZE", BAD_CAST num))
                return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
            json_array_foreach(v, i, item)
            {
                char iwhere[200];
                const char *text;
                snprintf(iwhere, sizeof iwhere, "%s[%zu]", where, i);
                if (!(text = scalar_text(o, iwhere, item, num, sizeof num)))
                    return o->err->rc;
                if (!xmlNewTextChild(lst, NULL, BAD_CAST "ITM", BAD_CAST text))
                    return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
            }
        } else {
            const char *text = scalar_text(o, where, v, num, sizeof num);
            xmlNodePtr fld;
            if (!text)
                return o->err->rc;
            fld = xmlNewTextChild(parent, NULL, BAD_CAST "FLD", BAD_CAST text);
            if (!fld || !xmlNewProp(fld, BAD_CAST "NAME", BAD_CAST name))
                return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
        }
    }
    return PB_OK;
}

static enum pb_rc add_member(struct out *o, xmlNodePtr root, const char *id, const json_t *v)
{
    char path[96], num[32];
    enum pb_rc rc;

    if (!pb__sagex3_valid_id(id))
        return pb_err_set(o->err, PB_ERR_MAPPING,
                          "document member \"%.40s\": not an X3 group or table id (upper-case "
                          "letter, then upper-case letters, digits or '_', at most %d; the only "
                          "lower-case member is \"x3\")",
                          id, SAGEX3_ID_MAX);
    if (json_is_object(v)) {
        xmlNodePtr grp = xmlNewChild(root, NULL, BAD_CAST "GRP", NULL);
        if (!grp || !xmlNewProp(grp, BAD_CAST "ID", BAD_CAST id))
            return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
        return add_fields(o, grp, v, id);
    }
    if (json_is_array(v)) {
        xmlNodePtr tab = xmlNewChild(root, NULL, BAD_CAST "TAB", NULL);
        size_t i;
        json_t *line;
        if (!tab || !xmlNewProp(tab, BAD_CAST "ID", BAD_CAST id))
            return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
        snprintf(num, sizeof num, "%zu", json_array_size(v));
        if (!xmlNewProp(tab, BAD_CAST "SIZE", BAD_CAST num))
            return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
        json_array_foreach(v, i, line)
        {
            xmlNodePtr lin;
            snprintf(path, sizeof path, "%s[%zu]", id, i);
            if (!json_is_object(line))
                return pb_err_set(o->err, PB_ERR_MAPPING,
                                  "%s: a table line must be an object of fields", path);
            lin = xmlNewChild(tab, NULL, BAD_CAST "LIN", NULL);
            snprintf(num, sizeof num, "%zu", i + 1);
            if (!lin || !xmlNewProp(lin, BAD_CAST "NUM", BAD_CAST num))
                return pb_err_set(o->err, PB_ERR_NOMEM, "out of memory");
            if ((rc = add_fields(o, lin, line, path)))
                return rc;
        }
        return PB_OK;
    }
    if (json_is_null(v))
        return PB_OK;
    return pb_err_set(o->err, PB_ERR_MAPPING,
                      "document member %s must be an object (an X3 group of fields) or an array "
                      "of objects (a table of lines)",
                      id);
}

enum pb_rc pb__sagex3_param_xml(const json_t *doc, char **xml_out, struct pb_err *err)
{
    struct pb_err local;
    struct out o = {0, err ? err : &local};
    xmlDocPtr d = NULL;
    xmlNodePtr root;
    xmlBufferPtr buf = NULL;
    xmlSaveCtxtPtr save;
    const char *key;
    json_t *v;
    enum pb_rc rc = PB_OK;

    *xml_out = NULL;
    err = o.err;
    if (!json_is_object(doc))
        return pb_err_set(err, PB_ERR_MAPPING, "the document must be a JSON object of X3 groups");
    d = xmlNewDoc(BAD_CAST "1.0");
    root = d ? xmlNewNode(NULL, BAD_CAST "PARAM") : NULL;
    if (!root) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    xmlDocSetRootElement(d, root);
    json_object_foreach((json_t *)doc, key, v)
    {
        if (strcmp(key, "x3") == 0)
            continue;
        if ((rc = add_member(&o, root, key, v)))
            goto out;
    }
    buf = xmlBufferCreate();
    save = buf ? xmlSaveToBuffer(buf, "UTF-8", XML_SAVE_NO_DECL) : NULL;
    if (!save) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
        goto out;
    }
    xmlSaveTree(save, root);
    if (xmlSaveClose(save) < 0 || !xmlBufferContent(buf)) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "cannot serialise the object XML");
        goto out;
    }
    if ((size_t)xmlBufferLength(buf) > SAGEX3_OBJECT_XML_MAX) {
        rc = pb_err_set(err, PB_ERR_TOOBIG, "the object XML is larger than %zu bytes",
                        (size_t)SAGEX3_OBJECT_XML_MAX);
        goto out;
    }
    *xml_out = strdup((const char *)xmlBufferContent(buf));
    if (!*xml_out)
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
out:
    if (buf)
        xmlBufferFree(buf);
    if (d)
        xmlFreeDoc(d);
    return rc;
}

/* ---- reading ----------------------------------------------------------------------- */

xmlDocPtr pb__sagex3_xml_parse(const char *text, size_t len, char *why, size_t why_len)
{
    xmlParserCtxtPtr p;
    xmlDocPtr d;

    why[0] = '\0';
    if (len > INT_MAX) {
        snprintf(why, why_len, "larger than %d bytes", INT_MAX);
        return NULL;
    }
    p = xmlNewParserCtxt();
    if (!p) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    d = xmlCtxtReadMemory(p, text, (int)len, NULL, NULL,
                          XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING |
                              XML_PARSE_NOCDATA);
    if (!d) {
        xmlErrorPtr e = xmlCtxtGetLastError(p);
        if (e && e->message) {
            size_t n;
            snprintf(why, why_len, "line %d: %s", e->line, e->message);
            n = strlen(why);
            while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == ' '))
                why[--n] = '\0';
        } else {
            snprintf(why, why_len, "not well-formed XML");
        }
    } else if (d->intSubset || !xmlDocGetRootElement(d)) {
        snprintf(why, why_len, d->intSubset ? "a DTD is not accepted" : "no root element");
        xmlFreeDoc(d);
        d = NULL;
    }
    xmlFreeParserCtxt(p);
    return d;
}

const char *pb__sagex3_local_name(const xmlNode *n)
{
    return n && n->type == XML_ELEMENT_NODE && n->name ? (const char *)n->name : "";
}

xmlNode *pb__sagex3_child(const xmlNode *parent, const char *name)
{
    for (xmlNode *k = parent ? parent->children : NULL; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && (!name || strcmp((const char *)k->name, name) == 0))
            return k;
    return NULL;
}

char *pb__sagex3_text(const xmlNode *n)
{
    xmlChar *raw = n ? xmlNodeGetContent(n) : NULL;
    const char *s = raw ? (const char *)raw : "";
    size_t len;
    char *out;

    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    len = strlen(s);
    while (len > 0 &&
           (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    out = strndup(s, len);
    if (raw)
        xmlFree(raw);
    return out;
}

/* An attribute's value as a malloc'd string ("" when absent). */
static char *attr(const xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetProp(n, BAD_CAST name);
    char *out = strdup(v ? (const char *)v : "");
    if (v)
        xmlFree(v);
    return out;
}

/* A field's text exactly as sent (no trimming: an X3 value keeps its spaces). */
static json_t *field_value(const xmlNode *n)
{
    xmlChar *raw = xmlNodeGetContent(n);
    json_t *v = json_string(raw ? (const char *)raw : "");
    if (raw)
        xmlFree(raw);
    return v;
}

/* {NAME: text} for the FLD and LST children of a GRP or a LIN. */
static json_t *fields_json(const xmlNode *parent)
{
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (xmlNode *k = parent->children; k; k = k->next) {
        const char *ln = pb__sagex3_local_name(k);
        char *name;
        json_t *v = NULL;
        if (strcmp(ln, "FLD") != 0 && strcmp(ln, "LST") != 0)
            continue;
        name = attr(k, "NAME");
        if (!name)
            continue;
        if (ln[0] == 'F') {
            v = field_value(k);
        } else {
            v = json_array();
            for (xmlNode *i = k->children; v && i; i = i->next)
                if (strcmp(pb__sagex3_local_name(i), "ITM") == 0)
                    json_array_append_new(v, field_value(i));
        }
        if (name[0] && v)
            json_object_set_new(obj, name, v);
        else
            json_decref(v);
        free(name);
    }
    return obj;
}

json_t *pb__sagex3_result_json(const xmlNode *root)
{
    json_t *out = json_object(), *lines = NULL;
    if (!out || !root)
        return out;
    for (xmlNode *k = root->children; k; k = k->next) {
        const char *ln = pb__sagex3_local_name(k);
        char *id;
        if (strcmp(ln, "GRP") == 0 || strcmp(ln, "TAB") == 0) {
            json_t *v;
            id = attr(k, "ID");
            if (!id)
                continue;
            if (ln[0] == 'G') {
                v = fields_json(k);
            } else {
                v = json_array();
                for (xmlNode *l = k->children; v && l; l = l->next)
                    if (strcmp(pb__sagex3_local_name(l), "LIN") == 0)
                        json_array_append_new(v, fields_json(l));
            }
            if (v)
                json_object_set_new(out, id[0] ? id : "_", v);
            free(id);
        } else if (strcmp(ln, "LIN") == 0) {
            if (!lines) {
                lines = json_array();
                json_object_set_new(out, "lines", lines);
            }
            json_array_append_new(lines, fields_json(k));
        } else if (strcmp(ln, "FLD") == 0) {
            id = attr(k, "NAME");
            if (id && id[0])
                json_object_set_new(out, id, field_value(k));
            free(id);
        }
    }
    return out;
}

json_t *pb__sagex3_query_lines(const xmlNode *root)
{
    json_t *lines = json_array();
    for (xmlNode *k = root ? root->children : NULL; lines && k; k = k->next) {
        const char *ln = pb__sagex3_local_name(k);
        if (strcmp(ln, "LIN") == 0) {
            json_array_append_new(lines, fields_json(k));
        } else if (strcmp(ln, "TAB") == 0) {
            for (xmlNode *l = k->children; l; l = l->next)
                if (strcmp(pb__sagex3_local_name(l), "LIN") == 0)
                    json_array_append_new(lines, fields_json(l));
        }
    }
    return lines;
}

static const char *value_text(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v) && json_string_value(v)[0])
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    return NULL;
}

const char *pb__sagex3_field(const json_t *mirror, const char *name, char *buf, size_t len)
{
    const char *key, *s;
    json_t *v;

    json_object_foreach((json_t *)mirror, key, v)
    {
        if (json_is_object(v) && (s = value_text(json_object_get(v, name), buf, len)))
            return s;
    }
    return value_text(json_object_get(mirror, name), buf, len);
}
