/*
 * recon/recon_report.c: reading a matched run: the match and break arrays,
 * the summary counters, a fingerprint of the output, one-line explanations
 * for people, and a JSON-lines dump.
 *
 * What it owns: nothing; it reads the run. All functions are safe to call
 * from several threads at once after pb_recon_match() has returned.
 *
 * The explanations are the product's promise that "a person can see why two
 * records were paired": each names the rule, the confidence and both sides
 * with their references, kinds, amounts and dates, and for a break its class,
 * amount and suggested action. Amounts are formatted by core/money.c, never
 * by dividing.
 *
 * The digest hashes every field of every match and break (not the structs'
 * bytes, whose padding is not ours to hash), so equal digests mean equal
 * output; the determinism test and the bench use it.
 *
 * Rejected: building the explanations at match time (a million strings
 * nobody reads; they are made on demand from the compact arrays).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/money.h"
#include "recon/recon_internal.h"

const struct pb_recon_match *pb_recon_matches(const struct pb_recon_run *run, size_t *count)
{
    *count = run->matched ? run->matches.count : 0;
    return run->matches.data;
}

const struct pb_recon_break *pb_recon_breaks(const struct pb_recon_run *run, size_t *count)
{
    *count = run->matched ? run->breaks.count : 0;
    return run->breaks.data;
}

const uint32_t *pb_recon_members(const struct pb_recon_run *run)
{
    return run->members.data;
}

void pb_recon_summary(const struct pb_recon_run *run, struct pb_recon_summary *out)
{
    const struct pb_recon_match *m = run->matches.data;
    const struct pb_recon_break *b = run->breaks.data;
    memset(out, 0, sizeof(*out));
    out->lines = run->settlement.line_count;
    out->records = run->ledger.record_count;
    out->batches = run->settlement.batch_count;
    out->problems[PB_RECON_SETTLEMENT] = run->settlement.problems.total;
    out->problems[PB_RECON_LEDGER] = run->ledger.problems.total;
    if (!run->matched)
        return;
    for (uint64_t i = 0; i < run->matches.count; i++) {
        if (m[i].rule < PB_RECON_RULE_COUNT)
            out->matches_by_rule[m[i].rule]++;
        out->records_matched += m[i].record_count;
        out->lines_matched += m[i].line_count; /* a batch match lists no lines */
    }
    for (uint64_t i = 0; i < run->breaks.count; i++) {
        if (b[i].class_ < PB_RECON_BREAK_CLASS_COUNT)
            out->breaks_by_class[b[i].class_]++;
        out->auto_adjustable += b[i].auto_adjust;
    }
    out->exact_reference_matches = run->exact_reference_matches;
    out->exact_reference_fingerprint = run->exact_reference_fingerprint;
    out->pending_records = run->pending_records;
}

static inline uint64_t mix(uint64_t h, uint64_t v)
{
    __uint128_t r = (__uint128_t)(h ^ v) * 0x9e3779b97f4a7c15ull;
    return (uint64_t)r ^ (uint64_t)(r >> 64) ^ 0xe7037ed1a0b428dbull;
}

uint64_t pb_recon_digest(const struct pb_recon_run *run)
{
    const struct pb_recon_match *m = run->matches.data;
    const struct pb_recon_break *b = run->breaks.data;
    const uint32_t *mem = run->members.data;
    uint64_t h = 0x6a09e667f3bcc908ull;
    uint32_t cur;
    if (!run->matched)
        return 0;
    for (uint64_t i = 0; i < run->matches.count; i++) {
        memcpy(&cur, m[i].currency, 4);
        h = mix(h, (uint64_t)m[i].rule << 56 | (uint64_t)m[i].confidence << 48 |
                       (uint64_t)m[i].rate << 32 | cur);
        h = mix(h, (uint64_t)m[i].difference_minor);
        h = mix(h, (uint64_t)m[i].batch << 32 | m[i].line_count);
        h = mix(h, m[i].record_count);
        for (uint32_t k = 0; k < m[i].line_count + m[i].record_count; k++)
            h = mix(h, mem[m[i].members + k]);
    }
    h = mix(h, 0xb4ea4ull);
    for (uint64_t i = 0; i < run->breaks.count; i++) {
        memcpy(&cur, b[i].currency, 4);
        h = mix(h, (uint64_t)b[i].class_ << 56 | (uint64_t)b[i].action << 48 |
                       (uint64_t)b[i].auto_adjust << 40 | (uint64_t)b[i].side << 32 | cur);
        h = mix(h, (uint64_t)b[i].amount_minor);
        h = mix(h, (uint64_t)b[i].batch << 32 | b[i].first_seen);
        h = mix(h, (uint64_t)b[i].line_count << 32 | b[i].record_count);
        for (uint32_t k = 0; k < b[i].line_count + b[i].record_count; k++)
            h = mix(h, mem[b[i].members + k]);
    }
    return h;
}

/* ---- text ------------------------------------------------------------------------------ */

struct out {
    char *buf;
    size_t len, at;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (o->at + 1 >= o->len)
        return;
    va_start(ap, fmt);
    n = vsnprintf(o->buf + o->at, o->len - o->at, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->at = o->at + (size_t)n >= o->len ? o->len - 1 : o->at + (size_t)n;
}

static const char *amount_text(int64_t minor, const char *cur, char buf[PB_MONEY_DECIMAL_MAX])
{
    if (pb_money_format_decimal(minor, cur, buf, PB_MONEY_DECIMAL_MAX, NULL) != PB_OK)
        snprintf(buf, PB_MONEY_DECIMAL_MAX, "%" PRId64 "?", minor);
    return buf;
}

static void put_line(struct out *o, const struct pb_recon_run *run, uint32_t i)
{
    struct pb_recon_line_view v;
    char a[PB_MONEY_DECIMAL_MAX], d[11];
    pb_recon_line_get(run, i, &v);
    pb_recon_date_format(v.settled_date, d);
    put(o, "line %u (%.*s %.*s/%u %s %s %s", v.source_line ? v.source_line : i, (int)v.gateway.len,
        v.gateway.ptr, (int)v.batch_id.len, v.batch_id.ptr, v.line_no,
        pb_recon_line_kind_name(v.kind), amount_text(v.amount_minor, v.currency, a), v.currency);
    if (v.gateway_ref.len)
        put(o, " tx %.*s", (int)v.gateway_ref.len, v.gateway_ref.ptr);
    if (v.merchant_ref.len)
        put(o, " ref %.*s", (int)v.merchant_ref.len, v.merchant_ref.ptr);
    put(o, " settled %s)", d);
}

static void put_record(struct out *o, const struct pb_recon_run *run, uint32_t r)
{
    struct pb_recon_record_view v;
    char a[PB_MONEY_DECIMAL_MAX], d[11];
    pb_recon_record_get(run, r, &v);
    pb_recon_date_format(v.date, d);
    put(o, "record %.*s (%.*s%s%s %s %s", (int)v.record_id.len, v.record_id.ptr, (int)v.erp.len,
        v.erp.ptr, v.erp.len ? " " : "", pb_recon_record_kind_name(v.kind),
        amount_text(v.amount_minor, v.currency, a), v.currency);
    if (v.gateway_ref.len)
        put(o, " tx %.*s", (int)v.gateway_ref.len, v.gateway_ref.ptr);
    if (v.reference.len)
        put(o, " ref %.*s", (int)v.reference.len, v.reference.ptr);
    put(o, " dated %s)", d);
}

static void put_batch(struct out *o, const struct pb_recon_run *run, uint32_t b)
{
    struct pb_recon_batch_view v;
    char g[PB_MONEY_DECIMAL_MAX], f[PB_MONEY_DECIMAL_MAX], n[PB_MONEY_DECIMAL_MAX];
    pb_recon_batch_get(run, b, &v);
    put(o, "batch %.*s/%.*s %s (%u lines", (int)v.gateway.len, v.gateway.ptr, (int)v.batch_id.len,
        v.batch_id.ptr, v.currency, v.line_count);
    if (v.has_header)
        put(o, "; reported gross %s fees %s net %s", amount_text(v.gross_minor, v.currency, g),
            amount_text(v.fees_minor, v.currency, f), amount_text(v.net_minor, v.currency, n));
    put(o, "; lines gross %s fees %s)", amount_text(v.lines_gross_minor, v.currency, g),
        amount_text(v.lines_fees_minor, v.currency, f));
}

static void put_members(struct out *o, const struct pb_recon_run *run, uint32_t members,
                        uint32_t nlines, uint32_t nrecs, const char *joiner)
{
    const uint32_t *mem = run->members.data;
    for (uint32_t k = 0; k < nlines && k < 8; k++) {
        put(o, "%s", k ? " + " : "");
        put_line(o, run, mem[members + k]);
    }
    if (nlines > 8)
        put(o, " + %u more lines", nlines - 8);
    if (nlines && nrecs)
        put(o, "%s", joiner);
    for (uint32_t k = 0; k < nrecs && k < 8; k++) {
        put(o, "%s", k ? " + " : "");
        put_record(o, run, mem[members + nlines + k]);
    }
}

static const char *const rule_texts[PB_RECON_RULE_COUNT] = {
    "?",
    "the same gateway reference",
    "the same amount on the same day",
    "the same amount within the date window",
    "the payout of a batch",
    "several lines summing exactly to one record",
    "refunds netted against their sale within the batch",
    "an FX conversion at the recorded rate"};

void pb_recon_explain_match(const struct pb_recon_run *run, size_t index, char *buf, size_t len)
{
    const struct pb_recon_match *m;
    struct out o = {buf, len, 0};
    char a[PB_MONEY_DECIMAL_MAX];
    if (!len)
        return;
    buf[0] = '\0';
    if (!run->matched || index >= run->matches.count)
        return;
    m = (const struct pb_recon_match *)run->matches.data + index;
    put(&o, "rule %u %s (%s), confidence %u: ", m->rule, pb_recon_rule_name(m->rule),
        m->rule < PB_RECON_RULE_COUNT ? rule_texts[m->rule] : "?", m->confidence);
    if (m->rule == PB_RECON_RULE_BATCH) {
        put_batch(&o, run, m->batch);
        put(&o, " = ");
    }
    put_members(&o, run, m->members, m->line_count, m->record_count, m->record_count ? " = " : "");
    if (m->line_count && !m->record_count)
        put(&o, " net to zero; nothing to post");
    if (m->rate != UINT16_MAX && m->rate < run->rate_count)
        put(&o, "; rate %s->%s %s", run->currencies[run->rates[m->rate].from].code,
            run->currencies[run->rates[m->rate].to].code, run->rates[m->rate].text);
    if (m->difference_minor)
        put(&o, "; difference %s %s (within tolerance)",
            amount_text(m->difference_minor, m->currency, a), m->currency);
}

void pb_recon_explain_break(const struct pb_recon_run *run, size_t index, char *buf, size_t len)
{
    const struct pb_recon_break *b;
    struct out o = {buf, len, 0};
    char a[PB_MONEY_DECIMAL_MAX];
    if (!len)
        return;
    buf[0] = '\0';
    if (!run->matched || index >= run->breaks.count)
        return;
    b = (const struct pb_recon_break *)run->breaks.data + index;
    put(&o, "%s: ", pb_recon_break_name(b->class_));
    if (b->class_ == PB_RECON_BREAK_BATCH_UNBALANCED ||
        (b->batch != PB_RECON_NONE && !b->line_count))
        put_batch(&o, run, b->batch);
    if (b->line_count || b->record_count) {
        if (b->class_ == PB_RECON_BREAK_BATCH_UNBALANCED ||
            (b->batch != PB_RECON_NONE && !b->line_count))
            put(&o, " vs ");
        put_members(&o, run, b->members, b->line_count, b->record_count, " vs ");
    }
    if (b->first_seen != PB_RECON_NONE) {
        put(&o, "; first seen as ");
        if (b->side == PB_RECON_SETTLEMENT)
            put_line(&o, run, b->first_seen);
        else
            put_record(&o, run, b->first_seen);
    }
    put(&o, "; amount %s %s", amount_text(b->amount_minor, b->currency, a), b->currency);
    put(&o, "; %s: %s", b->auto_adjust ? "auto-adjustable" : "review",
        pb_recon_action_text(b->action));
}

/* JSON string of a text that may hold anything (it came from a file). */
static void json_text(FILE *f, const char *p, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_members(FILE *f, const struct pb_recon_run *run, uint32_t members, uint32_t nlines,
                         uint32_t nrecs)
{
    const uint32_t *mem = run->members.data;
    fprintf(f, "\"lines\":[");
    for (uint32_t k = 0; k < nlines; k++) {
        struct pb_recon_line_view v;
        pb_recon_line_get(run, mem[members + k], &v);
        fprintf(f, "%s{\"index\":%u,\"source_line\":%u,\"gateway_ref\":", k ? "," : "",
                mem[members + k], v.source_line);
        json_text(f, v.gateway_ref.ptr, v.gateway_ref.len);
        fprintf(f, ",\"merchant_ref\":");
        json_text(f, v.merchant_ref.ptr, v.merchant_ref.len);
        fprintf(f, ",\"amount_minor\":%" PRId64 ",\"currency\":\"%s\"}", v.amount_minor,
                v.currency);
    }
    fprintf(f, "],\"records\":[");
    for (uint32_t k = 0; k < nrecs; k++) {
        struct pb_recon_record_view v;
        pb_recon_record_get(run, mem[members + nlines + k], &v);
        fprintf(f, "%s{\"index\":%u,\"source_line\":%u,\"record_id\":", k ? "," : "",
                mem[members + nlines + k], v.source_line);
        json_text(f, v.record_id.ptr, v.record_id.len);
        fprintf(f, ",\"amount_minor\":%" PRId64 ",\"currency\":\"%s\"}", v.amount_minor,
                v.currency);
    }
    fprintf(f, "]");
}

enum pb_rc pb_recon_write_jsonl(const struct pb_recon_run *run, FILE *f, struct pb_err *err)
{
    const struct pb_recon_match *m = run->matches.data;
    const struct pb_recon_break *b = run->breaks.data;
    if (!run->matched)
        return pb_err_set(err, PB_ERR_INVALID, "the run has not been matched");
    for (uint64_t i = 0; i < run->matches.count; i++) {
        fprintf(f, "{\"match\":%" PRIu64 ",\"rule\":\"%s\",\"confidence\":%u,", i,
                pb_recon_rule_name(m[i].rule), m[i].confidence);
        if (m[i].batch != PB_RECON_NONE)
            fprintf(f, "\"batch\":%u,", m[i].batch);
        if (m[i].rate != UINT16_MAX)
            fprintf(f, "\"rate\":\"%s\",", run->rates[m[i].rate].text);
        fprintf(f, "\"difference_minor\":%" PRId64 ",\"currency\":\"%s\",", m[i].difference_minor,
                m[i].currency);
        json_members(f, run, m[i].members, m[i].line_count, m[i].record_count);
        fprintf(f, "}\n");
    }
    for (uint64_t i = 0; i < run->breaks.count; i++) {
        fprintf(f,
                "{\"break\":%" PRIu64 ",\"class\":\"%s\",\"action\":\"%s\","
                "\"auto_adjust\":%s,\"amount_minor\":%" PRId64 ",\"currency\":\"%s\",",
                i, pb_recon_break_name(b[i].class_), pb_recon_action_name(b[i].action),
                b[i].auto_adjust ? "true" : "false", b[i].amount_minor, b[i].currency);
        if (b[i].batch != PB_RECON_NONE)
            fprintf(f, "\"batch\":%u,", b[i].batch);
        if (b[i].first_seen != PB_RECON_NONE)
            fprintf(f, "\"first_seen\":%u,", b[i].first_seen);
        json_members(f, run, b[i].members, b[i].line_count, b[i].record_count);
        fprintf(f, "}\n");
    }
    if (ferror(f))
        return pb_err_set(err, PB_ERR_IO, "writing the reconciliation report failed");
    return PB_OK;
}
