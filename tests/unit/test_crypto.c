/*
 * tests/unit/test_crypto.c: digests, MACs, codecs, randomness and sealed
 * secrets (core/crypto.c).
 *
 * Vectors: HMAC-SHA256 from RFC 4231 (test cases 1, 2, 4 and 6), SHA-256
 * from FIPS 180-2 ("abc", ""), MD5 from RFC 1321, base64 from RFC 4648
 * section 10. The key-loading tests set PAYBRIDGE_SECRET_KEY in this
 * process only and write key files under $TMPDIR (or /tmp).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/crypto.h"

static void hex_of(const unsigned char *b, size_t n, char *out)
{
    assert_int_equal(pb_hex_encode(b, n, out, 2 * n + 1), PB_OK);
}

/* ---- digests and MACs ------------------------------------------------------------ */

static void expect_hmac(const void *key, size_t keylen, const char *msg, const char *want_hex)
{
    unsigned char mac[PB_SHA256_LEN];
    char hex[2 * PB_SHA256_LEN + 1];
    assert_int_equal(pb_hmac_sha256(key, keylen, msg, strlen(msg), mac), PB_OK);
    hex_of(mac, sizeof(mac), hex);
    assert_string_equal(hex, want_hex);
}

static void test_hmac_sha256_rfc4231(void **state)
{
    (void)state;
    unsigned char key[131];

    memset(key, 0x0b, 20); /* test case 1 */
    expect_hmac(key, 20, "Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    expect_hmac("Jefe", 4, "what do ya want for nothing?", /* test case 2 */
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    {
        /* test case 4: key 0x01..0x19, data 50 x 0xcd */
        unsigned char data[51];
        for (int i = 0; i < 25; i++)
            key[i] = (unsigned char)(i + 1);
        memset(data, 0xcd, 50);
        data[50] = '\0';
        expect_hmac(key, 25, (const char *)data,
                    "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
    }
    memset(key, 0xaa, 131); /* test case 6: key longer than the block size */
    expect_hmac(key, 131, "Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* Empty key and message (value from Python's hmac module). */
    expect_hmac(NULL, 0, "", "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

static void test_sha256_and_md5(void **state)
{
    (void)state;
    unsigned char md[PB_SHA256_LEN];
    char hex[2 * PB_SHA256_LEN + 1], md5[33];

    assert_int_equal(pb_sha256("abc", 3, md), PB_OK);
    hex_of(md, sizeof(md), hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(pb_sha256(NULL, 0, md), PB_OK);
    hex_of(md, sizeof(md), hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    assert_int_equal(pb_md5_hex_upper("", 0, md5), PB_OK);
    assert_string_equal(md5, "D41D8CD98F00B204E9800998ECF8427E");
    assert_int_equal(pb_md5_hex_upper("abc", 3, md5), PB_OK);
    assert_string_equal(md5, "900150983CD24FB0D6963F7D28E17F72");
    assert_int_equal(pb_md5_hex_upper("message digest", 14, md5), PB_OK);
    assert_string_equal(md5, "F96B697D7CB7938D525A2F31AAF161D0");
}

/* ---- codecs ------------------------------------------------------------------------ */

static void test_hex(void **state)
{
    (void)state;
    const unsigned char bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char hex[13];
    unsigned char back[8];
    size_t n = 0;
    struct pb_err err = {0};

    assert_int_equal(pb_hex_encode(bytes, sizeof(bytes), hex, sizeof(hex)), PB_OK);
    assert_string_equal(hex, "00017f80abff");
    assert_int_equal(pb_hex_encode(bytes, sizeof(bytes), hex, 12), PB_ERR_TOOBIG);
    assert_int_equal(pb_hex_encode(bytes, 0, hex, 1), PB_OK);
    assert_string_equal(hex, "");

    assert_int_equal(pb_hex_decode("00017f80abff", 12, back, sizeof(back), &n, &err), PB_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(back, bytes, 6);
    assert_int_equal(pb_hex_decode("00017F80ABFF", 12, back, sizeof(back), &n, &err), PB_OK);
    assert_memory_equal(back, bytes, 6);

    assert_int_equal(pb_hex_decode("abc", 3, back, sizeof(back), &n, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "odd length"));
    assert_int_equal(pb_hex_decode("0g", 2, back, sizeof(back), &n, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "offset 1"));
    assert_int_equal(pb_hex_decode("0x00", 4, back, sizeof(back), &n, &err), PB_ERR_INVALID);
    assert_int_equal(pb_hex_decode("00 1", 4, back, sizeof(back), &n, &err), PB_ERR_INVALID);
    assert_int_equal(pb_hex_decode("000102030405060708", 18, back, sizeof(back), &n, &err),
                     PB_ERR_TOOBIG);
}

static void expect_b64(const char *raw, const char *want)
{
    char *enc = pb_base64_encode(raw, strlen(raw));
    unsigned char *dec = NULL;
    size_t n = 0;
    assert_non_null(enc);
    assert_string_equal(enc, want);
    assert_int_equal(pb_base64_decode(enc, strlen(enc), &dec, &n, NULL), PB_OK);
    assert_int_equal(n, strlen(raw));
    assert_memory_equal(dec, raw, n);
    assert_int_equal(dec[n], '\0');
    free(enc);
    free(dec);
}

static void test_base64_rfc4648(void **state)
{
    (void)state;
    expect_b64("", "");
    expect_b64("f", "Zg==");
    expect_b64("fo", "Zm8=");
    expect_b64("foo", "Zm9v");
    expect_b64("foob", "Zm9vYg==");
    expect_b64("fooba", "Zm9vYmE=");
    expect_b64("foobar", "Zm9vYmFy");
}

static void test_base64_round_trip_all_bytes(void **state)
{
    (void)state;
    unsigned char data[300];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (unsigned char)(i * 7 + 3);
    for (size_t len = 0; len <= sizeof(data); len++) {
        char *enc = pb_base64_encode(data, len);
        unsigned char *dec = NULL;
        size_t n = 0;
        assert_non_null(enc);
        assert_int_equal(strlen(enc), (len + 2) / 3 * 4);
        assert_int_equal(pb_base64_decode(enc, strlen(enc), &dec, &n, NULL), PB_OK);
        assert_int_equal(n, len);
        if (len)
            assert_memory_equal(dec, data, len);
        free(enc);
        free(dec);
    }
    /* Every alphabet character decodes (all 256 byte values encode). */
    {
        unsigned char all[256];
        char *enc;
        unsigned char *dec = NULL;
        size_t n = 0;
        for (int i = 0; i < 256; i++)
            all[i] = (unsigned char)i;
        enc = pb_base64_encode(all, sizeof(all));
        assert_non_null(strchr(enc, '+'));
        assert_non_null(strchr(enc, '/'));
        assert_int_equal(pb_base64_decode(enc, strlen(enc), &dec, &n, NULL), PB_OK);
        assert_int_equal(n, 256);
        assert_memory_equal(dec, all, 256);
        free(enc);
        free(dec);
    }
}

static void test_base64_rejects_garbage(void **state)
{
    (void)state;
    const char *bad[] = {
        "Zg=",      /* length not a multiple of 4 */
        "Zm9vY",    /* ditto */
        "Zg=a",     /* '=' before a data character */
        "Z===",     /* three padding characters */
        "====",     /* only padding */
        "=Zm9",     /* padding first */
        "Zg==Zg==", /* padding in the middle */
        "Zh==",     /* non-zero unused bits: not canonical */
        "Zm9=",     /* ditto, one '=' */
        "Zm 9",     /* whitespace */
        "Zm9v\n\n\n\n",
        "Zm-_",     /* URL-safe alphabet */
        "Zm9\x80",  /* high byte */
        "Zm9*",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned char *dec = (unsigned char *)"untouched";
        size_t n = 99;
        struct pb_err err = {0};
        enum pb_rc rc = pb_base64_decode(bad[i], strlen(bad[i]), &dec, &n, &err);
        if (rc != PB_ERR_INVALID)
            fail_msg("\"%s\" decoded (rc %d)", bad[i], rc);
        assert_string_equal((const char *)dec, "untouched");
        assert_int_equal(n, 99);
        assert_true(err.msg[0] != '\0');
    }
    /* An embedded NUL within the given length is garbage too. */
    {
        unsigned char *dec = NULL;
        size_t n = 0;
        assert_int_equal(pb_base64_decode("Zm\0v", 4, &dec, &n, NULL), PB_ERR_INVALID);
    }
}

static void test_ct_equal(void **state)
{
    (void)state;
    unsigned char a[32], b[32];
    memset(a, 0x11, sizeof(a));
    memcpy(b, a, sizeof(b));
    assert_true(pb_ct_equal(a, b, sizeof(a)));
    b[31] ^= 1;
    assert_false(pb_ct_equal(a, b, sizeof(a)));
    b[31] ^= 1;
    b[0] ^= 0x80;
    assert_false(pb_ct_equal(a, b, sizeof(a)));
    assert_true(pb_ct_equal(a, b, 0));
}

/* ---- randomness ----------------------------------------------------------------------- */

static void test_random_and_uuid(void **state)
{
    (void)state;
    unsigned char r1[32], r2[32], zero[32] = {0};
    char u1[37], u2[37];

    assert_int_equal(pb_random_bytes(r1, sizeof(r1)), PB_OK);
    assert_int_equal(pb_random_bytes(r2, sizeof(r2)), PB_OK);
    assert_false(pb_ct_equal(r1, zero, sizeof(r1)));
    assert_false(pb_ct_equal(r1, r2, sizeof(r1)));
    assert_int_equal(pb_random_bytes(r1, 0), PB_OK);

    for (int round = 0; round < 64; round++) {
        assert_int_equal(pb_uuid4(u1), PB_OK);
        assert_int_equal(strlen(u1), 36);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(u1[i], '-');
            else
                assert_non_null(strchr("0123456789abcdef", u1[i]));
        }
        assert_int_equal(u1[14], '4');
        assert_non_null(strchr("89ab", u1[19]));
    }
    assert_int_equal(pb_uuid4(u2), PB_OK);
    assert_string_not_equal(u1, u2);
}

/* ---- sealed secrets --------------------------------------------------------------------- */

static const unsigned char test_key[PB_SECRET_KEY_LEN] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};

static void round_trip(const char *plain)
{
    char *sealed = NULL, *opened = NULL;
    struct pb_err err = {0};
    assert_int_equal(pb_secret_seal(test_key, plain, &sealed, &err), PB_OK);
    assert_non_null(sealed);
    assert_null(strstr(sealed, plain[0] ? plain : "\x01"));
    assert_int_equal(pb_secret_open(test_key, sealed, &opened, &err), PB_OK);
    assert_string_equal(opened, plain);
    pb_secret_free(opened);
    free(sealed);
}

static void test_seal_round_trip(void **state)
{
    (void)state;
    char *big = malloc(PB_SECRET_PLAINTEXT_MAX + 1);
    round_trip("sk_live_51H8example");
    round_trip("");
    round_trip("p\xc3\xa4ssw\xc3\xb6rd with spaces\nand lines");
    memset(big, 'k', PB_SECRET_PLAINTEXT_MAX);
    big[PB_SECRET_PLAINTEXT_MAX] = '\0';
    round_trip(big);
    free(big);
}

static void test_seal_format_and_fresh_nonce(void **state)
{
    (void)state;
    char *s1 = NULL, *s2 = NULL;
    unsigned char *blob = NULL;
    size_t n = 0;
    assert_int_equal(pb_secret_seal(test_key, "hunter2", &s1, NULL), PB_OK);
    assert_int_equal(pb_secret_seal(test_key, "hunter2", &s2, NULL), PB_OK);
    assert_string_not_equal(s1, s2); /* random nonce each time */
    assert_int_equal(pb_base64_decode(s1, strlen(s1), &blob, &n, NULL), PB_OK);
    assert_int_equal(n, 4 + 12 + 7 + 16);
    assert_memory_equal(blob, "pbv1", 4);
    free(blob);
    free(s1);
    free(s2);
}

/* Decode, flip one bit at `offset` (negative: from the end), re-encode, open. */
static enum pb_rc open_tampered(const char *sealed, long offset, struct pb_err *err)
{
    unsigned char *blob = NULL;
    size_t n = 0;
    char *again, *plain = (char *)"untouched";
    enum pb_rc rc;
    assert_int_equal(pb_base64_decode(sealed, strlen(sealed), &blob, &n, NULL), PB_OK);
    blob[offset < 0 ? (long)n + offset : offset] ^= 0x01;
    again = pb_base64_encode(blob, n);
    rc = pb_secret_open(test_key, again, &plain, err);
    if (rc == PB_OK)
        pb_secret_free(plain);
    else
        assert_string_equal(plain, "untouched");
    free(again);
    free(blob);
    return rc;
}

static void test_seal_tamper_detected(void **state)
{
    (void)state;
    char *sealed = NULL, *plain = NULL;
    struct pb_err err = {0};
    unsigned char wrong_key[PB_SECRET_KEY_LEN];

    assert_int_equal(pb_secret_seal(test_key, "client_secret=abc123", &sealed, NULL), PB_OK);
    assert_int_equal(open_tampered(sealed, 16, &err), PB_ERR_AUTH); /* first ciphertext byte */
    assert_non_null(strstr(err.msg, "tampered"));
    assert_null(strstr(err.msg, "abc123"));
    assert_int_equal(open_tampered(sealed, 20, &err), PB_ERR_AUTH);  /* ciphertext */
    assert_int_equal(open_tampered(sealed, -1, &err), PB_ERR_AUTH);  /* tag */
    assert_int_equal(open_tampered(sealed, 4, &err), PB_ERR_AUTH);   /* nonce */
    assert_int_equal(open_tampered(sealed, 15, &err), PB_ERR_AUTH);  /* nonce, last byte */
    assert_int_equal(open_tampered(sealed, 3, &err), PB_ERR_INVALID); /* "pbv0": version */
    assert_non_null(strstr(err.msg, "version"));
    assert_int_equal(open_tampered(sealed, 0, &err), PB_ERR_INVALID); /* magic */

    memcpy(wrong_key, test_key, sizeof(wrong_key));
    wrong_key[0] ^= 0x80;
    assert_int_equal(pb_secret_open(wrong_key, sealed, &plain, &err), PB_ERR_AUTH);
    assert_null(plain);
    free(sealed);
}

static void test_seal_open_rejects_malformed(void **state)
{
    (void)state;
    char *plain = NULL;
    struct pb_err err = {0};
    char *short_blob = pb_base64_encode("pbv1nonce123tag", 15);
    char *big;

    assert_int_equal(pb_secret_open(test_key, "not base64!", &plain, &err), PB_ERR_INVALID);
    assert_int_equal(pb_secret_open(test_key, "", &plain, &err), PB_ERR_INVALID);
    assert_int_equal(pb_secret_open(test_key, NULL, &plain, &err), PB_ERR_INVALID);
    assert_int_equal(pb_secret_open(test_key, short_blob, &plain, &err), PB_ERR_INVALID);
    assert_non_null(strstr(err.msg, "shorter"));
    assert_null(plain);
    free(short_blob);

    assert_int_equal(pb_secret_seal(test_key, NULL, &plain, &err), PB_ERR_INVALID);
    big = malloc(PB_SECRET_PLAINTEXT_MAX + 2);
    memset(big, 'x', PB_SECRET_PLAINTEXT_MAX + 1);
    big[PB_SECRET_PLAINTEXT_MAX + 1] = '\0';
    assert_int_equal(pb_secret_seal(test_key, big, &plain, &err), PB_ERR_TOOBIG);
    assert_null(plain);
    free(big);
    pb_secret_free(NULL);
}

/* ---- key loading ------------------------------------------------------------------------ */

static const char key_hex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
static const char key_b64[] = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

static char *write_key_file(const char *content, mode_t mode)
{
    const char *dir = getenv("TMPDIR");
    char *path = malloc(512);
    int fd;
    snprintf(path, 512, "%s/pb_test_key_XXXXXX", dir && *dir ? dir : "/tmp");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static void expect_key(const char *spec)
{
    unsigned char key[PB_SECRET_KEY_LEN];
    struct pb_err err = {0};
    memset(key, 0xee, sizeof(key));
    if (pb_secret_key_load(spec, key, &err) != PB_OK)
        fail_msg("key load from %s failed: %s", spec ? spec : "(env)", err.msg);
    assert_memory_equal(key, test_key, sizeof(key));
}

static void expect_key_error(const char *spec, enum pb_rc want, const char *must_not_contain)
{
    unsigned char key[PB_SECRET_KEY_LEN];
    struct pb_err err = {0};
    enum pb_rc rc = pb_secret_key_load(spec, key, &err);
    if (rc != want)
        fail_msg("key load from %s: rc %d, want %d (%s)", spec ? spec : "(env)", rc, want,
                 err.msg);
    assert_true(err.msg[0] != '\0');
    if (must_not_contain && strstr(err.msg, must_not_contain))
        fail_msg("message leaks key material: %s", err.msg);
}

static void test_key_from_env(void **state)
{
    (void)state;
    char upper[sizeof(key_hex)];
    setenv(PB_SECRET_KEY_ENV, key_hex, 1);
    expect_key(NULL);
    expect_key("/nonexistent/ignored/when/env/is/set");
    for (size_t i = 0; i < sizeof(key_hex); i++)
        upper[i] = (char)(key_hex[i] >= 'a' && key_hex[i] <= 'f' ? key_hex[i] - 32 : key_hex[i]);
    setenv(PB_SECRET_KEY_ENV, upper, 1);
    expect_key(NULL);
    setenv(PB_SECRET_KEY_ENV, key_b64, 1);
    expect_key(NULL);

    setenv(PB_SECRET_KEY_ENV, "00010203040506070809", 1); /* too short */
    expect_key_error(NULL, PB_ERR_CONFIG, "0001020304");
    setenv(PB_SECRET_KEY_ENV,
           "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", 1);
    expect_key_error(NULL, PB_ERR_CONFIG, "0102030405");
    setenv(PB_SECRET_KEY_ENV, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8!", 1);
    expect_key_error(NULL, PB_ERR_CONFIG, "AAECAwQF");
    setenv(PB_SECRET_KEY_ENV, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", 1); /* 33 B */
    expect_key_error(NULL, PB_ERR_CONFIG, "AAECAwQF");
    setenv(PB_SECRET_KEY_ENV, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==", 1); /* 34 B */
    expect_key_error(NULL, PB_ERR_CONFIG, "AAECAwQF");
    setenv(PB_SECRET_KEY_ENV, "", 1);
    expect_key_error("/also/ignored", PB_ERR_CONFIG, NULL);
    unsetenv(PB_SECRET_KEY_ENV);
}

static void test_key_from_named_env(void **state)
{
    (void)state;
    unsetenv(PB_SECRET_KEY_ENV);
    setenv("PB_TEST_OTHER_KEY", key_b64, 1);
    expect_key("env:PB_TEST_OTHER_KEY");
    unsetenv("PB_TEST_OTHER_KEY");
    expect_key_error("env:PB_TEST_OTHER_KEY", PB_ERR_CONFIG, NULL);
    expect_key_error("env:", PB_ERR_CONFIG, NULL);
}

static void test_key_from_file(void **state)
{
    (void)state;
    char *p1, *p2, *p3, *p4, *p5, *p6;
    char hex_lf[80], b64_crlf[64];
    unsetenv(PB_SECRET_KEY_ENV);

    snprintf(hex_lf, sizeof(hex_lf), "%s\n", key_hex);
    snprintf(b64_crlf, sizeof(b64_crlf), "%s\r\n", key_b64);
    p1 = write_key_file(key_hex, 0644); /* loads, with a warning in the log */
    p2 = write_key_file(hex_lf, 0600);
    p3 = write_key_file(b64_crlf, 0600);
    p4 = write_key_file("hunter2-password\n", 0600);
    p5 = write_key_file(
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\n", 0600);
    {
        char huge[300];
        memset(huge, 'a', sizeof(huge) - 1);
        huge[sizeof(huge) - 1] = '\0';
        p6 = write_key_file(huge, 0600);
    }
    expect_key(p1);
    expect_key(p2);
    expect_key(p3);
    expect_key_error(p4, PB_ERR_CONFIG, "hunter2");
    expect_key_error(p5, PB_ERR_CONFIG, "0001020304"); /* only one newline is allowed */
    expect_key_error(p6, PB_ERR_CONFIG, "aaaaaaaa");
    expect_key_error("/nonexistent/pb/key", PB_ERR_IO, NULL);
    expect_key_error("/", PB_ERR_CONFIG, NULL); /* a directory */
    expect_key_error(NULL, PB_ERR_CONFIG, NULL);
    expect_key_error("", PB_ERR_CONFIG, NULL);

    {
        /* A key loaded from a file seals and opens. */
        unsigned char key[PB_SECRET_KEY_LEN];
        char *sealed = NULL, *plain = NULL;
        assert_int_equal(pb_secret_key_load(p2, key, NULL), PB_OK);
        assert_int_equal(pb_secret_seal(key, "s3cret", &sealed, NULL), PB_OK);
        assert_int_equal(pb_secret_open(test_key, sealed, &plain, NULL), PB_OK);
        assert_string_equal(plain, "s3cret");
        pb_secret_free(plain);
        free(sealed);
    }
    {
        char *paths[] = {p1, p2, p3, p4, p5, p6};
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
            unlink(paths[i]);
            free(paths[i]);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_sha256_rfc4231),
        cmocka_unit_test(test_sha256_and_md5),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_base64_rfc4648),
        cmocka_unit_test(test_base64_round_trip_all_bytes),
        cmocka_unit_test(test_base64_rejects_garbage),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_random_and_uuid),
        cmocka_unit_test(test_seal_round_trip),
        cmocka_unit_test(test_seal_format_and_fresh_nonce),
        cmocka_unit_test(test_seal_tamper_detected),
        cmocka_unit_test(test_seal_open_rejects_malformed),
        cmocka_unit_test(test_key_from_env),
        cmocka_unit_test(test_key_from_named_env),
        cmocka_unit_test(test_key_from_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
