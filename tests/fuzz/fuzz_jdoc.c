/*
 * tests/fuzz/fuzz_jdoc.c: libFuzzer target for core/jdoc.c, the webhook
 * body parser of the hot path (yajl into an arena tree). Every input must
 * return without a crash, a leak or a sanitizer report; a parsed tree is
 * walked to the end (every node, key and string touched), and a refused one
 * must leave no root behind. Build and run as the other targets
 * (docs/settlement.md, "Fuzzing"), e.g.
 *   build-fuzz/tests/fuzz/fuzz_jdoc -max_total_time=60 tests/fuzz/corpus/jdoc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/jdoc.h"

static size_t walk(const struct pb_jnode *n, size_t depth)
{
    size_t sum = depth;
    for (; n; n = n->next) {
        if (n->key)
            sum += strlen(n->key) + n->key_len;
        if (n->str)
            sum += strlen(n->str) + n->len;
        if (n->first) {
            if (depth >= PB_JDOC_DEPTH_MAX)
                abort(); /* the depth bound did not hold */
            sum += walk(n->first, depth + 1);
        }
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pb_jdoc *d = malloc(sizeof(*d));
    struct pb_err err;
    volatile size_t sink;
    if (!d)
        return 0;
    if (pb_jdoc_parse(d, (const char *)data, size, &err) == PB_OK) {
        sink = walk(d->root, 0);
        (void)sink;
        pb_jdoc_free(d);
    } else if (d->root) {
        abort(); /* a refused body left a tree */
    }
    free(d);
    return 0;
}
