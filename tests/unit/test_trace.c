/*
 * tests/unit/test_trace.c: the redaction rules of net/trace.c.
 *
 * JSON bodies (secret keys at any depth, whatever the value type), invalid
 * JSON and form bodies (text rules), XML elements, PANs in free text and
 * under innocent keys, URLs with SYSPRO's CompanyPassword= and
 * OperatorPassword= query parameters, truncation at a UTF-8 boundary, and a
 * whole pb_trace_http() record in which no secret may appear anywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net/trace.h"

static char *redact(const char *s) { return pb_trace_redact_body(s, strlen(s)); }

static void assert_absent(const char *hay, const char *needle)
{
    if (strstr(hay, needle))
        fail_msg("\"%s\" leaked in: %s", needle, hay);
}

static void assert_present(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("\"%s\" missing from: %s", needle, hay);
}

static void test_json_body(void **state)
{
    const char *body =
        "{\"client_id\":\"app-1\",\"client_secret\":\"s3cr3t-value\",\n"
        " \"access_token\":\"eyJhbGciOi.tok\",\"amount\":1250,\"rate\":1.1,\n"
        " \"payment\":{\"card\":{\"cardNumber\":\"4929000000006\",\"CVV\":123,\n"
        "   \"expiry\":\"12/29\",\"securityCode\":{\"v\":\"987\"}}},\n"
        " \"items\":[{\"Password\":\"hunter2\"},{\"name\":\"ok\"}],\n"
        " \"headers\":{\"Authorization\":\"Basic dXNlcjpwYXNz\"}}";
    char *out = redact(body);
    json_error_t jerr;
    json_t *j;
    (void)state;
    assert_non_null(out);
    j = json_loads(out, 0, &jerr);
    assert_non_null(j); /* still JSON: no PAN left as a bare number here */
    assert_string_equal(json_string_value(json_object_get(j, "client_id")), "app-1");
    assert_string_equal(json_string_value(json_object_get(j, "client_secret")), "***");
    assert_string_equal(json_string_value(json_object_get(j, "access_token")), "***");
    assert_int_equal(json_integer_value(json_object_get(j, "amount")), 1250);
    json_t *card = json_object_get(json_object_get(j, "payment"), "card");
    assert_string_equal(json_string_value(json_object_get(card, "cardNumber")), "***");
    assert_string_equal(json_string_value(json_object_get(card, "CVV")), "***");
    assert_string_equal(json_string_value(json_object_get(card, "securityCode")), "***");
    assert_string_equal(json_string_value(json_object_get(card, "expiry")), "12/29");
    json_t *items = json_object_get(j, "items");
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "Password")),
                        "***");
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "name")), "ok");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "headers"), "Authorization")), "***");
    assert_present(out, "\"rate\":1.1,");
    assert_absent(out, "s3cr3t");
    assert_absent(out, "eyJhbGciOi");
    assert_absent(out, "hunter2");
    assert_absent(out, "4929000000006");
    assert_absent(out, "dXNlcjpwYXNz");
    assert_absent(out, "987");
    json_decref(j);
    free(out);
}

static void test_pan_in_free_text(void **state)
{
    char *out;
    (void)state;
    out = redact("Customer paid with 4111 1111 1111 1111 yesterday (order 12345678).");
    assert_present(out, "**** **** **** 1111");
    assert_absent(out, "4111 1111 1111 1111");
    assert_present(out, "order 12345678"); /* not a card */
    free(out);

    /* a PAN under an innocent JSON key, and as a bare JSON number */
    out = redact("{\"note\":\"card 4111111111111111 declined\",\"ref\":5555555555554444}");
    assert_present(out, "************1111");
    assert_present(out, "************4444");
    assert_absent(out, "4111111111111111");
    assert_absent(out, "5555555555554444");
    free(out);

    /* error text from a gateway, not JSON at all */
    out = redact("ERROR: card number 4929000000006 is blocked");
    assert_present(out, "*********0006");
    free(out);
}

static void test_form_body(void **state)
{
    char *out;
    (void)state;
    out = redact("grant_type=refresh_token&refresh_token=abc123&client_id=me"
                 "&client_secret=xyz%21&amount=10&client%5Fsecret=enc");
    assert_string_equal(out, "grant_type=refresh_token&refresh_token=***&client_id=me"
                             "&client_secret=***&amount=10&client%5Fsecret=***");
    free(out);
    out = redact("VPSProtocol=4.00&TxType=PAYMENT&CardNumber=4929000000006&CV2=123"
                 "&Password=p+w");
    assert_present(out, "CardNumber=***");
    assert_present(out, "Password=***");
    assert_present(out, "TxType=PAYMENT");
    assert_absent(out, "4929000000006");
    free(out);
}

static void test_invalid_json_falls_back(void **state)
{
    char *out;
    (void)state;
    /* truncated JSON: text rules still catch quoted members */
    out = redact("{\"user\":\"a\",\"password\": \"hun\\\"ter2\", \"nested\":{\"api_token\":'t0k'");
    assert_present(out, "\"password\": \"***\"");
    assert_present(out, "\"api_token\":'***'");
    assert_present(out, "\"user\":\"a\"");
    assert_absent(out, "hun");
    assert_absent(out, "t0k");
    free(out);
    /* header-like text */
    out = redact("Authorization: Bearer abc.def\r\nX-Trace: 1\r\n");
    assert_string_equal(out, "Authorization: ***\r\nX-Trace: 1\r\n");
    free(out);
    /* free text mentioning a secret word without a value is left alone */
    out = redact("the token expired, please re-authorize");
    assert_string_equal(out, "the token expired, please re-authorize");
    free(out);
}

static void test_xml_body(void **state)
{
    char *out;
    (void)state;
    out = redact("<Logon><Operator>ADMIN</Operator><OperatorPassword>pw1</OperatorPassword>"
                 "<CompanyPassword/><Company Password=\"cpw\">EDU1</Company></Logon>");
    assert_string_equal(out, "<Logon><Operator>ADMIN</Operator>"
                             "<OperatorPassword>***</OperatorPassword><CompanyPassword/>"
                             "<Company Password=\"***\">EDU1</Company></Logon>");
    free(out);
}

static void test_url(void **state)
{
    char *out;
    (void)state;
    out = pb_trace_redact_url("https://erp.example/SYSPROWCFService/Rest/Logon?Operator=ADMIN"
                              "&OperatorPassword=op%20pw&CompanyId=EDU1&CompanyPassword=cpw");
    assert_string_equal(out, "https://erp.example/SYSPROWCFService/Rest/Logon?Operator=ADMIN"
                             "&OperatorPassword=***&CompanyId=EDU1&CompanyPassword=***");
    free(out);
    out = pb_trace_redact_url("https://api.example/v1?api_key=k1&Signature=s&access_token=t&x&y=");
    assert_string_equal(out,
                        "https://api.example/v1?api_key=***&Signature=s&access_token=***&x&y=");
    free(out);
    out = pb_trace_redact_url("https://u:pa55@host.example:8443/p?q=1#access_token=abc&state=s");
    assert_string_equal(out, "https://u:***@host.example:8443/p?q=1#access_token=***&state=s");
    free(out);
    out = pb_trace_redact_url("http://127.0.0.1:8080/api.xro/2.0/Invoices/42");
    assert_string_equal(out, "http://127.0.0.1:8080/api.xro/2.0/Invoices/42");
    free(out);
    out = pb_trace_redact_url("/relative?next=https://a:b@c/&Token=1");
    assert_string_equal(out, "/relative?next=https://a:b@c/&Token=***");
    free(out);
    out = pb_trace_redact_url(NULL);
    assert_string_equal(out, "");
    free(out);
}

static void test_truncation(void **state)
{
    enum { N = 20000 };
    char *body = malloc(N + 1), *out;
    char note[64];
    (void)state;
    memset(body, 'a', N);
    body[N] = '\0';
    out = pb_trace_redact_body(body, N);
    snprintf(note, sizeof(note), "...(truncated %d bytes)", N - PB_TRACE_BODY_MAX);
    assert_int_equal(strlen(out), PB_TRACE_BODY_MAX + strlen(note));
    assert_string_equal(out + PB_TRACE_BODY_MAX, note);
    free(out);

    /* a 2-byte character straddling the limit is not split */
    memset(body, 'a', PB_TRACE_BODY_MAX - 1);
    memcpy(body + PB_TRACE_BODY_MAX - 1, "\xc3\xa9", 2); /* é */
    memset(body + PB_TRACE_BODY_MAX + 1, 'b', 99);
    out = pb_trace_redact_body(body, PB_TRACE_BODY_MAX + 100);
    assert_string_equal(out + PB_TRACE_BODY_MAX - 1, "...(truncated 101 bytes)");
    free(out);

    /* exactly at the limit: untouched */
    memset(body, 'c', PB_TRACE_BODY_MAX);
    out = pb_trace_redact_body(body, PB_TRACE_BODY_MAX);
    assert_int_equal(strlen(out), PB_TRACE_BODY_MAX);
    free(out);
    free(body);
}

static void test_bytes_are_made_safe(void **state)
{
    const char raw[] = "ok\0\xff\xfe token=x \xc3\xa9";
    char *out = pb_trace_redact_body(raw, sizeof(raw) - 1);
    (void)state;
    assert_string_equal(out, "ok??? token=*** \xc3\xa9");
    json_t *s = json_string(out); /* valid UTF-8 */
    assert_non_null(s);
    json_decref(s);
    free(out);
    out = pb_trace_redact_body(NULL, 0);
    assert_string_equal(out, "");
    free(out);
}

static void test_trace_record(void **state)
{
    struct pb_http_call call;
    struct pb_err err;
    json_t *trace = json_array();
    char resp[] = "{\"Status\":\"ERROR\",\"Message\":\"card 4111111111111111 refused\"}";
    char *dump;
    (void)state;
    memset(&call, 0, sizeof(call));
    call.method = "POST";
    call.url = "https://identity.example/connect/token?client_secret=topsecret1";
    call.headers[0] = "Authorization: Basic SEADERSECRET";
    call.body = "grant_type=client_credentials&client_secret=topsecret2";
    call.basic_password = "topsecret3";
    call.status = 400;
    call.duration_ns = 1500000;
    call.response = resp;
    call.response_len = strlen(resp);
    pb_err_set(&err, PB_ERR_PERMANENT, "POST https://identity.example/connect/token: HTTP 400");

    pb_trace_http(NULL, &call, PB_ERR_PERMANENT, &err); /* no-op */
    pb_trace_http(trace, &call, PB_ERR_PERMANENT, &err);
    assert_int_equal(json_array_size(trace), 1);
    json_t *rec = json_array_get(trace, 0);
    assert_int_equal(json_object_size(rec), 7);
    assert_string_equal(json_string_value(json_object_get(rec, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(rec, "url")),
                        "https://identity.example/connect/token?client_secret=***");
    assert_int_equal(json_integer_value(json_object_get(rec, "status")), 400);
    assert_int_equal(json_integer_value(json_object_get(rec, "duration_ms")), 1);
    assert_string_equal(json_string_value(json_object_get(rec, "error")), err.msg);
    assert_string_equal(json_string_value(json_object_get(rec, "request")),
                        "grant_type=client_credentials&client_secret=***");
    dump = json_dumps(trace, 0);
    assert_absent(dump, "topsecret");
    assert_absent(dump, "SEADERSECRET");
    assert_absent(dump, "4111111111111111");
    assert_present(dump, "************1111");
    free(dump);

    /* success: error is null; no reply: status null */
    call.status = 0;
    call.body = NULL;
    call.response = NULL;
    pb_trace_http(trace, &call, PB_OK, NULL);
    rec = json_array_get(trace, 1);
    assert_true(json_is_null(json_object_get(rec, "error")));
    assert_true(json_is_null(json_object_get(rec, "status")));
    assert_true(json_is_null(json_object_get(rec, "request")));
    pb_trace_http(trace, &call, PB_ERR_TRANSIENT, NULL);
    rec = json_array_get(trace, 2);
    assert_string_equal(json_string_value(json_object_get(rec, "error")), "transient");

    /* bounded: the oldest records go */
    for (int i = 0; i < 100; i++)
        pb_trace_http(trace, &call, PB_OK, NULL);
    assert_true(json_array_size(trace) <= 64);
    json_decref(trace);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_body),
        cmocka_unit_test(test_pan_in_free_text),
        cmocka_unit_test(test_form_body),
        cmocka_unit_test(test_invalid_json_falls_back),
        cmocka_unit_test(test_xml_body),
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_bytes_are_made_safe),
        cmocka_unit_test(test_trace_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
