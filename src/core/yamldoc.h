/*
 * core/yamldoc.h: a YAML file as a jansson tree that remembers where every
 * node came from.
 *
 * What it is for. Configuration and flow files are YAML, but everything that
 * reads them works on JSON values (jansson), and every problem found in them
 * must be reported as "file:line: what is wrong". This module parses YAML
 * with libyaml into a jansson tree and records the source line of each node
 * and of each mapping key, so that a checker walking the tree can say where
 * a value is.
 *
 * Scalar typing (a deliberately small subset of YAML 1.2's core schema, so
 * that no value changes type by surprise and money never becomes a double):
 *   - plain (unquoted) scalars that are decimal integers without a leading
 *     zero ("0", "42", "-7") and fit in int64      -> JSON integer
 *   - plain true / True / TRUE, false / False / FALSE  -> JSON boolean
 *   - plain null / Null / NULL, ~, or empty          -> JSON null
 *   - everything else -> JSON string: quoted and block scalars, decimals
 *     ("10.99", "0.8571"), leading zeros ("091", an account code), numbers
 *     out of int64 range, yes/no/on/off, hex, octal, exponents, dates.
 * The tag !!str (or the non-specific "!") forces a string; other tags are
 * rejected.
 *
 * Rejected input (each reported with its line, and loading continues so that
 * all problems are reported at once; the document is then not returned):
 *   - libyaml syntax errors, reported with line and column (these stop the
 *     parse: nothing after them can be trusted);
 *   - duplicate keys in one mapping (YAML forbids them, and libyaml does not
 *     check: the second value would silently win);
 *   - anchors (&a) and aliases (*a), including merge keys (<<): they make a
 *     file hard to read, and aliases enable "billion laughs" expansion;
 *   - more than one document (---) in a file;
 *   - keys that are not scalars, and keys containing NUL;
 *   - input larger than PB_YAMLDOC_MAX_BYTES, nesting deeper than
 *     PB_YAMLDOC_MAX_DEPTH.
 *
 * Ownership. A loaded document owns its tree, a copy of the raw text and the
 * line table. pb_yamldoc_root() lends the tree: it is valid until
 * pb_yamldoc_free(), and callers must not modify it (the line table is keyed
 * by node address and mapping key). A caller that wants to keep a subtree
 * past the document's life takes a reference with json_incref().
 *
 * Line lookup. jansson returns shared singletons for true, false and null,
 * so those nodes have no line of their own: pb_yamldoc_line() returns 0 for
 * them. pb_yamldoc_key_line() (the line of a mapping key) works for every
 * member whatever its value, and is what checkers should use for "this
 * member is wrong" messages.
 *
 * Threading. Loading uses only local state; a loaded document may be read
 * from several threads at once.
 *
 * Rejected designs.
 *   - libyaml's document API (yaml_parser_load): it expands aliases, keeps no
 *     per-key marks after conversion, and builds a second full tree.
 *   - Storing the line inside the tree (e.g. a "__line__" member): it would
 *     leak into vars and documents, and cannot be put on scalars.
 *   - YAML 1.1 typing (yes/no booleans, sexagesimal and octal numbers, floats):
 *     "NO" (Norway) becoming false and 0.10 becoming a double are exactly the
 *     surprises a payment configuration cannot afford.
 */
#ifndef PB_CORE_YAMLDOC_H
#define PB_CORE_YAMLDOC_H

#include <jansson.h>
#include <stddef.h>

#include "core/diag.h"
#include "core/err.h"

/* Largest YAML input accepted. */
#define PB_YAMLDOC_MAX_BYTES ((size_t)4 * 1024 * 1024)
/* Deepest nesting of mappings and sequences accepted. */
#define PB_YAMLDOC_MAX_DEPTH 64

struct pb_yamldoc;

/* Load and parse the file at `path`. On success *out owns a new document.
 * On failure *out is NULL, every problem found is appended to `d` (which may
 * be NULL) with the file name and line, and the return is PB_ERR_IO (cannot
 * read), PB_ERR_TOOBIG (over PB_YAMLDOC_MAX_BYTES), PB_ERR_NOMEM, or
 * PB_ERR_CONFIG (the text is not acceptable YAML, see above). */
enum pb_rc pb_yamldoc_load_file(const char *path, struct pb_yamldoc **out, struct pb_diags *d);

/* As pb_yamldoc_load_file(), from the NUL-terminated `text`; `name` is what
 * diagnostics and pb_yamldoc_file() call it (e.g. "<dashboard>"). The text is
 * copied. */
enum pb_rc pb_yamldoc_load_string(const char *name, const char *text, struct pb_yamldoc **out,
                                  struct pb_diags *d);

/* As pb_yamldoc_load_string() for `len` bytes that need not end in NUL
 * (a NUL byte inside is a syntax error reported by libyaml). */
enum pb_rc pb_yamldoc_load_buffer(const char *name, const char *data, size_t len,
                                  struct pb_yamldoc **out, struct pb_diags *d);

/* The root of the tree (borrowed; json null for an empty document). */
json_t *pb_yamldoc_root(const struct pb_yamldoc *doc);

/* The 1-based source line where `node` starts, or 0 when unknown (a node of
 * another tree, or a true/false/null singleton: see the header comment). */
int pb_yamldoc_line(const struct pb_yamldoc *doc, const json_t *node);

/* The 1-based line of the key `key` in the mapping `object`, or 0 when the
 * mapping has no such key. */
int pb_yamldoc_key_line(const struct pb_yamldoc *doc, const json_t *object, const char *key);

/* The file name (or the name given to load_string) (borrowed). */
const char *pb_yamldoc_file(const struct pb_yamldoc *doc);

/* The raw text that was parsed (borrowed, NUL-terminated); *len (if not
 * NULL) receives its length in bytes. */
const char *pb_yamldoc_text(const struct pb_yamldoc *doc, size_t *len);

/* Free the document, its tree (minus references others took) and tables.
 * NULL is allowed. */
void pb_yamldoc_free(struct pb_yamldoc *doc);

#endif
