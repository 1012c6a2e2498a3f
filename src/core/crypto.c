/*
 * core/crypto.c: digests, MACs, codecs, randomness and sealed secrets on top
 * of OpenSSL 3 (EVP and EVP_MAC APIs only; nothing deprecated in 3.0).
 *
 * What it owns. No global state. Every OpenSSL context (EVP_CIPHER_CTX) is
 * created and freed inside one call. Buffers that held plaintext secrets or
 * key bytes are wiped with OPENSSL_cleanse() before they are freed or go out
 * of scope, including on error paths.
 *
 * Invariants.
 *   - Error messages carry no secret: for a bad key they give its source and
 *     its length, for bad base64 the offset, never a character or a byte.
 *   - Decoders are strict and linear; they accept exactly one spelling of each
 *     value (base64 unused bits must be zero), so a value that round-trips
 *     through the store compares equal as text.
 *   - A sealed secret is only returned after its GCM tag has verified; a
 *     partially decrypted buffer is wiped, never handed out.
 *
 * Rejected designs.
 *   - OpenSSL's EVP_DecodeBlock/BIO base64: they skip whitespace, accept
 *     missing padding in some paths and report the length without padding, so
 *     "decode rejects garbage" would need a second validating pass anyway.
 *   - AES-CBC + HMAC or ChaCha20-Poly1305: GCM is one primitive with
 *     authentication, hardware-accelerated everywhere we deploy; a 96-bit
 *     random nonce is safe for the few million seals a key will ever see.
 *   - Deriving the sealing key from a passphrase (PBKDF2/scrypt): operators
 *     already manage a random 32-byte key through their secret manager; a
 *     passphrase would add a weak link and a tuning knob.
 *   - Refusing group/world-readable key files (like ssh): containers often
 *     mount secrets 0644 into a single-user namespace, so we warn in the log
 *     instead of failing start-up.
 */
#include "core/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/log.h"

#define SEAL_MAGIC "pbv1"
#define SEAL_MAGIC_LEN 4
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_OVERHEAD (SEAL_MAGIC_LEN + SEAL_NONCE_LEN + SEAL_TAG_LEN)
/* Longest base64 text pb_secret_open() will look at. */
#define SEAL_B64_MAX (((PB_SECRET_PLAINTEXT_MAX + SEAL_OVERHEAD + 2) / 3) * 4)
/* A key file bigger than this is not a key (64 hex digits + CRLF = 66). */
#define KEY_FILE_MAX 128

static const char hex_lower[] = "0123456789abcdef";
static const char hex_upper[] = "0123456789ABCDEF";
static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* ---- digests and MACs ------------------------------------------------------ */

enum pb_rc pb_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
                          unsigned char out[PB_SHA256_LEN])
{
    static const unsigned char empty[1] = {0};
    size_t outlen = 0;
    /* EVP_Q_mac() wants non-NULL pointers even for empty inputs. */
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, keylen ? key : empty, keylen,
                   len ? msg : empty, len, out, PB_SHA256_LEN, &outlen) ||
        outlen != PB_SHA256_LEN)
        return PB_ERR_INTERNAL;
    return PB_OK;
}

enum pb_rc pb_sha256(const void *data, size_t len, unsigned char out[PB_SHA256_LEN])
{
    static const unsigned char empty[1] = {0};
    unsigned int outlen = 0;
    if (!EVP_Digest(len ? data : empty, len, out, &outlen, EVP_sha256(), NULL) ||
        outlen != PB_SHA256_LEN)
        return PB_ERR_INTERNAL;
    return PB_OK;
}

enum pb_rc pb_md5_hex_upper(const void *data, size_t len, char out[33])
{
    static const unsigned char empty[1] = {0};
    unsigned char md[16];
    unsigned int outlen = 0;
    if (!EVP_Digest(len ? data : empty, len, md, &outlen, EVP_md5(), NULL) || outlen != 16)
        return PB_ERR_INTERNAL;
    for (size_t i = 0; i < 16; i++) {
        out[2 * i] = hex_upper[md[i] >> 4];
        out[2 * i + 1] = hex_upper[md[i] & 0x0f];
    }
    out[32] = '\0';
    return PB_OK;
}

/* ---- codecs ---------------------------------------------------------------- */

enum pb_rc pb_hex_encode(const void *data, size_t len, char *out, size_t out_size)
{
    const unsigned char *p = data;
    if (len > (SIZE_MAX - 1) / 2 || out_size < 2 * len + 1)
        return PB_ERR_TOOBIG;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex_lower[p[i] >> 4];
        out[2 * i + 1] = hex_lower[p[i] & 0x0f];
    }
    out[2 * len] = '\0';
    return PB_OK;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum pb_rc pb_hex_decode(const char *hex, size_t hexlen, unsigned char *out, size_t out_size,
                         size_t *out_len, struct pb_err *err)
{
    if (hexlen % 2 != 0)
        return pb_err_set(err, PB_ERR_INVALID, "hex string has odd length %zu", hexlen);
    if (out_size < hexlen / 2)
        return pb_err_set(err, PB_ERR_TOOBIG, "hex string decodes to %zu bytes, room for %zu",
                          hexlen / 2, out_size);
    for (size_t i = 0; i < hexlen; i += 2) {
        int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
        if (hi < 0 || lo < 0)
            return pb_err_set(err, PB_ERR_INVALID, "hex string has a non-hex character at offset %zu",
                              hi < 0 ? i : i + 1);
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *out_len = hexlen / 2;
    return PB_OK;
}

char *pb_base64_encode(const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t o = 0, i = 0;
    char *out;
    if (len > (SIZE_MAX / 4 - 1) * 3)
        return NULL;
    out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

enum pb_rc pb_base64_decode(const char *text, size_t len, unsigned char **out, size_t *out_len,
                            struct pb_err *err)
{
    unsigned char *buf;
    size_t o = 0, pad = 0;

    if (len % 4 != 0)
        return pb_err_set(err, PB_ERR_INVALID,
                          "base64 text has length %zu, which is not a multiple of 4", len);
    if (len >= 4 && text[len - 1] == '=')
        pad = text[len - 2] == '=' ? 2 : 1;
    buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory decoding %zu bytes of base64", len);
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int v[4];
        for (size_t j = 0; j < 4; j++) {
            v[j] = b64_value(text[i + j]);
            if (v[j] >= 0)
                continue;
            /* '=' is only legal as the final 1 or 2 characters. */
            if (text[i + j] == '=' && last && j >= 4 - pad)
                continue;
            OPENSSL_cleanse(buf, o);
            free(buf);
            return pb_err_set(err, PB_ERR_INVALID,
                              text[i + j] == '='
                                  ? "base64 text has misplaced '=' padding at offset %zu"
                                  : "base64 text has a character outside the alphabet at offset %zu",
                              i + j);
        }
        buf[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (last && pad == 2) {
            if (v[1] & 0x0f)
                goto noncanonical;
            break;
        }
        buf[o++] = (unsigned char)((v[1] & 0x0f) << 4 | v[2] >> 2);
        if (last && pad == 1) {
            if (v[2] & 0x03)
                goto noncanonical;
            break;
        }
        buf[o++] = (unsigned char)((v[2] & 0x03) << 6 | v[3]);
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return PB_OK;

noncanonical:
    OPENSSL_cleanse(buf, o);
    free(buf);
    return pb_err_set(err, PB_ERR_INVALID,
                      "base64 text is not canonical: unused bits before the padding are not zero");
}

int pb_ct_equal(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

/* ---- randomness ------------------------------------------------------------- */

enum pb_rc pb_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1)
            return PB_ERR_INTERNAL;
        p += chunk;
        n -= (size_t)chunk;
    }
    return PB_OK;
}

enum pb_rc pb_uuid4(char out[37])
{
    unsigned char b[16];
    size_t o = 0;
    if (pb_random_bytes(b, sizeof(b)) != PB_OK)
        return PB_ERR_INTERNAL;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex_lower[b[i] >> 4];
        out[o++] = hex_lower[b[i] & 0x0f];
    }
    out[o] = '\0';
    return PB_OK;
}

/* ---- secrets at rest ---------------------------------------------------------- */

enum pb_rc pb_secret_seal(const unsigned char key[PB_SECRET_KEY_LEN], const char *plaintext,
                          char **out_b64, struct pb_err *err)
{
    static const unsigned char empty[1] = {0};
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *blob = NULL;
    size_t ptlen, bloblen;
    int n = 0, fin = 0;
    enum pb_rc rc = PB_ERR_INTERNAL;
    char *b64;

    if (!plaintext)
        return pb_err_set(err, PB_ERR_INVALID, "no secret to seal");
    ptlen = strnlen(plaintext, PB_SECRET_PLAINTEXT_MAX + 1);
    if (ptlen > PB_SECRET_PLAINTEXT_MAX)
        return pb_err_set(err, PB_ERR_TOOBIG, "secret is longer than %d bytes",
                          PB_SECRET_PLAINTEXT_MAX);
    bloblen = SEAL_OVERHEAD + ptlen;
    blob = malloc(bloblen);
    if (!blob)
        return pb_err_set(err, PB_ERR_NOMEM, "out of memory sealing a secret");
    memcpy(blob, SEAL_MAGIC, SEAL_MAGIC_LEN);
    if (pb_random_bytes(blob + SEAL_MAGIC_LEN, SEAL_NONCE_LEN) != PB_OK) {
        pb_err_set(err, rc, "the random number generator failed");
        goto out;
    }
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory sealing a secret");
        goto out;
    }
    /* GCM's default IV length is 12 bytes, which is SEAL_NONCE_LEN. */
    if (EVP_EncryptInit_ex2(ctx, EVP_aes_256_gcm(), key, blob + SEAL_MAGIC_LEN, NULL) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)SEAL_MAGIC, SEAL_MAGIC_LEN) != 1 ||
        EVP_EncryptUpdate(ctx, blob + SEAL_MAGIC_LEN + SEAL_NONCE_LEN, &n,
                          ptlen ? (const unsigned char *)plaintext : empty, (int)ptlen) != 1 ||
        EVP_EncryptFinal_ex(ctx, blob + SEAL_MAGIC_LEN + SEAL_NONCE_LEN + n, &fin) != 1 ||
        (size_t)(n + fin) != ptlen ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SEAL_TAG_LEN, blob + bloblen - SEAL_TAG_LEN) !=
            1) {
        pb_err_set(err, rc, "AES-256-GCM encryption failed");
        goto out;
    }
    b64 = pb_base64_encode(blob, bloblen);
    if (!b64) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory sealing a secret");
        goto out;
    }
    *out_b64 = b64;
    rc = PB_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(blob, bloblen); /* the ciphertext is not secret, but cheap to wipe */
    free(blob);
    return rc;
}

enum pb_rc pb_secret_open(const unsigned char key[PB_SECRET_KEY_LEN], const char *sealed_b64,
                          char **out_plain, struct pb_err *err)
{
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *blob = NULL, *plain = NULL;
    unsigned char tag[SEAL_TAG_LEN];
    size_t b64len, bloblen = 0, ctlen = 0;
    int n = 0, fin = 0;
    enum pb_rc rc;
    struct pb_err sub;

    if (!sealed_b64)
        return pb_err_set(err, PB_ERR_INVALID, "no sealed secret given");
    b64len = strnlen(sealed_b64, SEAL_B64_MAX + 1);
    if (b64len > SEAL_B64_MAX)
        return pb_err_set(err, PB_ERR_INVALID, "sealed secret is longer than %d characters",
                          SEAL_B64_MAX);
    rc = pb_base64_decode(sealed_b64, b64len, &blob, &bloblen, &sub);
    if (rc)
        return pb_err_set(err, rc == PB_ERR_NOMEM ? rc : PB_ERR_INVALID,
                          "sealed secret is not valid: %s", sub.msg);
    if (bloblen < SEAL_OVERHEAD) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        "sealed secret is not valid: %zu bytes is shorter than the %d-byte "
                        "envelope",
                        bloblen, SEAL_OVERHEAD);
        goto out;
    }
    if (memcmp(blob, SEAL_MAGIC, SEAL_MAGIC_LEN) != 0) {
        rc = pb_err_set(err, PB_ERR_INVALID,
                        memcmp(blob, SEAL_MAGIC, 3) == 0
                            ? "sealed secret has an unsupported format version"
                            : "sealed secret is not valid: it does not start with the \"pbv1\" "
                              "marker");
        goto out;
    }
    ctlen = bloblen - SEAL_OVERHEAD;
    memcpy(tag, blob + bloblen - SEAL_TAG_LEN, SEAL_TAG_LEN);
    plain = malloc(ctlen + 1);
    ctx = EVP_CIPHER_CTX_new();
    if (!plain || !ctx) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory opening a sealed secret");
        goto out;
    }
    if (EVP_DecryptInit_ex2(ctx, EVP_aes_256_gcm(), key, blob + SEAL_MAGIC_LEN, NULL) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)SEAL_MAGIC, SEAL_MAGIC_LEN) != 1 ||
        EVP_DecryptUpdate(ctx, plain, &n, blob + SEAL_MAGIC_LEN + SEAL_NONCE_LEN, (int)ctlen) !=
            1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, SEAL_TAG_LEN, tag) != 1) {
        rc = pb_err_set(err, PB_ERR_INTERNAL, "AES-256-GCM decryption failed to start");
        goto out;
    }
    if (EVP_DecryptFinal_ex(ctx, plain + n, &fin) != 1) {
        rc = pb_err_set(err, PB_ERR_AUTH,
                        "sealed secret failed authentication: wrong key or tampered data");
        goto out;
    }
    if ((size_t)(n + fin) != ctlen || memchr(plain, '\0', ctlen)) {
        rc = pb_err_set(err, PB_ERR_INVALID, "sealed secret does not hold a text secret");
        goto out;
    }
    plain[ctlen] = '\0';
    *out_plain = (char *)plain;
    plain = NULL;
    rc = PB_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (plain) {
        OPENSSL_cleanse(plain, ctlen + 1);
        free(plain);
    }
    OPENSSL_cleanse(blob, bloblen);
    free(blob);
    return rc;
}

void pb_secret_free(char *secret)
{
    if (!secret)
        return;
    OPENSSL_cleanse(secret, strlen(secret));
    free(secret);
}

/* Decode `len` characters of key text from `source` (for messages) into key. */
static enum pb_rc key_decode(const char *text, size_t len, const char *source,
                             unsigned char key[PB_SECRET_KEY_LEN], struct pb_err *err)
{
    unsigned char tmp[PB_SECRET_KEY_LEN];
    unsigned char *b64 = NULL;
    size_t n = 0;
    enum pb_rc rc = PB_ERR_CONFIG;

    /* One trailing newline (from `echo` or an editor) is not part of the key. */
    if (len > 0 && text[len - 1] == '\n')
        len--;
    if (len > 0 && text[len - 1] == '\r')
        len--;
    if (len == 2 * PB_SECRET_KEY_LEN) {
        if (pb_hex_decode(text, len, tmp, sizeof(tmp), &n, NULL) != PB_OK) {
            OPENSSL_cleanse(tmp, sizeof(tmp));
            return pb_err_set(err, PB_ERR_CONFIG,
                              "%s has 64 characters but they are not all hex digits", source);
        }
        memcpy(key, tmp, PB_SECRET_KEY_LEN);
        OPENSSL_cleanse(tmp, sizeof(tmp));
        return PB_OK;
    }
    if (len == (PB_SECRET_KEY_LEN + 2) / 3 * 4) {
        if (pb_base64_decode(text, len, &b64, &n, NULL) != PB_OK)
            return pb_err_set(err, PB_ERR_CONFIG, "%s has 44 characters but is not valid base64",
                              source);
        if (n == PB_SECRET_KEY_LEN) {
            memcpy(key, b64, PB_SECRET_KEY_LEN);
            rc = PB_OK;
        } else {
            pb_err_set(err, rc, "%s is base64 of %zu bytes; the key must be 32 bytes", source, n);
        }
        OPENSSL_cleanse(b64, n);
        free(b64);
        return rc;
    }
    return pb_err_set(err, PB_ERR_CONFIG,
                      "%s is not a key: expected 64 hex digits or base64 of 32 bytes (44 "
                      "characters), got %zu characters",
                      source, len);
}

static enum pb_rc key_from_file(const char *path, unsigned char key[PB_SECRET_KEY_LEN],
                                struct pb_err *err)
{
    char buf[KEY_FILE_MAX + 1];
    char source[PB_ERR_MSG_MAX / 2];
    struct stat st;
    size_t got = 0;
    enum pb_rc rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    snprintf(source, sizeof(source), "key file %s", path);
    if (fd < 0)
        return pb_err_set(err, PB_ERR_IO, "cannot open %s: %s", source, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pb_err_set(err, PB_ERR_CONFIG, "%s is not a regular file", source);
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        pb_log(PB_LOG_WARN, "secret_key.permissive_mode", "path", path, "hint",
               "chmod 600 the key file", NULL);
    while (got < sizeof(buf)) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof(buf));
            return pb_err_set(err, PB_ERR_IO, "cannot read %s: %s", source, strerror(e));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got > KEY_FILE_MAX) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return pb_err_set(err, PB_ERR_CONFIG, "%s is larger than %d bytes, too large to be a key",
                          source, KEY_FILE_MAX);
    }
    rc = key_decode(buf, got, source, key, err);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

enum pb_rc pb_secret_key_load(const char *spec, unsigned char key[PB_SECRET_KEY_LEN],
                              struct pb_err *err)
{
    char source[PB_ERR_MSG_MAX / 2];
    const char *value = getenv(PB_SECRET_KEY_ENV);

    if (value)
        return key_decode(value, strlen(value), "environment variable " PB_SECRET_KEY_ENV, key,
                          err);
    if (!spec || !*spec)
        return pb_err_set(err, PB_ERR_CONFIG,
                          "no secret key configured: set " PB_SECRET_KEY_ENV
                          " to 64 hex digits (e.g. from `openssl rand -hex 32`) or configure a "
                          "key file");
    if (strncmp(spec, "env:", 4) == 0) {
        snprintf(source, sizeof(source), "environment variable %s", spec + 4);
        value = spec[4] ? getenv(spec + 4) : NULL;
        if (!value)
            return pb_err_set(err, PB_ERR_CONFIG, "secret key source %s is not set", source);
        return key_decode(value, strlen(value), source, key, err);
    }
    return key_from_file(spec, key, err);
}
