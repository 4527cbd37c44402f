/* heddle-cni, compiled: the fast path of controller/cni/shim.py.
 *
 * Why it exists: a CNI runtime starts the plugin two to four times per container (Podman runs
 * VERSION before every ADD and DEL). The Python shim's interpreter start alone is about 7 ms of
 * each call here, where a compiled plugin starts in about 1 ms; on a `podman run --rm` that was
 * a tenth of the whole run (the README's performance section has the figures).
 *
 * What it does: exactly what shim.py does for the common case -- VERSION answered here; every
 * other command's CNI_* environment and stdin posted as {"env": {...}, "stdin": "..."} to
 * /Cni.<Command> on the agent's unix socket, the answer printed as it came. The agent parses
 * and checks everything (controller/cni/service.py).
 *
 * What it does not do: anything else. Whenever the input is not the plain case -- a command it
 * does not know, a configuration it cannot scan or that names `agentConfig`, a `timeout` or
 * `socket` it would have to refuse, a byte that is not ASCII, a socket path too long -- it hands
 * the invocation, stdin included, to the reference shim.py (FALLBACK_PYTHON -I -S
 * FALLBACK_SCRIPT), so every error is shim.py's own, word for word. The same goes for a socket
 * it cannot connect to for another reason than "absent" or "refused": nothing was sent yet.
 * tests/unit/test_cni_shim_contract.py holds the two to the same answers.
 *
 * Built by controller/cni/install.py (`heddle cni plugin`), which defines VERSION_ANSWER,
 * DEFAULT_SOCKET, DEFAULT_TIMEOUT, FALLBACK_PYTHON and FALLBACK_SCRIPT from shim.py and the
 * running interpreter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(VERSION_ANSWER) || !defined(DEFAULT_SOCKET) || !defined(DEFAULT_TIMEOUT) || \
    !defined(FALLBACK_PYTHON) || !defined(FALLBACK_SCRIPT)
#error "build with `heddle cni plugin` (controller/cni/install.py), which defines these"
#endif

#define ANSWER_LIMIT (16u << 20)

enum { IO_FAILURE = 5, TRY_AGAIN_LATER = 11 };

static const char *const ENVIRONMENT[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                                          "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};
static const char *const COMMANDS[][2] = {{"ADD", "/Cni.Add"}, {"DEL", "/Cni.Del"},
                                          {"CHECK", "/Cni.Check"}, {"GC", "/Cni.Gc"},
                                          {"STATUS", "/Cni.Status"}};

struct buf {
    char *p;
    size_t n, cap;
};

static struct buf in; /* stdin, kept for the hand-off */

static void put(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) abort();
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* s as a JSON string (with quotes); s is ASCII (the fast path takes nothing else). */
static void put_json(struct buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, e, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

/* Run the reference shim on the same invocation: stdin as it came, the environment as it is.
 * Returns only if that cannot be done. */
static void hand_off(void) {
    int fd = memfd_create("heddle-cni-stdin", 0);
    size_t done = 0;
    while (fd >= 0 && done < in.n) {
        ssize_t w = write(fd, in.p + done, in.n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    if (fd >= 0 && done == in.n && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
        char *argv[] = {FALLBACK_PYTHON, "-I", "-S", FALLBACK_SCRIPT, NULL};
        execv(FALLBACK_PYTHON, argv);
    }
}

/* The configuration's fields the fast path needs; a scan that gives up means "hand off". */
struct config {
    const char *socket, *version;
    size_t socket_n, version_n;
    double timeout;
};

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A JSON string at p: its end (after the quote), or NULL if it is none. *escaped: it holds a
 * backslash (then the fast path does not use its value). */
static const char *string_end(const char *p, const char *e, int *escaped) {
    *escaped = 0;
    if (p >= e || *p != '"') return NULL;
    for (p++; p < e; p++) {
        if (*p == '"') return p + 1;
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p != '\\') continue;
        *escaped = 1;
        if (++p >= e) return NULL;
        if (*p == 'u') {
            for (int i = 0; i < 4; i++)
                if (++p >= e || strchr("0123456789abcdefABCDEF", *p) == NULL || !*p) return NULL;
        } else if (!*p || strchr("\"\\/bfnrt", *p) == NULL) {
            return NULL;
        }
    }
    return NULL;
}

static const char *digits(const char *p, const char *e) {
    const char *s = p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    return p == s ? NULL : p;
}

/* A JSON number or literal at p: its end, or NULL (as json.loads would refuse it, or accept
 * it only as Python's extension: NaN, Infinity). */
static const char *scalar_end(const char *p, const char *e) {
    static const char *const literals[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(literals[i]);
        if ((size_t)(e - p) >= n && memcmp(p, literals[i], n) == 0) return p + n;
    }
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') p++;
    else if ((p = digits(p, e)) == NULL) return NULL;
    if (p < e && *p == '.' && (p = digits(p + 1, e)) == NULL) return NULL;
    if (p < e && (*p == 'e' || *p == 'E')) {
        if (++p < e && (*p == '+' || *p == '-')) p++;
        if ((p = digits(p, e)) == NULL) return NULL;
    }
    return p;
}

/* Any JSON value at p: its end, or NULL for anything json.loads would refuse (and for nesting
 * deeper than 200: the reference shim's business). */
static const char *value_end(const char *p, const char *e, int depth) {
    int escaped;
    p = ws(p, e);
    if (p >= e) return NULL;
    if (*p == '"') return string_end(p, e, &escaped);
    if (*p != '{' && *p != '[') return scalar_end(p, e);
    if (depth >= 200) return NULL;
    char close = *p == '{' ? '}' : ']';
    p = ws(p + 1, e);
    if (p < e && *p == close) return p + 1;
    for (;;) {
        if (close == '}') {
            if ((p = string_end(ws(p, e), e, &escaped)) == NULL) return NULL;
            p = ws(p, e);
            if (p >= e || *p++ != ':') return NULL;
        }
        if ((p = value_end(p, e, depth + 1)) == NULL) return NULL;
        p = ws(p, e);
        if (p < e && *p == ',') {
            p++;
            continue;
        }
        return p < e && *p == close ? p + 1 : NULL;
    }
}

static int key_is(const char *k, const char *end, const char *name) {
    size_t n = strlen(name);
    return (size_t)(end - k) == n + 2 && memcmp(k + 1, name, n) == 0;
}

/* Scan stdin's top-level object into c; 0 when the fast path cannot take it. */
static int scan(struct config *c) {
    const char *p = in.p, *e = in.p + in.n;
    int escaped;
    if (in.n == 0) return 1; /* no configuration at all: shim.py reads it as {} */
    p = ws(p, e);
    if (p >= e || *p++ != '{') return 0;
    p = ws(p, e);
    if (p < e && *p == '}') return ws(p + 1, e) == e;
    for (;;) {
        const char *k = ws(p, e), *kend = string_end(k, e, &escaped), *v, *vend;
        if (kend == NULL || escaped) return 0;
        p = ws(kend, e);
        if (p >= e || *p++ != ':') return 0;
        v = ws(p, e);
        if ((vend = value_end(v, e, 1)) == NULL) return 0;
        if (key_is(k, kend, "agentConfig")) return 0;
        if (key_is(k, kend, "socket") || key_is(k, kend, "cniVersion")) {
            if (string_end(v, e, &escaped) != vend || escaped) return 0;
            if (key_is(k, kend, "socket")) c->socket = v + 1, c->socket_n = (size_t)(vend - v - 2);
            else c->version = v + 1, c->version_n = (size_t)(vend - v - 2);
        } else if (key_is(k, kend, "timeout")) {
            char num[64], *stop;
            size_t n = (size_t)(vend - v);
            if (n == 0 || n >= sizeof num || *v == 't' || *v == 'f' || *v == 'n') return 0;
            memcpy(num, v, n), num[n] = '\0';
            c->timeout = strtod(num, &stop);
            if (*stop != '\0' || !(c->timeout > 0 && c->timeout <= 600)) return 0;
        }
        p = ws(vend, e);
        if (p < e && *p == ',') {
            p++;
            continue;
        }
        if (p >= e || *p != '}') return 0;
        return ws(p + 1, e) == e;
    }
}

/* Print a CNI error as shim.py's _error does, and return the exit status. */
static int error(const struct config *c, int code, const char *msg, const char *details) {
    struct buf out = {0};
    char num[16];
    puts_(&out, "{\"cniVersion\": ");
    if (c->version != NULL) put_json(&out, c->version, c->version_n);
    else puts_(&out, "\"1.0.0\"");
    snprintf(num, sizeof num, "%d", code);
    puts_(&out, ", \"code\": "), puts_(&out, num), puts_(&out, ", \"msg\": ");
    put_json(&out, msg, strlen(msg));
    if (details != NULL && *details) puts_(&out, ", \"details\": "), put_json(&out, details, strlen(details));
    puts_(&out, "}\n");
    fwrite(out.p, 1, out.n, stdout);
    return 1;
}

/* Read fd to its end into b: 0, -1 (errno says why) or -2 (more than limit bytes). */
static int read_all(int fd, struct buf *b, size_t limit) {
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return 0;
        if (b->n + (size_t)r > limit) return -2;
        put(b, chunk, (size_t)r);
    }
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

static int ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND"), *url = NULL;
    struct config c = {DEFAULT_SOCKET, NULL, sizeof DEFAULT_SOCKET - 1, 0, DEFAULT_TIMEOUT};
    char path[sizeof ((struct sockaddr_un *)0)->sun_path], why[512];
    struct buf req = {0}, head = {0}, ans = {0};

    if (command != NULL && strcmp(command, "VERSION") == 0) {
        puts(VERSION_ANSWER);
        return 0;
    }
    if (read_all(0, &in, (size_t)-1 / 2) != 0) return error(&c, IO_FAILURE, "reading stdin failed", strerror(errno));
    for (size_t i = 0; command != NULL && i < sizeof COMMANDS / sizeof *COMMANDS; i++)
        if (strcmp(command, COMMANDS[i][0]) == 0) url = COMMANDS[i][1];
    if (url == NULL || !ascii(in.p, in.n) || !scan(&c) || c.socket_n == 0 || c.socket[0] != '/' ||
        c.socket_n >= sizeof path)
        return hand_off(), error(&c, IO_FAILURE, "heddle-cni cannot run " FALLBACK_SCRIPT, NULL);

    /* {"env": {CNI_*: ...}, "stdin": "..."} -- as shim.py's call_agent builds it */
    puts_(&req, "{\"env\": {");
    for (size_t i = 0, first = 1; i < sizeof ENVIRONMENT / sizeof *ENVIRONMENT; i++) {
        const char *v = getenv(ENVIRONMENT[i]);
        if (v == NULL) continue;
        if (!ascii(v, strlen(v))) return hand_off(), error(&c, IO_FAILURE, "heddle-cni cannot run " FALLBACK_SCRIPT, NULL);
        if (!first) puts_(&req, ", ");
        put_json(&req, ENVIRONMENT[i], strlen(ENVIRONMENT[i])), puts_(&req, ": ");
        put_json(&req, v, strlen(v)), first = 0;
    }
    puts_(&req, "}, \"stdin\": "), put_json(&req, in.n ? in.p : "", in.n), puts_(&req, "}");

    memcpy(path, c.socket, c.socket_n), path[c.socket_n] = '\0';
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, c.socket_n + 1);
    double t = c.timeout + 5.0;
    struct timeval tv = {.tv_sec = (time_t)t, .tv_usec = (suseconds_t)((t - (double)(time_t)t) * 1e6)};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return hand_off(), error(&c, IO_FAILURE, "heddle-cni cannot run " FALLBACK_SCRIPT, NULL);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == ENOENT || errno == ECONNREFUSED) {
            snprintf(why, sizeof why, "the heddle agent of this host is not serving CNI on %s", path);
            return error(&c, TRY_AGAIN_LATER, why,
                         "start the agent (heddle agent ... --cni-socket) and try again");
        }
        return hand_off(), error(&c, IO_FAILURE, "heddle-cni cannot run " FALLBACK_SCRIPT, NULL);
    }
    char len[32];
    snprintf(len, sizeof len, "%zu", req.n);
    puts_(&head, "POST "), puts_(&head, url);
    puts_(&head, " HTTP/1.1\r\nHost: heddle\r\nContent-Type: application/json\r\nContent-Length: ");
    puts_(&head, len), puts_(&head, "\r\nConnection: close\r\n\r\n"), put(&head, req.p, req.n);
    snprintf(why, sizeof why, "talking to the heddle agent on %s failed", path);
    int got = send_all(fd, head.p, head.n);
    if (got == 0) got = read_all(fd, &ans, ANSWER_LIMIT);
    if (got != 0) {
        const char *what = got == -2 ? "the answer is larger than 16 MiB"
                           : errno == EAGAIN ? "timed out" : strerror(errno);
        return error(&c, IO_FAILURE, why, what);
    }
    close(fd);

    /* "HTTP/1.1 200 OK\r\n...\r\n\r\nbody" */
    char *sep = ans.n ? memmem(ans.p, ans.n, "\r\n\r\n", 4) : NULL;
    int status = 0;
    if (sep == NULL || sscanf(ans.p, "HTTP/%*s %3d", &status) != 1 || status < 100)
        return error(&c, IO_FAILURE, why, "not an HTTP answer");
    char *body = sep + 4, *end = ans.p + ans.n;
    while (body < end && *body && strchr(" \t\r\n\v\f", *body) != NULL) body++;
    while (end > body && end[-1] && strchr(" \t\r\n\v\f", end[-1]) != NULL) end--;
    if (status != 200) {
        if (end == body) {
            snprintf(why, sizeof why, "agent answered %d", status);
            return error(&c, IO_FAILURE, why, NULL);
        }
        fwrite(body, 1, (size_t)(end - body), stdout), putchar('\n');
        return 1;
    }
    if (strcmp(command, "ADD") == 0) fwrite(body, 1, (size_t)(end - body), stdout), putchar('\n');
    return 0;
}
