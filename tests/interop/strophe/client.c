/* A libstrophe client (the C library under Profanity) driven by tests/test_interop_strophe.py.
 *
 *   client JID PASSWORD CA_FILE PORT [--no-sm] [--direct-tls]
 *
 * Connects to 127.0.0.1:PORT with STARTTLS required (TLS at connect with --direct-tls), the
 * server's certificate verified against CA_FILE only (no certificate-failure handler, so a bad
 * certificate fails the login), SASL with the mechanism libstrophe picks, bind, XEP-0198
 * unless --no-sm. Then reads one command a line on stdin:
 *
 *   msg TO BODY        a chat message
 *   presence           initial presence
 *   sub TO TYPE        a subscription presence (RFC 6121 §3): subscribe, subscribed, ...
 *   roster             a roster get
 *   ping TO ID         an XEP-0199 ping
 *   cut                shut the socket down, unannounced
 *   vanish             leave the connection open but stop using it (no FIN reaches the
 *                      server), and disconnect
 *   resume             connect again on the same connection object: libstrophe resumes the
 *                      session (XEP-0198 §5) if the server offered resumption
 *   quit               close the stream and exit
 *
 * and prints one line per event on stdout (flushed):
 *
 *   auth MECH | secured | connected BOUND_JID | closed
 *   disconnected ERROR STREAM_ERROR
 *   sm enabled RESUME | sm resumed H | sm failed | sm ack H | sm acked H
 *                      (sm ack: the server's <a/>; sm acked: libstrophe's)
 *   message FROM TYPE BODY | presence FROM TYPE
 *   roster JID SUBSCRIPTION ... roster-end | roster-push JID SUBSCRIPTION [ask]
 *   iq ID result | iq ID error TYPE CONDITION
 *
 * Exit status 0 after quit, 1 when the connection failed or dropped without a cut.
 */
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <strophe.h>

static xmpp_ctx_t *ctx;
static xmpp_conn_t *conn;
static const char *port_arg;
static int sock_fd = -1;
static int held_fd = -1; /* a vanished connection, kept open until exit */
static int cut_pending; /* a `cut` was asked: the next disconnect is expected */
static int quitting;
static int finished;
static int exit_code = 1;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void emit(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

/* The value of attribute `name` in the raw tag `tag`, copied into `out`. */
static const char *attr(const char *tag, const char *name, char *out, size_t size)
{
    char pattern[64];
    const char *start, *end;
    char quote;

    out[0] = '\0';
    snprintf(pattern, sizeof(pattern), " %s=", name);
    start = strstr(tag, pattern);
    if (!start)
        return out;
    start += strlen(pattern);
    quote = *start++;
    end = strchr(start, quote);
    if (!end || (size_t)(end - start) >= size)
        return out;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = '\0';
    return out;
}

/* libstrophe reports the nonzas of SASL and XEP-0198 only in its debug log: the harness
 * reads them there (its own output is the events above, nothing else). */
static void log_handler(void *userdata, xmpp_log_level_t level, const char *area, const char *msg)
{
    char value[256];
    (void)userdata;
    (void)area;
    if (level == XMPP_LEVEL_ERROR || level == XMPP_LEVEL_WARN)
        fprintf(stderr, "%s: %s\n", area, msg);
    if (strncmp(msg, "SENT: <auth ", 12) == 0)
        emit("auth %s", attr(msg, "mechanism", value, sizeof(value)));
    else if (strncmp(msg, "RECV: <enabled ", 15) == 0)
        emit("sm enabled %s", attr(msg, "resume", value, sizeof(value)));
    else if (strncmp(msg, "RECV: <resumed ", 15) == 0)
        emit("sm resumed %s", attr(msg, "h", value, sizeof(value)));
    else if (strncmp(msg, "RECV: <failed ", 14) == 0)
        emit("sm failed");
    else if (strncmp(msg, "RECV: <a ", 9) == 0)
        emit("sm ack %s", attr(msg, "h", value, sizeof(value)));
    else if (strncmp(msg, "SENT: <a ", 9) == 0)
        emit("sm acked %s", attr(msg, "h", value, sizeof(value)));
}

static int on_socket(xmpp_conn_t *c, void *sock)
{
    (void)c;
    sock_fd = *(int *)sock;
    return 0;
}

static int on_message(xmpp_conn_t *c, xmpp_stanza_t *stanza, void *userdata)
{
    char *body = xmpp_message_get_body(stanza);
    const char *type = xmpp_stanza_get_type(stanza);
    (void)c;
    (void)userdata;
    if (body) {
        emit("message %s %s %s", xmpp_stanza_get_from(stanza), type ? type : "normal", body);
        xmpp_free(ctx, body);
    }
    return 1;
}

static int on_presence(xmpp_conn_t *c, xmpp_stanza_t *stanza, void *userdata)
{
    const char *type = xmpp_stanza_get_type(stanza);
    (void)c;
    (void)userdata;
    emit("presence %s %s", xmpp_stanza_get_from(stanza), type ? type : "available");
    return 1;
}

static int on_iq(xmpp_conn_t *c, xmpp_stanza_t *stanza, void *userdata)
{
    const char *type = xmpp_stanza_get_type(stanza);
    const char *id = xmpp_stanza_get_id(stanza);
    xmpp_stanza_t *query, *item, *error, *cond;
    (void)userdata;
    if (!type || !id)
        return 1;
    query = xmpp_stanza_get_child_by_name_and_ns(stanza, "query", XMPP_NS_ROSTER);
    if (strcmp(type, "set") == 0 && query) {
        /* RFC 6121 §2.1.6: a roster push is answered with a result, as Profanity does (a
         * push has no 'from': xmpp_stanza_reply needs one) */
        xmpp_stanza_t *reply = xmpp_iq_new(ctx, "result", id);
        for (item = xmpp_stanza_get_children(query); item; item = xmpp_stanza_get_next(item)) {
            const char *sub = xmpp_stanza_get_attribute(item, "subscription");
            const char *ask = xmpp_stanza_get_attribute(item, "ask");
            if (xmpp_stanza_is_tag(item))
                emit("roster-push %s %s%s", xmpp_stanza_get_attribute(item, "jid"),
                     sub ? sub : "none", ask ? " ask" : "");
        }
        xmpp_send(c, reply);
        xmpp_stanza_release(reply);
        return 1;
    }
    if (strcmp(type, "get") == 0 || strcmp(type, "set") == 0) {
        /* RFC 6120 §8.4: no handler for any other request here */
        xmpp_stanza_t *reply =
            xmpp_stanza_reply_error(stanza, "cancel", "service-unavailable", NULL);
        if (reply) {
            xmpp_send(c, reply);
            xmpp_stanza_release(reply);
        }
        return 1;
    }
    if (strcmp(type, "error") == 0) {
        const char *etype = "?", *cname = "?";
        error = xmpp_stanza_get_child_by_name(stanza, "error");
        if (error) {
            etype = xmpp_stanza_get_type(error) ? xmpp_stanza_get_type(error) : "?";
            for (cond = xmpp_stanza_get_children(error); cond; cond = xmpp_stanza_get_next(cond)) {
                const char *ns = xmpp_stanza_get_ns(cond);
                if (xmpp_stanza_is_tag(cond) && ns && strcmp(ns, XMPP_NS_STANZAS_IETF) == 0 &&
                    strcmp(xmpp_stanza_get_name(cond), "text") != 0) {
                    cname = xmpp_stanza_get_name(cond);
                    break;
                }
            }
        }
        emit("iq %s error %s %s", id, etype, cname);
        return 1;
    }
    if (query) {
        for (item = xmpp_stanza_get_children(query); item; item = xmpp_stanza_get_next(item)) {
            const char *sub = xmpp_stanza_get_attribute(item, "subscription");
            if (xmpp_stanza_is_tag(item))
                emit("roster %s %s", xmpp_stanza_get_attribute(item, "jid"), sub ? sub : "none");
        }
        emit("roster-end");
    }
    emit("iq %s result", id);
    return 1;
}

static void connect_now(void);

static void on_conn(xmpp_conn_t *c, xmpp_conn_event_t event, int error,
                    xmpp_stream_error_t *stream_error, void *userdata)
{
    (void)userdata;
    if (event == XMPP_CONN_CONNECT) {
        if (xmpp_conn_is_secured(c))
            emit("secured");
        emit("connected %s", xmpp_conn_get_bound_jid(c));
        return;
    }
    sock_fd = -1;
    if (event == XMPP_CONN_FAIL) {
        emit("disconnected %d connect-failed", error);
        finished = 1;
        return;
    }
    if (quitting) {
        emit("closed");
        exit_code = 0;
        finished = 1;
        return;
    }
    emit("disconnected %d %s", error,
         stream_error ? (stream_error->type == XMPP_SE_NOT_AUTHORIZED ? "not-authorized"
                                                                      : "stream-error")
                      : "none");
    if (cut_pending) {
        /* The socket was cut on purpose: `resume` reconnects on the same connection
         * object, which keeps libstrophe's XEP-0198 state (previd, h, unacknowledged
         * stanzas), as Profanity reconnects. */
        cut_pending = 0;
        return;
    }
    finished = 1;
}

static void connect_now(void)
{
    if (xmpp_connect_client(conn, "127.0.0.1", (unsigned short)atoi(port_arg), on_conn, NULL) !=
        XMPP_EOK) {
        emit("disconnected -1 connect-call-failed");
        finished = 1;
    }
}

static void command(char *line)
{
    char *verb = strtok(line, " \n");
    if (!verb)
        return;
    if (strcmp(verb, "msg") == 0) {
        char *to = strtok(NULL, " ");
        char *body = strtok(NULL, "\n");
        xmpp_stanza_t *msg = xmpp_message_new(ctx, "chat", to, NULL);
        xmpp_message_set_body(msg, body ? body : "");
        xmpp_send(conn, msg);
        xmpp_stanza_release(msg);
    } else if (strcmp(verb, "presence") == 0) {
        xmpp_stanza_t *pres = xmpp_presence_new(ctx);
        xmpp_send(conn, pres);
        xmpp_stanza_release(pres);
    } else if (strcmp(verb, "sub") == 0) {
        char *to = strtok(NULL, " \n");
        char *type = strtok(NULL, " \n");
        xmpp_stanza_t *pres = xmpp_presence_new(ctx);
        xmpp_stanza_set_to(pres, to);
        xmpp_stanza_set_type(pres, type);
        xmpp_send(conn, pres);
        xmpp_stanza_release(pres);
    } else if (strcmp(verb, "roster") == 0) {
        xmpp_stanza_t *iq = xmpp_iq_new(ctx, "get", "roster1");
        xmpp_stanza_t *query = xmpp_stanza_new(ctx);
        xmpp_stanza_set_name(query, "query");
        xmpp_stanza_set_ns(query, XMPP_NS_ROSTER);
        xmpp_stanza_add_child(iq, query);
        xmpp_stanza_release(query);
        xmpp_send(conn, iq);
        xmpp_stanza_release(iq);
    } else if (strcmp(verb, "ping") == 0) {
        char *to = strtok(NULL, " \n");
        char *id = strtok(NULL, " \n");
        xmpp_stanza_t *iq = xmpp_iq_new(ctx, "get", id);
        xmpp_stanza_t *ping = xmpp_stanza_new(ctx);
        xmpp_stanza_set_to(iq, to);
        xmpp_stanza_set_name(ping, "ping");
        xmpp_stanza_set_ns(ping, "urn:xmpp:ping");
        xmpp_stanza_add_child(iq, ping);
        xmpp_stanza_release(ping);
        xmpp_send(conn, iq);
        xmpp_stanza_release(iq);
    } else if (strcmp(verb, "cut") == 0 || strcmp(verb, "vanish") == 0) {
        /* What was sent so far goes out first (a stanza still in libstrophe's send queue
         * would be written before the next stream header); the server's acks for it may
         * not be read yet, so they stay in libstrophe's XEP-0198 queue. */
        while (xmpp_conn_send_queue_len(conn) > 0)
            xmpp_run_once(ctx, 0);
        xmpp_run_once(ctx, 0);
        if (sock_fd < 0)
            return;
        cut_pending = 1;
        if (strcmp(verb, "cut") == 0) {
            /* both directions, no </stream:stream>: the server sees the connection end */
            shutdown(sock_fd, SHUT_RDWR);
        } else {
            /* The TCP connection stays open, unread, as after a network switch: the server
             * does not know it is gone. libstrophe's descriptor now names one end of a
             * socket pair whose other end is closed, so it reads EOF and disconnects. */
            int pair[2];
            if (held_fd < 0)
                held_fd = dup(sock_fd);
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0) {
                dup2(pair[0], sock_fd);
                close(pair[0]);
                close(pair[1]);
            }
        }
    } else if (strcmp(verb, "resume") == 0) {
        connect_now();
    } else if (strcmp(verb, "quit") == 0) {
        quitting = 1;
        xmpp_disconnect(conn);
    } else {
        fprintf(stderr, "unknown command %s\n", verb);
    }
}

int main(int argc, char **argv)
{
    xmpp_log_t log = {log_handler, NULL};
    char line[4096];
    size_t used = 0;
    int stdin_open = 1;
    long flags = XMPP_CONN_FLAG_MANDATORY_TLS;

    if (argc < 5) {
        fprintf(stderr, "usage: %s JID PASSWORD CA_FILE PORT [--no-sm] [--direct-tls]\n",
                argv[0]);
        return 2;
    }
    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--no-sm") == 0)
            flags |= XMPP_CONN_FLAG_DISABLE_SM;
        else if (strcmp(argv[i], "--direct-tls") == 0)
            flags |= XMPP_CONN_FLAG_LEGACY_SSL; /* TLS at connect (XEP-0368) */
    }
    port_arg = argv[4];
    /* a write to the cut socket must fail with EPIPE, not kill the process */
    signal(SIGPIPE, SIG_IGN);

    xmpp_initialize();
    ctx = xmpp_ctx_new(NULL, &log);
    conn = xmpp_conn_new(ctx);
    xmpp_conn_set_flags(conn, flags);
    xmpp_conn_set_jid(conn, argv[1]);
    xmpp_conn_set_pass(conn, argv[2]);
    xmpp_conn_set_cafile(conn, argv[3]);
    xmpp_conn_set_capath(conn, "/nonexistent"); /* the test CA only */
    xmpp_conn_set_sockopt_callback(conn, on_socket);
    xmpp_handler_add(conn, on_message, NULL, "message", NULL, NULL);
    xmpp_handler_add(conn, on_presence, NULL, "presence", NULL, NULL);
    xmpp_handler_add(conn, on_iq, NULL, "iq", NULL, NULL);
    connect_now();

    while (!finished) {
        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        xmpp_run_once(ctx, 20);
        if (!stdin_open || poll(&pfd, 1, 0) <= 0)
            continue;
        ssize_t got = read(STDIN_FILENO, line + used, sizeof(line) - 1 - used);
        if (got <= 0) {
            stdin_open = 0;
            continue;
        }
        used += (size_t)got;
        line[used] = '\0';
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            command(line);
            used -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, used + 1);
        }
    }

    xmpp_conn_release(conn);
    xmpp_ctx_free(ctx);
    xmpp_shutdown();
    return exit_code;
}
