/*
 * core/pan.h: the card-number guard. paybridge never stores a primary
 * account number (PAN). Everything that is about to be persisted or logged
 * from outside input (webhook bodies, gateway responses, report rows, error
 * text) can be passed through pb_pan_scan() to refuse it or pb_pan_redact()
 * to mask it.
 *
 * What counts as a PAN: 13 to 19 digits that pass the Luhn check, written
 * either as one run of digits ("4929000000006") or as groups separated by a
 * single space or dash ("4929 0000 0000 6", "4111-1111-1111-1111"). A group
 * is always taken whole: digits are never split out of a longer run, so a
 * 20-digit order number is not a card. When a run of groups is longer than
 * one card (e.g. "ref 12345 4111 1111 1111 1111"), every window of whole
 * consecutive groups with 13-19 digits is checked, and overlapping hits are
 * merged into one finding, so a number glued to a card cannot hide it.
 *
 * Text is bytes with a length: it need not be NUL-terminated and may contain
 * NUL or any other byte. Both functions run in time linear in `len`, use no
 * heap and are thread-safe.
 */
#ifndef PB_CORE_PAN_H
#define PB_CORE_PAN_H

#include <stddef.h>

/* 1 when the n bytes at `digits` are all '0'..'9' and pass the Luhn (mod 10)
 * check, else 0 (also for n == 0). */
int pb_luhn_valid(const char *digits, size_t n);

/* Number of PANs in text[0..len). When at least one is found and
 * first_offset is not NULL, *first_offset receives the byte offset of the
 * first digit of the first one; otherwise *first_offset is not written. */
size_t pb_pan_scan(const char *text, size_t len, size_t *first_offset);

/* Mask in place every PAN that pb_pan_scan() would find: each digit except
 * the last four of the card is replaced by '*'; separators and other bytes
 * are left alone ("4929 0000 0000 6" -> "**** **** *000 6"). Where findings
 * overlap, a digit is masked if any card would mask it. Returns the count
 * pb_pan_scan() returns for the original text. */
size_t pb_pan_redact(char *text, size_t len);

/* pb_pan_scan() for whole inbound payloads. GUID-shaped tokens (8-4-4-4-12
 * hex, e.g. Opayo transaction ids) are blanked in a scratch copy first: their
 * digit groups pass the Luhn windows for about 1 random GUID in 400, which
 * would refuse real payments. Everything else is scanned as is. */
size_t pb_pan_scan_payload(const char *text, size_t len, size_t *first_offset);

#endif
