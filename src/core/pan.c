/*
 * core/pan.c: finding and masking card numbers (PANs) in untrusted bytes.
 *
 * What it owns. Nothing: no allocation, no state. The text belongs to the
 * caller; pb_pan_redact() writes '*' over digits in place and never changes
 * the length.
 *
 * The walk. Bytes are grouped into "groups" (maximal runs of ASCII digits),
 * and groups into "runs" (groups joined by exactly one ' ' or '-'). For every
 * group g of a run, the windows g, g+g', g+g'+g'' ... are tried while they
 * hold at most 19 digits; each window with 13..19 digits that passes Luhn is
 * a hit. Hits that share digits form one finding (that is what the count
 * counts). Each hit masks its digits except its own last four; a digit is
 * masked if any hit masks it.
 *
 * Invariants.
 *   - Linear time: per group, the windows read at most 19 digits and 19
 *     separators ahead, there are at most 7 windows of 13..19 digits, and each
 *     Luhn check reads at most 37 bytes; a group longer than 19 digits is
 *     measured once and skipped. So the work is O(len) with a constant of a
 *     few hundred, whatever the input.
 *   - No read outside text[0..len), no reliance on a NUL terminator.
 *   - Masking is deferred and only ever writes bytes *before* the group whose
 *     windows are being evaluated (or, at the end of a run, inside the run
 *     just finished), so no later window ever reads a '*' that was a digit.
 *     That is why pb_pan_redact() returns the same count as pb_pan_scan() of
 *     the original text.
 *
 * Rejected designs.
 *   - A regular expression (POSIX regex or PCRE): a regex can find 13-19
 *     digit shapes but not "whole groups only, every window, merge overlaps",
 *     and backtracking engines are not linear on hostile input.
 *   - Trying every 13..19 substring of a long digit run: about one in ten
 *     substrings passes Luhn, so every long reference number, timestamp in
 *     milliseconds or hash would be reported; a card is never written with
 *     other digits glued to it without a separator.
 *   - Requiring a word boundary around the digits: "card4929000000006" and
 *     "pan=4929000000006&" are exactly what leaks from gateways' debug
 *     fields, and a masked digit in a non-card costs far less than a stored
 *     card.
 *   - Also masking the first six digits only (the BIN): PCI DSS allows
 *     showing first six and last four, but we have no use for the BIN after
 *     the gateway call, so we keep only the last four.
 */
#include "core/pan.h"

#include <stdlib.h>
#include <string.h>

#define PAN_MIN_DIGITS 13
#define PAN_MAX_DIGITS 19
#define PAN_KEEP_DIGITS 4

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_separator(unsigned char c) { return c == ' ' || c == '-'; }

int pb_luhn_valid(const char *digits, size_t n)
{
    unsigned sum = 0;
    int dbl = 0;
    if (!digits || n == 0)
        return 0;
    for (size_t i = n; i-- > 0;) {
        unsigned char c = (unsigned char)digits[i];
        unsigned d;
        if (!is_digit(c))
            return 0;
        d = c - '0';
        if (dbl) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
        dbl = !dbl;
        sum %= 10; /* keeps `sum` small for any n */
    }
    return sum == 0;
}

/* Luhn over the digits of t[start..end), skipping separators. Also returns in
 * *keep_from the byte offset of the first of the last PAN_KEEP_DIGITS digits. */
static int luhn_window(const unsigned char *t, size_t start, size_t end, size_t *keep_from)
{
    unsigned sum = 0, seen = 0;
    for (size_t i = end; i-- > start;) {
        unsigned d;
        if (!is_digit(t[i]))
            continue;
        d = t[i] - '0';
        if (seen & 1) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
        if (++seen == PAN_KEEP_DIGITS)
            *keep_from = i;
    }
    return sum % 10 == 0;
}

/* Replace the digits of w[*done..upto) by '*' and advance *done. */
static void mask_until(unsigned char *w, size_t *done, size_t upto)
{
    for (; *done < upto; (*done)++)
        if (is_digit(w[*done]))
            w[*done] = '*';
}

/* The walk described in the header comment. `w` is NULL when scanning and the
 * same bytes as `t` when redacting. */
static size_t pan_walk(const unsigned char *t, unsigned char *w, size_t len, size_t *first_offset)
{
    size_t count = 0, i = 0;

    while (i < len) {
        size_t group, finding_end = 0, masked, mask_end;
        int in_finding = 0;

        if (!is_digit(t[i])) {
            i++;
            continue;
        }
        group = masked = mask_end = i;
        for (;;) {
            size_t p = group, digits = 0, e;

            if (w)
                mask_until(w, &masked, mask_end < group ? mask_end : group);
            /* Windows of whole groups starting at `group`. */
            for (;;) {
                size_t budget = PAN_MAX_DIGITS - digits, q = p, keep_from = p;
                while (q < len && is_digit(t[q]) && q - p <= budget)
                    q++;
                if (q - p > budget)
                    break; /* this group would push the window past 19 digits */
                digits += q - p;
                if (digits >= PAN_MIN_DIGITS && luhn_window(t, group, q, &keep_from)) {
                    if (in_finding && group < finding_end) {
                        if (q > finding_end)
                            finding_end = q;
                    } else {
                        if (count == 0 && first_offset)
                            *first_offset = group;
                        count++;
                        in_finding = 1;
                        finding_end = q;
                    }
                    if (group > mask_end) {
                        /* A gap: the pending interval ended before `group` and was
                         * flushed at the top of this iteration; start a new one. */
                        masked = group;
                        mask_end = keep_from;
                    } else if (keep_from > mask_end) {
                        mask_end = keep_from;
                    }
                }
                if (q + 1 < len && is_separator(t[q]) && is_digit(t[q + 1]))
                    p = q + 1;
                else
                    break;
            }
            /* Next group of the run, or the end of the run. */
            for (e = group; e < len && is_digit(t[e]); e++)
                ;
            if (e + 1 < len && is_separator(t[e]) && is_digit(t[e + 1])) {
                group = e + 1;
            } else {
                i = e;
                break;
            }
        }
        if (w)
            mask_until(w, &masked, mask_end);
    }
    return count;
}

size_t pb_pan_scan(const char *text, size_t len, size_t *first_offset)
{
    if (!text)
        return 0;
    return pan_walk((const unsigned char *)text, NULL, len, first_offset);
}

size_t pb_pan_redact(char *text, size_t len)
{
    if (!text)
        return 0;
    return pan_walk((const unsigned char *)text, (unsigned char *)text, len, NULL);
}

/* ---- payloads: GUIDs are not card numbers ------------------------------------------ */

#define GUID_LEN 36

static int is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int is_word(char ch)
{
    return is_hex(ch) || (ch >= 'g' && ch <= 'z') || (ch >= 'G' && ch <= 'Z') || ch == '-';
}

/* 1 when t[0..GUID_LEN) is 8-4-4-4-12 hex digits. */
static int guid_at(const char *t)
{
    for (int i = 0; i < GUID_LEN; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? t[i] != '-' : !is_hex(t[i]))
            return 0;
    }
    return 1;
}

/* See pan.h: pb_pan_scan with GUID-shaped tokens blanked first. */
size_t pb_pan_scan_payload(const char *body, size_t len, size_t *first_offset)
{
    char *scratch;
    size_t found;
    /* Fast path. Blanking a GUID only turns digits into 'x', and a GUID is
     * bounded by non-word bytes (never digits), so every digit group of the
     * blanked text is a group of the raw text, and groups only lose
     * neighbours: whatever the blanked text holds, the raw text holds too.
     * Hence when the raw text has no PAN, neither has the payload, and the
     * copy and the GUID pass (most of the cost) are needed only for the few
     * bodies whose raw scan finds something. */
    if (!body || pb_pan_scan(body, len, NULL) == 0)
        return 0;
    scratch = malloc(len + 1);
    if (!scratch) /* fail closed: scan the raw text */
        return pb_pan_scan(body, len, first_offset);
    memcpy(scratch, body, len);
    scratch[len] = '\0';
    for (size_t i = 0; i + GUID_LEN <= len; i++) {
        if ((i > 0 && is_word(scratch[i - 1])) || !guid_at(scratch + i) ||
            (i + GUID_LEN < len && is_word(scratch[i + GUID_LEN])))
            continue;
        memset(scratch + i, 'x', GUID_LEN);
        i += GUID_LEN - 1;
    }
    found = pb_pan_scan(scratch, len, first_offset);
    free(scratch);
    return found;
}

