/*
 * connectors/settlement/settlement_files.c: where report files come from: a
 * watched directory (pb_settlement_dir_read_new) and an SFTP directory
 * (pb_settlement_sftp_fetch_new, libcurl's sftp://). Both hand each NEW file,
 * whole, to a callback, usually a parser; settlement_parse.h has the
 * contract.
 *
 * New means: its (name, size, mtime) is not in a small STATE FILE, one line
 * per file read, "size<TAB>mtime<TAB>name". A file that is rewritten (new
 * size or mtime) is new again; one that is only renamed is new too, and the
 * set's duplicate-batch check then refuses its batches, so a renamed copy
 * never doubles the money. The state is rewritten atomically (a temporary
 * file, fsync, rename) after the run, and only files whose callback
 * succeeded are added: a file that failed is offered again next time.
 *
 * What it owns: during one call, the state (an array of entries, at most
 * STATE_MAX), the file buffers (at most PB_SETTLEMENT_FILE_MAX each) and,
 * for SFTP, one CURL easy handle. Nothing is kept between calls.
 *
 * Why a state file and not moving files to a "done" folder: the directory
 * may be read-only to paybridge (an SFTP drop mounted by another team), and
 * a move that fails halfway would lose track of a file.
 *
 * SFTP. libcurl lists the directory (CURLOPT_DIRLISTONLY), asks each
 * candidate's size and mtime without its body (CURLOPT_NOBODY +
 * CURLOPT_FILETIME), and downloads the new ones into memory. Whether the
 * libcurl in use speaks sftp is checked at run time (curl_version_info), so
 * a libcurl without libssh2 builds fine and answers PB_ERR_CONFIG with a
 * message that says what to install. Host keys are checked against
 * known_hosts when one is given.
 *
 * Threading: no shared state; two readers of the same state file at once
 * would each rewrite it (the last one wins, and a file may be read twice;
 * the duplicate-batch check catches that). Run one reader per state file.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "connectors/settlement/settlement_parse.h"

#define STATE_MAX 100000 /* files remembered */
#define NAME_LEN_MAX 255
#define LISTING_MAX (4u * 1024u * 1024u)

struct entry {
    char *name; /* owned */
    long long size;
    long long mtime;
};

struct state {
    struct entry *e;
    size_t n, cap;
};

static void state_free(struct state *st)
{
    for (size_t i = 0; i < st->n; i++)
        free(st->e[i].name);
    free(st->e);
    st->e = NULL;
    st->n = st->cap = 0;
}

static int state_has(const struct state *st, const char *name, long long size, long long mtime)
{
    for (size_t i = st->n; i-- > 0;)
        if (st->e[i].size == size && st->e[i].mtime == mtime && strcmp(st->e[i].name, name) == 0)
            return 1;
    return 0;
}

static int state_add(struct state *st, const char *name, long long size, long long mtime)
{
    if (st->n >= STATE_MAX) { /* forget the oldest */
        free(st->e[0].name);
        memmove(st->e, st->e + 1, (st->n - 1) * sizeof *st->e);
        st->n--;
    }
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        struct entry *e = realloc(st->e, cap * sizeof *e);
        if (!e)
            return -1;
        st->e = e;
        st->cap = cap;
    }
    st->e[st->n].name = strdup(name);
    if (!st->e[st->n].name)
        return -1;
    st->e[st->n].size = size;
    st->e[st->n].mtime = mtime;
    st->n++;
    return 0;
}

/* Read the state file; a missing file is an empty state. Malformed lines are ignored. */
static enum pb_rc state_load(struct state *st, const char *path, struct pb_err *err)
{
    FILE *f = fopen(path, "r");
    char line[NAME_LEN_MAX + 64];
    if (!f) {
        if (errno == ENOENT)
            return PB_OK;
        return pb_err_set(err, PB_ERR_IO, "cannot read the state file %s: %s", path,
                          strerror(errno));
    }
    while (fgets(line, sizeof line, f)) {
        char *t1 = strchr(line, '\t'), *t2, *end;
        long long size, mtime;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        if (!t1 || !(t2 = strchr(t1 + 1, '\t')) || !t2[1])
            continue;
        size = strtoll(line, &end, 10);
        if (end != t1)
            continue;
        mtime = strtoll(t1 + 1, &end, 10);
        if (end != t2)
            continue;
        if (state_add(st, t2 + 1, size, mtime)) {
            fclose(f);
            return pb_err_set(err, PB_ERR_NOMEM, "out of memory (state)");
        }
    }
    fclose(f);
    return PB_OK;
}

static enum pb_rc state_save(const struct state *st, const char *path, struct pb_err *err)
{
    char tmp[4096];
    FILE *f;
    int ok = 1;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return pb_err_set(err, PB_ERR_IO, "state path too long");
    f = fopen(tmp, "w");
    if (!f)
        return pb_err_set(err, PB_ERR_IO, "cannot write the state file %s: %s", tmp,
                          strerror(errno));
    for (size_t i = 0; i < st->n && ok; i++)
        ok = fprintf(f, "%lld\t%lld\t%s\n", st->e[i].size, st->e[i].mtime, st->e[i].name) > 0;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return pb_err_set(err, PB_ERR_IO, "cannot write the state file %s: %s", path, strerror(e));
    }
    return PB_OK;
}

static int name_ok(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = suffix ? strlen(suffix) : 0;
    if (!n || name[0] == '.' || n > NAME_LEN_MAX || strchr(name, '\n') || strchr(name, '\t') ||
        strchr(name, '/'))
        return 0;
    return !s || (n > s && strcmp(name + n - s, suffix) == 0);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the watched directory ------------------------------------------------------------- */

static enum pb_rc read_file(int dirfd, const char *name, const struct stat *sb, char **out,
                            struct pb_err *err)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    char *buf;
    size_t got = 0, size;
    if (fd < 0)
        return pb_err_set(err, PB_ERR_IO, "%s: cannot open: %s", name, strerror(errno));
    size = (size_t)sb->st_size;
    buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return pb_err_set(err, PB_ERR_NOMEM, "%s: out of memory", name);
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            close(fd);
            free(buf);
            return pb_err_set(err, PB_ERR_IO, "%s: %s", name,
                              e ? strerror(e) : "the file shrank while it was read");
        }
        got += (size_t)n;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    return PB_OK;
}

enum pb_rc pb_settlement_dir_read_new(const char *dir, const struct pb_settlement_dir_options *opt,
                                      pb_settlement_file_fn fn, void *ctx, size_t *files_read,
                                      struct pb_err *err)
{
    struct state st = {0};
    char state_path[4096];
    char **names = NULL;
    size_t n_names = 0, cap = 0;
    DIR *d = NULL;
    struct dirent *de;
    enum pb_rc rc = PB_OK, first = PB_OK;
    struct pb_err first_err = {0};
    int dfd;
    size_t read_ok = 0;
    int changed = 0;
    time_t now = time(NULL);

    if (files_read)
        *files_read = 0;
    if (!dir || !fn)
        return pb_err_set(err, PB_ERR_INVALID, "pb_settlement_dir_read_new: bad arguments");
    if (opt && opt->state_path)
        snprintf(state_path, sizeof state_path, "%s", opt->state_path);
    else if ((size_t)snprintf(state_path, sizeof state_path, "%s/.paybridge-read", dir) >=
             sizeof state_path)
        return pb_err_set(err, PB_ERR_INVALID, "directory path too long");
    if ((rc = state_load(&st, state_path, err)))
        return rc;
    d = opendir(dir);
    if (!d) {
        rc = pb_err_set(err, PB_ERR_IO, "cannot read the directory %s: %s", dir, strerror(errno));
        goto out;
    }
    dfd = dirfd(d);
    while ((de = readdir(d)) != NULL) {
        if (!name_ok(de->d_name, opt ? opt->suffix : NULL))
            continue;
        if (n_names == cap) {
            size_t c = cap ? cap * 2 : 64;
            char **p = realloc(names, c * sizeof *p);
            if (!p) {
                rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
                goto out;
            }
            names = p;
            cap = c;
        }
        if (!(names[n_names] = strdup(de->d_name))) {
            rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory");
            goto out;
        }
        n_names++;
    }
    qsort(names, n_names, sizeof *names, by_name);
    for (size_t i = 0; i < n_names; i++) {
        struct stat sb;
        char *data = NULL;
        struct pb_err e = {0};
        enum pb_rc frc;
        if (fstatat(dfd, names[i], &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (state_has(&st, names[i], (long long)sb.st_size, (long long)sb.st_mtime))
            continue;
        if (opt && opt->min_age_s > 0 && now - sb.st_mtime < opt->min_age_s)
            continue; /* maybe still being written: next time */
        if ((unsigned long long)sb.st_size > PB_SETTLEMENT_FILE_MAX)
            frc = pb_err_set(&e, PB_ERR_TOOBIG, "%s: %lld bytes, more than the %u read", names[i],
                             (long long)sb.st_size, PB_SETTLEMENT_FILE_MAX);
        else if ((frc = read_file(dfd, names[i], &sb, &data, &e)) == PB_OK)
            frc = fn(ctx, names[i], data, (size_t)sb.st_size, &e);
        free(data);
        if (frc == PB_OK) {
            read_ok++;
            changed = 1;
            if (state_add(&st, names[i], (long long)sb.st_size, (long long)sb.st_mtime)) {
                rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory (state)");
                goto out;
            }
        } else if (first == PB_OK) {
            first = frc;
            first_err = e;
        }
    }
    if (changed && (rc = state_save(&st, state_path, err)))
        goto out;
    if (first) {
        rc = first;
        if (err)
            *err = first_err;
    }
out:
    if (d)
        closedir(d);
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    state_free(&st);
    if (files_read)
        *files_read = read_ok;
    return rc;
}

/* ---- SFTP -------------------------------------------------------------------------------- */

int pb_settlement_sftp_available(void)
{
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!v || !v->protocols)
        return 0;
    for (const char *const *p = v->protocols; *p; p++)
        if (strcmp(*p, "sftp") == 0)
            return 1;
    return 0;
}

struct membuf {
    char *p;
    size_t len, max;
    int over;
};

static size_t mem_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct membuf *m = arg;
    size_t n = size * nmemb;
    if (m->len + n > m->max) {
        m->over = 1;
        return 0;
    }
    char *p = realloc(m->p, m->len + n + 1);
    if (!p)
        return 0;
    m->p = p;
    memcpy(m->p + m->len, ptr, n);
    m->len += n;
    m->p[m->len] = '\0';
    return n;
}

/* What the host key check saw: libcurl alone says only "SSL peer certificate or
 * SSH remote key was not OK", which does not tell a missing known_hosts entry
 * from a changed key. */
struct hostcheck {
    const char *known_hosts;
    int seen;                /* the check ran */
    enum curl_khmatch match; /* its outcome */
    enum curl_khtype type;   /* the type of the key the server offered */
};

static int host_key_cb(CURL *h, const struct curl_khkey *known, const struct curl_khkey *found,
                       enum curl_khmatch match, void *arg)
{
    struct hostcheck *hc = arg;
    (void)h;
    (void)known;
    hc->seen = 1;
    hc->match = match;
    hc->type = found ? found->keytype : CURLKHTYPE_UNKNOWN;
    /* only an exact match passes; never CURLKHSTAT_FINE_ADD_TO_FILE */
    return match == CURLKHMATCH_OK ? CURLKHSTAT_FINE : CURLKHSTAT_REJECT;
}

static const char *key_type_name(enum curl_khtype t)
{
    switch (t) {
    case CURLKHTYPE_RSA1:
    case CURLKHTYPE_RSA:
        return "ssh-rsa";
    case CURLKHTYPE_DSS:
        return "ssh-dss";
    case CURLKHTYPE_ECDSA:
        return "ecdsa";
    case CURLKHTYPE_ED25519:
        return "ssh-ed25519";
    default:
        return "unknown type of";
    }
}

/* The host key refusal in words: which file, which host, what to do. */
static enum pb_rc host_key_refused(CURL *h, const struct hostcheck *hc, const char *what,
                                   struct pb_err *err)
{
    char *ip = NULL;
    long port = 0;
    char host[300];
    curl_easy_getinfo(h, CURLINFO_PRIMARY_IP, &ip);
    curl_easy_getinfo(h, CURLINFO_PRIMARY_PORT, &port);
    if (port && port != 22)
        snprintf(host, sizeof host, "[%s]:%ld", ip ? ip : "?", port);
    else
        snprintf(host, sizeof host, "%s", ip ? ip : "?");
    if (hc->match == CURLKHMATCH_MISMATCH)
        return pb_err_set(err, PB_ERR_AUTH,
                          "sftp %s: the server's %s host key is not the key known_hosts %s holds "
                          "for %s: this may not be the server you trust; if its key really "
                          "changed, check the new fingerprint with its owner and replace the "
                          "line (ssh-keyscan)",
                          what, key_type_name(hc->type), hc->known_hosts, host);
    return pb_err_set(err, PB_ERR_AUTH,
                      "sftp %s: known_hosts %s has no key for %s (the server offered an %s host "
                      "key): add the server's line (ssh-keyscan -p PORT HOST) after checking its "
                      "fingerprint with its owner",
                      what, hc->known_hosts, host, key_type_name(hc->type));
}

static enum pb_rc classify(CURLcode c, const char *what, const char *errbuf, struct pb_err *err)
{
    const char *detail = errbuf && errbuf[0] ? errbuf : curl_easy_strerror(c);
    switch (c) {
    case CURLE_LOGIN_DENIED:
    case CURLE_AUTH_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSH:
        return pb_err_set(err, c == CURLE_SSH ? PB_ERR_TRANSIENT : PB_ERR_AUTH, "sftp %s: %s", what,
                          detail);
    case CURLE_REMOTE_FILE_NOT_FOUND:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return pb_err_set(err, PB_ERR_PERMANENT, "sftp %s: %s", what, detail);
    default:
        return pb_err_set(err, PB_ERR_TRANSIENT, "sftp %s: %s", what, detail);
    }
}

static void sftp_setup(CURL *h, const struct pb_settlement_sftp_options *opt, char *errbuf,
                       struct hostcheck *hc)
{
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "sftp");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, opt->timeout_ms > 0 ? opt->timeout_ms : 60000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 15000L);
    if (opt->user)
        curl_easy_setopt(h, CURLOPT_USERNAME, opt->user);
    if (opt->password)
        curl_easy_setopt(h, CURLOPT_PASSWORD, opt->password);
    if (opt->private_key)
        curl_easy_setopt(h, CURLOPT_SSH_PRIVATE_KEYFILE, opt->private_key);
    if (opt->public_key)
        curl_easy_setopt(h, CURLOPT_SSH_PUBLIC_KEYFILE, opt->public_key);
    if (opt->known_hosts) {
        curl_easy_setopt(h, CURLOPT_SSH_KNOWNHOSTS, opt->known_hosts);
        curl_easy_setopt(h, CURLOPT_SSH_KEYFUNCTION, host_key_cb);
        curl_easy_setopt(h, CURLOPT_SSH_KEYDATA, hc);
    }
    hc->seen = 0;
    errbuf[0] = '\0';
}

enum pb_rc pb_settlement_sftp_fetch_new(const char *url,
                                        const struct pb_settlement_sftp_options *opt,
                                        pb_settlement_file_fn fn, void *ctx, size_t *files_read,
                                        struct pb_err *err)
{
    struct state st = {0};
    struct membuf listing = {.max = LISTING_MAX};
    char errbuf[CURL_ERROR_SIZE], file_url[4096];
    CURL *h = NULL;
    CURLcode c;
    enum pb_rc rc = PB_OK, first = PB_OK;
    struct pb_err first_err = {0};
    struct hostcheck hc = {.known_hosts = opt ? opt->known_hosts : NULL};
    size_t read_ok = 0;
    int changed = 0;

    if (files_read)
        *files_read = 0;
    if (!url || !opt || !opt->state_path || !fn)
        return pb_err_set(err, PB_ERR_INVALID,
                          "pb_settlement_sftp_fetch_new: url, options.state_path and fn are "
                          "required");
    if (strncmp(url, "sftp://", 7) != 0 || url[strlen(url) - 1] != '/')
        return pb_err_set(err, PB_ERR_CONFIG,
                          "%s: an SFTP directory URL is sftp://host/path/ (ending in '/')", url);
    if (!pb_settlement_sftp_available())
        return pb_err_set(err, PB_ERR_CONFIG,
                          "the installed libcurl has no SFTP support (curl_version_info lists "
                          "no \"sftp\"); install a libcurl built with libssh2 or libssh "
                          "(Debian: libcurl4) or use a watched directory instead");
    if ((rc = state_load(&st, opt->state_path, err)))
        return rc;
    h = curl_easy_init();
    if (!h) {
        rc = pb_err_set(err, PB_ERR_NOMEM, "curl_easy_init failed");
        goto out;
    }
    sftp_setup(h, opt, errbuf, &hc);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_DIRLISTONLY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, mem_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &listing);
    if ((c = curl_easy_perform(h)) != CURLE_OK) {
        rc = listing.over
                 ? pb_err_set(err, PB_ERR_TOOBIG, "sftp list %s: listing larger than %u bytes", url,
                              LISTING_MAX)
             : c == CURLE_PEER_FAILED_VERIFICATION && hc.seen
                 ? host_key_refused(h, &hc, "list", err)
                 : classify(c, "list", errbuf, err);
        goto out;
    }
    for (char *line = listing.p, *next; line && *line; line = next) {
        char *name = line;
        long long size = -1;
        long mtime = -1;
        curl_off_t cl = -1;
        struct membuf body = {.max = PB_SETTLEMENT_FILE_MAX};
        struct pb_err e = {0};
        enum pb_rc frc;

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t n = strlen(name);
        if (n && name[n - 1] == '\r')
            name[--n] = '\0';
        if (!name_ok(name, opt->suffix))
            continue;
        if ((size_t)snprintf(file_url, sizeof file_url, "%s%s", url, name) >= sizeof file_url)
            continue;
        /* size and mtime, without the body */
        sftp_setup(h, opt, errbuf, &hc);
        curl_easy_setopt(h, CURLOPT_URL, file_url);
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h, CURLOPT_FILETIME, 1L);
        if ((c = curl_easy_perform(h)) != CURLE_OK) {
            frc = c == CURLE_PEER_FAILED_VERIFICATION && hc.seen
                      ? host_key_refused(h, &hc, name, &e)
                      : classify(c, name, errbuf, &e);
            goto failed;
        }
        curl_easy_getinfo(h, CURLINFO_FILETIME, &mtime);
        curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        size = (long long)cl;
        if (state_has(&st, name, size, mtime))
            continue;
        if (size > (long long)PB_SETTLEMENT_FILE_MAX) {
            frc = pb_err_set(&e, PB_ERR_TOOBIG, "%s: %lld bytes, more than the %u read", name, size,
                             PB_SETTLEMENT_FILE_MAX);
            goto failed;
        }
        sftp_setup(h, opt, errbuf, &hc);
        curl_easy_setopt(h, CURLOPT_URL, file_url);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, mem_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
        if ((c = curl_easy_perform(h)) != CURLE_OK) {
            frc = body.over ? pb_err_set(&e, PB_ERR_TOOBIG, "%s: larger than %u bytes", name,
                                         PB_SETTLEMENT_FILE_MAX)
                  : c == CURLE_PEER_FAILED_VERIFICATION && hc.seen
                      ? host_key_refused(h, &hc, name, &e)
                      : classify(c, name, errbuf, &e);
            free(body.p);
            goto failed;
        }
        frc = fn(ctx, name, body.p ? body.p : "", body.len, &e);
        free(body.p);
        if (frc == PB_OK) {
            read_ok++;
            changed = 1;
            if (state_add(&st, name, size, mtime)) {
                rc = pb_err_set(err, PB_ERR_NOMEM, "out of memory (state)");
                goto out;
            }
            continue;
        }
    failed:
        if (first == PB_OK) {
            first = frc;
            first_err = e;
        }
    }
    if (changed && (rc = state_save(&st, opt->state_path, err)))
        goto out;
    if (first) {
        rc = first;
        if (err)
            *err = first_err;
    }
out:
    if (h)
        curl_easy_cleanup(h);
    free(listing.p);
    state_free(&st);
    if (files_read)
        *files_read = read_ok;
    return rc;
}
