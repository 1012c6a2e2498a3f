/*
 * core/crypto.h: the only door to OpenSSL.
 *
 * Digests and MACs for webhook signatures (HMAC-SHA256) and the Opayo
 * reporting API (upper-case hex MD5), hex and base64 codecs, a constant-time
 * compare, random bytes and UUIDs, and sealing of secrets at rest with
 * AES-256-GCM. Other modules include this header instead of <openssl/...>,
 * so that the choice of library, and the rules below, live in one place.
 *
 * Rules.
 *   - Compare MACs, signatures and tokens with pb_ct_equal(), never memcmp().
 *   - Error messages never contain key material, plaintext or MACs; they say
 *     which input was wrong and how, so they are safe to log.
 *   - Functions that return allocated memory say so; the caller frees it
 *     with free(). Buffers that held secrets are wiped before being freed.
 *   - Every function is thread-safe (OpenSSL 3 needs no locking setup).
 *
 * Sealed secret format (version 1), the text stored in config or the store:
 *     base64( "pbv1" || nonce[12] || ciphertext || tag[16] )
 * with AES-256-GCM, a fresh random nonce per seal and the 4 magic bytes
 * "pbv1" as additional authenticated data, so the version cannot be swapped.
 */
#ifndef PB_CORE_CRYPTO_H
#define PB_CORE_CRYPTO_H

#include <stddef.h>

#include "core/err.h"

#define PB_SHA256_LEN 32
#define PB_SECRET_KEY_LEN 32
/* Largest plaintext pb_secret_seal() accepts (API keys, OAuth refresh tokens,
 * private keys in PEM all fit). */
#define PB_SECRET_PLAINTEXT_MAX (64 * 1024)
/* Environment variable read first by pb_secret_key_load(). */
#define PB_SECRET_KEY_ENV "PAYBRIDGE_SECRET_KEY"

/* ---- digests and MACs ---------------------------------------------------- */

/* HMAC-SHA256 of msg under key into out. Returns PB_OK, or PB_ERR_INTERNAL if
 * OpenSSL fails (it does not for valid arguments). key and msg may be NULL
 * when their length is 0. */
enum pb_rc pb_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
                          unsigned char out[PB_SHA256_LEN]);

/* SHA-256 of data into out. */
enum pb_rc pb_sha256(const void *data, size_t len, unsigned char out[PB_SHA256_LEN]);

/* MD5 of data as 32 upper-case hex digits plus NUL, as the Opayo reporting
 * API wants it. MD5 is broken as a hash; this exists only for that protocol.
 * Returns PB_ERR_INTERNAL when MD5 is unavailable (an OpenSSL FIPS setup). */
enum pb_rc pb_md5_hex_upper(const void *data, size_t len, char out[33]);

/* ---- codecs ---------------------------------------------------------------- */

/* Lower-case hex of `len` bytes into out, which must hold 2 * len + 1 bytes.
 * Returns PB_ERR_TOOBIG when out_size is too small. */
enum pb_rc pb_hex_encode(const void *data, size_t len, char *out, size_t out_size);

/* Decode `hexlen` hex digits (either case; no spaces, no "0x") into out.
 * *out_len receives the byte count (hexlen / 2). PB_ERR_INVALID for an odd
 * length or a non-hex character, PB_ERR_TOOBIG when out_size is too small. */
enum pb_rc pb_hex_decode(const char *hex, size_t hexlen, unsigned char *out, size_t out_size,
                         size_t *out_len, struct pb_err *err);

/* Standard base64 (RFC 4648 section 4, '+' '/', with '=' padding) of `len`
 * bytes. Returns a NUL-terminated string the caller frees with free(), or
 * NULL when out of memory. */
char *pb_base64_encode(const void *data, size_t len);

/* Strict decode of `len` characters of standard padded base64. Rejects with
 * PB_ERR_INVALID: a length that is not a multiple of 4, characters outside
 * the alphabet (whitespace included), misplaced '=', and non-zero unused bits
 * (so each byte string has exactly one accepted encoding). On success *out is
 * allocated (caller frees with free(); it is NUL-terminated for convenience,
 * the terminator is not counted in *out_len). */
enum pb_rc pb_base64_decode(const char *text, size_t len, unsigned char **out, size_t *out_len,
                            struct pb_err *err);

/* 1 when the n bytes at a and b are equal, else 0, in time that depends only
 * on n. */
int pb_ct_equal(const void *a, const void *b, size_t n);

/* ---- randomness -------------------------------------------------------------- */

/* n bytes from the OpenSSL CSPRNG. PB_ERR_INTERNAL if it cannot be seeded. */
enum pb_rc pb_random_bytes(void *buf, size_t n);

/* A random (version 4, RFC 9562) UUID in canonical lower-case form,
 * e.g. "1b4e28ba-2fa1-41d2-883f-0016d3cca427", NUL-terminated. */
enum pb_rc pb_uuid4(char out[37]);

/* ---- secrets at rest ------------------------------------------------------------ */

/* Encrypt the NUL-terminated `plaintext` under `key` into the sealed format
 * above. On success *out_b64 is a NUL-terminated base64 string the caller
 * frees with free(). PB_ERR_TOOBIG above PB_SECRET_PLAINTEXT_MAX. */
enum pb_rc pb_secret_seal(const unsigned char key[PB_SECRET_KEY_LEN], const char *plaintext,
                          char **out_b64, struct pb_err *err);

/* Verify and decrypt a sealed secret. On success *out_plain is the
 * NUL-terminated plaintext; the caller wipes and frees it (see
 * pb_secret_free()). Errors: PB_ERR_INVALID when the text is not a sealed
 * secret (bad base64, too short, unknown version), PB_ERR_AUTH when the tag
 * does not verify (wrong key or tampered data). */
enum pb_rc pb_secret_open(const unsigned char key[PB_SECRET_KEY_LEN], const char *sealed_b64,
                          char **out_plain, struct pb_err *err);

/* Wipe a NUL-terminated secret string and free it. NULL is a no-op. */
void pb_secret_free(char *secret);

/* Load the 32-byte secret-sealing key. If the environment variable
 * PAYBRIDGE_SECRET_KEY is set (even to ""), it is used and `spec` is
 * ignored. Otherwise `spec` says where the key is: "env:NAME" reads the
 * environment variable NAME, anything else is a path to a key file. The
 * value is 64 hex digits or base64 of 32 bytes; in a file, one trailing
 * newline ("\n" or "\r\n") is allowed. Errors: PB_ERR_CONFIG when no key is
 * configured or the value is not a valid key, PB_ERR_IO when the file cannot
 * be read. Messages name the source, never the key. */
enum pb_rc pb_secret_key_load(const char *spec, unsigned char key[PB_SECRET_KEY_LEN],
                              struct pb_err *err);

#endif
