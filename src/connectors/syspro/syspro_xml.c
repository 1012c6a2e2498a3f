/*
 * connectors/syspro/syspro_xml.c: business-object XML in and out, with
 * libxml2 and nothing else.
 *
 * Out. A mapped document is JSON; pb__syspro_xml_add() turns it into
 * elements with xmlNewTextChild(), so every value is escaped by libxml2 when
 * the tree is serialised ("<&>" goes out as "&lt;&amp;&gt;"); no XML is ever
 * made by pasting strings together. The rules, which docs/connectors.md
 * repeats for flow authors:
 *   string         the element's text (control characters other than tab,
 *                  CR and LF are refused: XML 1.0 cannot carry them)
 *   integer        its digits
 *   true / false   Y / N, SYSPRO's flags
 *   null           left out (a jq `clean` that found nothing)
 *   object         an element with the members as children, in order
 *   array          the element repeated, once per entry
 *   real number    refused, PB_ERR_MAPPING: money and quantities travel as
 *                  decimal text ("10.99") so that no double touches them
 * Element names must be XML names of at most 64 characters.
 * pb__syspro_xml_dump() writes the root element as UTF-8 without a
 * declaration; the query string is UTF-8 and the service decodes it so.
 *
 * In. SYSPRO answers XML that is often Windows-1252 and sometimes has no
 * declaration. pb__syspro_xml_parse_reply() picks the encoding in this
 * order: the XML declaration's (libxml2 honours it), a byte-order mark, the
 * Content-Type charset, UTF-8 when the bytes are valid UTF-8, and otherwise
 * Windows-1252 (SYSPRO's code page; "£" is the single byte 0xA3, which is
 * never valid UTF-8 on its own). Parsing never touches the network and never
 * substitutes entities from a DTD (no XML_PARSE_NOENT / DTDLOAD), so a
 * hostile reply cannot read files or fetch URLs. Text read from the tree is
 * UTF-8.
 *
 * Some business objects answer in lower-case element names (<postarpayment>,
 * <errordescription>), so every look-up here ignores case.
 *
 * A 200 is not success: pb__syspro_reply_refused() says a reply carries a
 * business error when it has a non-empty ErrorDescription, an ErrorNumber
 * other than 0, or a RecordsInvalid / ItemsInvalid above 0, anywhere.
 *
 * Threading: libxml2 is initialised once (pb__syspro_xml_init, from init on
 * the main thread, as libxml2 asks); after that every function here works on
 * trees private to the calling thread. Parse errors are silenced per call
 * (XML_PARSE_NOERROR), never through libxml2's global handlers.
 */
#include <ctype.h>
#include <libxml/parser.h>
#include <libxml/xmlsave.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/pan.h"
#include "core/utf8.h"
#include "syspro_internal.h"

#define XML_DEPTH_MAX 8   /* nesting of a mapped document */
#define JSON_DEPTH_MAX 16 /* nesting of a reply turned into JSON */
#define NAME_MAX_LEN 64

void pb__syspro_xml_init(void)
{
    xmlInitParser();
}

xmlDocPtr pb__syspro_xml_new(const char *root_name, xmlNodePtr *root_out)
{
    xmlDocPtr doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr root;
    if (!doc)
        return NULL;
    root = xmlNewNode(NULL, BAD_CAST root_name);
    if (!root) {
        xmlFreeDoc(doc);
        return NULL;
    }
    xmlDocSetRootElement(doc, root);
    *root_out = root;
    return doc;
}

static int xml_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.'))
            return 0;
    return 1;
}

static int text_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r')
            return 0;
    return 1;
}

static enum pb_rc add_value(xmlNodePtr parent, const char *name, json_t *v, const char *path,
                            int depth, int in_array, struct pb_err *err)
{
    char text[32];
    xmlNodePtr node;

    if (!xml_name_ok(name))
        return pb_err_set(err, PB_ERR_MAPPING,
                          "%s: \"%.64s\" is not an XML element name (letters, digits, '_', '-', "
                          "'.'; starting with a letter or '_'; at most %d characters)",
                          path, name, NAME_MAX_LEN);
    if (depth > XML_DEPTH_MAX)
        return pb_err_set(err, PB_ERR_MAPPING, "%s: nested deeper than %d levels", path,
                          XML_DEPTH_MAX);
    switch (json_typeof(v)) {
    case JSON_NULL:
        return PB_OK;
    case JSON_STRING:
        if (!text_ok(json_string_value(v)))
            return pb_err_set(err, PB_ERR_MAPPING,
                              "%s: contains a control character, which XML cannot carry", path);
        node = xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST json_string_value(v));
        break;
    case JSON_INTEGER:
        snprintf(text, sizeof text, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        node = xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST text);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        node = xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST(json_is_true(v) ? "Y" : "N"));
        break;
    case JSON_REAL:
        return pb_err_set(err, PB_ERR_MAPPING,
                          "%s: a number with a fraction; write decimals as text (\"10.99\"), so "
                          "that no double touches money or quantities",
                          path);
    case JSON_OBJECT:
        node = xmlNewChild(parent, NULL, BAD_CAST name, NULL);
        if (!node)
            break;
        {
            const char *key;
            json_t *m;
            json_object_foreach(v, key, m)
            {
                char sub[256];
                enum pb_rc rc;
                snprintf(sub, sizeof sub, "%s.%s", path, key);
                rc = add_value(node, key, m, sub, depth + 1, 0, err);
                if (rc)
                    return rc;
            }
        }
        return PB_OK;
    case JSON_ARRAY:
        if (in_array)
            return pb_err_set(err, PB_ERR_MAPPING, "%s: an array inside an array has no XML form",
                              path);
        {
            size_t i;
            json_t *m;
            json_array_foreach(v, i, m)
            {
                char sub[256];
                enum pb_rc rc;
                snprintf(sub, sizeof sub, "%s[%zu]", path, i);
                rc = add_value(parent, name, m, sub, depth + 1, 1, err);
                if (rc)
                    return rc;
            }
        }
        return PB_OK;
    default:
        return pb_err_set(err, PB_ERR_MAPPING, "%s: unsupported JSON value", path);
    }
    if (!node)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory building XML");
    return PB_OK;
}

enum pb_rc pb__syspro_xml_add(xmlNodePtr parent, const char *name, json_t *v, const char *path,
                              struct pb_err *err)
{
    return add_value(parent, name, v, path, 0, 0, err);
}

enum pb_rc pb__syspro_xml_add_members(xmlNodePtr parent, json_t *obj, const char *const *skip,
                                      const char *path, struct pb_err *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        char sub[256];
        int skipped = 0;
        enum pb_rc rc;
        for (size_t i = 0; skip && skip[i]; i++)
            skipped |= strcasecmp(skip[i], key) == 0;
        if (skipped)
            continue;
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        rc = add_value(parent, key, v, sub, 1, 0, err);
        if (rc)
            return rc;
    }
    return PB_OK;
}

xmlNodePtr pb__syspro_xml_set(xmlNodePtr parent, const char *name, const char *text)
{
    xmlNodePtr n = pb__syspro_child(parent, name);
    xmlChar *escaped;
    if (!n)
        return xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST text);
    /* xmlNodeSetContent() takes escaped text: escape it the libxml2 way */
    escaped = xmlEncodeSpecialChars(parent->doc, BAD_CAST text);
    if (!escaped)
        return NULL;
    xmlNodeSetContent(n, escaped);
    xmlFree(escaped);
    return n;
}

char *pb__syspro_xml_dump(xmlDocPtr doc)
{
    xmlBufferPtr buf = xmlBufferCreate();
    xmlNodePtr root = xmlDocGetRootElement(doc);
    char *out = NULL;
    int n;

    if (!buf || !root) {
        if (buf)
            xmlBufferFree(buf);
        return NULL;
    }
    n = xmlNodeDump(buf, doc, root, 0, 0);
    if (n > 0 && (size_t)n < SYSPRO_XML_MAX)
        out = strdup((const char *)xmlBufferContent(buf));
    xmlBufferFree(buf);
    return out;
}

/* ---- replies ------------------------------------------------------------------------ */

/* Does the body open with an XML declaration that names an encoding? */
static int declares_encoding(const char *body, size_t len)
{
    size_t i = 0, end;
    if (len >= 3 && (unsigned char)body[0] == 0xEF && (unsigned char)body[1] == 0xBB &&
        (unsigned char)body[2] == 0xBF)
        i = 3;
    if (len - i < 5 || strncmp(body + i, "<?xml", 5) != 0)
        return 0;
    for (end = i; end + 1 < len && end < i + 256; end++)
        if (body[end] == '?' && body[end + 1] == '>')
            break;
    for (size_t j = i; j + 8 <= end; j++)
        if (strncmp(body + j, "encoding", 8) == 0)
            return 1;
    return 0;
}

/* The charset parameter of a Content-Type, into out; 0 when absent. */
static int content_type_charset(const char *ct, char *out, size_t len)
{
    const char *p;
    size_t n = 0;
    if (!ct)
        return 0;
    for (p = ct; *p; p++)
        if (strncasecmp(p, "charset=", 8) == 0)
            break;
    if (!*p)
        return 0;
    p += 8;
    if (*p == '"')
        p++;
    while (p[n] && p[n] != '"' && p[n] != ';' && p[n] != ' ' && n + 1 < len) {
        out[n] = p[n];
        n++;
    }
    out[n] = '\0';
    return n > 0;
}

xmlDocPtr pb__syspro_xml_parse_reply(const char *body, size_t len, const char *content_type,
                                     char *why, size_t why_len)
{
    const int options = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    const char *encoding = NULL;
    char charset[48];
    xmlDocPtr doc;
    const unsigned char *u = (const unsigned char *)body;

    why[0] = '\0';
    if (!body || len == 0) {
        snprintf(why, why_len, "an empty body");
        return NULL;
    }
    if (len > SYSPRO_REPLY_MAX || len > (size_t)2147483647) {
        snprintf(why, why_len, "%zu bytes, more than the %u accepted", len, SYSPRO_REPLY_MAX);
        return NULL;
    }
    if (declares_encoding(body, len))
        encoding = NULL; /* libxml2 honours the declaration */
    else if (len >= 2 && ((u[0] == 0xFF && u[1] == 0xFE) || (u[0] == 0xFE && u[1] == 0xFF)))
        encoding = NULL; /* UTF-16 with a byte-order mark: libxml2 detects it */
    else if (content_type_charset(content_type, charset, sizeof charset))
        encoding = charset;
    else if (pb_utf8_valid(u, len))
        encoding = "UTF-8";
    else
        encoding = "windows-1252";
    doc = xmlReadMemory(body, (int)len, "syspro-reply.xml", encoding, options);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        snprintf(why, why_len, "%s%s%.100s", encoding ? encoding : "declared encoding",
                 e && e->message ? ": " : "", e && e->message ? e->message : "");
        for (char *p = why; *p; p++)
            if (*p == '\n')
                *p = ' ';
        return NULL;
    }
    if (!xmlDocGetRootElement(doc)) {
        xmlFreeDoc(doc);
        snprintf(why, why_len, "no root element");
        return NULL;
    }
    return doc;
}

static int named(xmlNodePtr n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && xmlStrcasecmp(n->name, BAD_CAST name) == 0;
}

xmlNodePtr pb__syspro_child(xmlNodePtr parent, const char *name)
{
    for (xmlNodePtr n = parent ? parent->children : NULL; n; n = n->next)
        if (named(n, name))
            return n;
    return NULL;
}

xmlNodePtr pb__syspro_find(xmlNodePtr from, const char *name)
{
    for (xmlNodePtr n = from ? from->children : NULL; n; n = n->next) {
        xmlNodePtr hit;
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (named(n, name))
            return n;
        if ((hit = pb__syspro_find(n, name)) != NULL)
            return hit;
    }
    return NULL;
}

const char *pb__syspro_text(xmlNodePtr n, char *buf, size_t len)
{
    xmlChar *content;
    const char *s;
    size_t a, b;

    buf[0] = '\0';
    if (!n)
        return buf;
    content = xmlNodeGetContent(n);
    if (!content)
        return buf;
    s = (const char *)content;
    a = 0;
    b = strlen(s);
    while (a < b && isspace((unsigned char)s[a]))
        a++;
    while (b > a && isspace((unsigned char)s[b - 1]))
        b--;
    if (b - a >= len)
        b = a + len - 1;
    /* do not cut a UTF-8 sequence in two */
    while (b > a && b - a == len - 1 && ((unsigned char)s[b] & 0xC0) == 0x80)
        b--;
    memcpy(buf, s + a, b - a);
    buf[b - a] = '\0';
    xmlFree(content);
    return buf;
}

const char *pb__syspro_find_text(xmlNodePtr from, const char *name, char *buf, size_t len)
{
    xmlNodePtr n = pb__syspro_find(from, name);
    buf[0] = '\0';
    if (!n)
        return NULL;
    pb__syspro_text(n, buf, len);
    return buf[0] ? buf : NULL;
}

/* Append the texts of every element `name` below `from` to out ("; "). */
static void collect(xmlNodePtr from, const char *name, char *out, size_t len, size_t *used,
                    int *count)
{
    for (xmlNodePtr n = from ? from->children : NULL; n; n = n->next) {
        char text[SYSPRO_MESSAGE_MAX];
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (named(n, name)) {
            pb__syspro_text(n, text, sizeof text);
            if (text[0] && strcmp(text, "0") != 0 && !strstr(out, text)) {
                int w = snprintf(out + *used, len - *used, "%s%s", *used ? "; " : "", text);
                if (w > 0)
                    *used = (size_t)w >= len - *used ? len - 1 : *used + (size_t)w;
                (*count)++;
            }
            continue;
        }
        collect(n, name, out, len, used, count);
    }
}

/* Largest integer value of elements `name` below `from` (0 when none). */
static long long max_count(xmlNodePtr from, const char *name)
{
    long long best = 0;
    for (xmlNodePtr n = from ? from->children : NULL; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (named(n, name)) {
            char text[32];
            char *end;
            long long v;
            pb__syspro_text(n, text, sizeof text);
            v = strtoll(text, &end, 10);
            if (end != text && v > best)
                best = v;
        } else {
            long long v = max_count(n, name);
            if (v > best)
                best = v;
        }
    }
    return best;
}

int pb__syspro_reply_refused(xmlDocPtr doc, char *message, size_t len)
{
    xmlNodePtr root = xmlDocGetRootElement(doc);
    char numbers[64] = "";
    size_t used = 0, nused = 0;
    int descriptions = 0, codes = 0;
    long long invalid;

    message[0] = '\0';
    if (!root)
        return 0;
    /* the root itself may be the error element of a bare reply */
    if (named(root, "ErrorDescription")) {
        pb__syspro_text(root, message, len);
        descriptions = message[0] != '\0';
        used = strlen(message);
    }
    collect(root, "ErrorDescription", message, len, &used, &descriptions);
    collect(root, "ErrorNumber", numbers, sizeof numbers, &nused, &codes);
    invalid = max_count(root, "RecordsInvalid");
    if (max_count(root, "ItemsInvalid") > invalid)
        invalid = max_count(root, "ItemsInvalid");
    if (!descriptions && !codes && invalid <= 0)
        return 0;
    if (!descriptions && codes)
        snprintf(message, len, "SYSPRO error %s", numbers);
    else if (!descriptions)
        snprintf(message, len, "SYSPRO reported %lld invalid record(s) without a description",
                 invalid);
    else if (codes && used + strlen(numbers) + 16 < len)
        snprintf(message + used, len - used, " (error %s)", numbers);
    pb_pan_redact(message, strlen(message));
    return 1;
}

static json_t *element_json(xmlNodePtr n, int depth)
{
    json_t *obj;
    int has_children = 0;

    for (xmlNodePtr ch = n->children; ch; ch = ch->next)
        has_children |= ch->type == XML_ELEMENT_NODE;
    if (!has_children || depth >= JSON_DEPTH_MAX) {
        char text[1024];
        return json_string(pb__syspro_text(n, text, sizeof text));
    }
    obj = json_object();
    if (!obj)
        return NULL;
    for (xmlNodePtr ch = n->children; ch; ch = ch->next) {
        const char *key = (const char *)ch->name;
        json_t *v, *have;
        if (ch->type != XML_ELEMENT_NODE)
            continue;
        v = element_json(ch, depth + 1);
        if (!v)
            continue;
        have = json_object_get(obj, key);
        if (!have) {
            json_object_set_new(obj, key, v);
        } else if (json_is_array(have)) {
            json_array_append_new(have, v);
        } else {
            json_t *arr = json_array();
            if (!arr) {
                json_decref(v);
                continue;
            }
            json_array_append(arr, have);
            json_array_append_new(arr, v);
            json_object_set_new(obj, key, arr);
        }
    }
    return obj;
}

json_t *pb__syspro_element_json(xmlNodePtr n)
{
    if (!n)
        return json_object();
    return element_json(n, 0);
}
