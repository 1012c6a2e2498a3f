/*
 * recon/recon_sort.c: the LSD radix sort that orders the amount index by
 * (currency and kind class, amount, date), for the amount and date-window
 * rules (2, 3, the amount half of 4, and 7).
 *
 * What it owns: nothing; the caller lends the items and a scratch array of
 * the same size.
 *
 * How. Fourteen byte-wide digits, least significant first: four of the date,
 * eight of the amount, two of the group. One pre-pass builds all fourteen
 * histograms; a digit whose values all fall in one bucket (the high bytes of
 * amounts and dates nearly always) is skipped, so a typical sort makes six or
 * seven scatter passes. Keys are made unsigned by flipping the sign bit, so
 * negative amounts (refunds) sort before positive ones. The sort is stable:
 * equal keys keep their insertion order (record index), which makes every
 * tie-break downstream deterministic.
 *
 * Rejected: qsort with a comparator (n log n indirect calls, and not stable,
 * so ties would need a fourth key); a 16-bit digit (65,536-entry histograms
 * cost more than they save at the sizes the amount rules see).
 */
#include <string.h>

#include "recon/recon_internal.h"

#define DIGITS 14

static inline unsigned digit(const struct pb__recon_sort_item *it, int d)
{
    if (d < 4)
        return (it->date_key >> (8 * d)) & 0xff;
    if (d < 12)
        return (unsigned)(it->amount_key >> (8 * (d - 4))) & 0xff;
    return (it->group >> (8 * (d - 12))) & 0xff;
}

void pb__recon_radix_sort(struct pb__recon_sort_item *items, struct pb__recon_sort_item *tmp,
                          size_t n)
{
    static const int order[DIGITS] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    size_t count[DIGITS][256];
    struct pb__recon_sort_item *src = items, *dst = tmp;

    if (n < 2)
        return;
    memset(count, 0, sizeof(count));
    for (size_t i = 0; i < n; i++)
        for (int d = 0; d < DIGITS; d++)
            count[d][digit(&items[i], d)]++;
    for (int k = 0; k < DIGITS; k++) {
        int d = order[k];
        size_t sum = 0, offset[256];
        int trivial = 0;
        for (int b = 0; b < 256; b++) {
            if (count[d][b] == n)
                trivial = 1;
            offset[b] = sum;
            sum += count[d][b];
        }
        if (trivial)
            continue;
        for (size_t i = 0; i < n; i++)
            dst[offset[digit(&src[i], d)]++] = src[i];
        {
            struct pb__recon_sort_item *t = src;
            src = dst;
            dst = t;
        }
    }
    if (src != items)
        memcpy(items, src, n * sizeof(*items));
}
