/*
 * sandbox/sbx_notify.c: the signed POST, retry backoff, timed wait and
 * random roll shared by the emulators' notification senders (see
 * sbx_notify.h). Owns no state; touches only what it is handed.
 */
#include "sbx_notify.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/crypto.h"

struct reply_sink {
    size_t total;
    size_t max;
};

static size_t discard_reply(char *data, size_t size, size_t nmemb, void *arg)
{
    struct reply_sink *sink = arg;
    size_t n = size * nmemb;
    (void)data;
    sink->total += n;
    if (sink->total > sink->max)
        return 0; /* abort: a receiver has no reason to answer with megabytes */
    return n;
}

static int abort_on_stop(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                         curl_off_t ulnow)
{
    atomic_int *stop = arg;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return atomic_load(stop) ? 1 : 0;
}

long sbx_notify_post(CURL *curl, const struct sbx_post *p, CURLcode *cc)
{
    unsigned char mac[PB_SHA256_LEN];
    char hex[2 * PB_SHA256_LEN + 1];
    char sig[128 + sizeof(hex)];
    struct curl_slist *headers = NULL, *tmp;
    struct reply_sink sink = {0, p->reply_max};
    long status = 0;

    *cc = CURLE_OK;
    if (pb_hmac_sha256(p->secret, strlen(p->secret), p->body, p->len, mac) ||
        pb_hex_encode(mac, sizeof(mac), hex, sizeof(hex)))
        return 0;
    snprintf(sig, sizeof(sig), "%s: %s", p->sig_header, hex);
    tmp = curl_slist_append(headers, "Content-Type: application/json");
    if (tmp)
        headers = tmp;
    if (tmp && (tmp = curl_slist_append(headers, sig)))
        headers = tmp;
    for (size_t i = 0; tmp && p->more_headers && p->more_headers[i]; i++)
        if ((tmp = curl_slist_append(headers, p->more_headers[i])))
            headers = tmp;
    if (!tmp) {
        curl_slist_free_all(headers);
        return 0;
    }

    /* reset keeps live connections, so keep-alive survives across sends */
    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, p->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)p->len);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, p->timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, p->timeout_ms);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    if (p->tcp_keepalive)
        curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_reply);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, p->stop);
    *cc = curl_easy_perform(curl);
    if (*cc == CURLE_OK || *cc == CURLE_WRITE_ERROR)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    return status;
}

uint64_t sbx_backoff_ns(unsigned attempts_made, unsigned first_ms, unsigned cap_ms)
{
    uint64_t ms = first_ms;
    for (unsigned i = 1; i < attempts_made && ms < cap_ms; i++)
        ms *= 2;
    if (ms > cap_ms)
        ms = cap_ms;
    return ms * 1000000u;
}

void sbx_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t due_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(due_ns / 1000000000u),
                          .tv_nsec = (long)(due_ns % 1000000000u)};
    pthread_cond_timedwait(cv, mu, &ts);
}

int sbx_roll(double rate)
{
    uint32_t r;
    if (rate <= 0.0)
        return 0;
    if (rate >= 1.0)
        return 1;
    if (pb_random_bytes(&r, sizeof(r)))
        return 0;
    return (double)r < rate * 4294967296.0;
}
