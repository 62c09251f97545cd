/* libpurple 2.14 (Debian's libpurple-dev: the library of Pidgin and Finch) with its XMPP
 * protocol plugin, prpl-jabber, driven by tests/test_interop_purple.py.
 *
 *   client JID PASSWORD CA_FILE PORT USER_DIR [--register] [--xml]
 *
 * A user interface of its own on GLib's main loop, as Pidgin's and Finch's are: libpurple
 * keeps its settings in USER_DIR (purple_util_set_user_dir), the account is set up in code
 * (connect server localhost:PORT, "Require encryption": STARTTLS required) and its
 * certificate checked by libpurple's own verifier against CA_FILE only: the file is copied
 * into USER_DIR/ca, the one search path of libpurple's CA pool (set before the core starts,
 * so the system's CAs are not loaded). Nothing is accepted on the user's behalf: every
 * question libpurple asks (purple_request_*, authorization requests) is printed and waits
 * for the test's answer. With --register the account is created in band
 * (purple_account_register, XEP-0077), the registration form printed like any request.
 *
 * Commands, one a line on stdin:
 *   msg JID TEXT             an IM, as typed in a conversation window (purple_conv_im_send)
 *   typing JID typing|typed|none   the typing state of a conversation (serv_send_typing)
 *   add JID [ALIAS]          add a buddy (the buddy list, then prpl add_buddy)
 *   remove JID               remove the buddy
 *   authorize ID yes|no      answer authorization request ID
 *   status STATUS_ID [TEXT]  set the account's status (available, away, xa, dnd) and message
 *   info JID                 Get Info (serv_get_info): a `userinfo` report when complete
 *   occupant-info ROOM NICK  Get Info on a room occupant, as Pidgin's chat user list does it
 *                            (prpl get_cb_real_name, then serv_get_info)
 *   action LABEL             an account action of the protocol (Set User Info..., Change
 *                            Password...), as from Pidgin's Accounts menu
 *   join ROOM NICK [PASSWORD]  join a room (serv_join_chat; ROOM is room@service)
 *   chat ROOM TEXT           a message to the room
 *   cmd ROOM|JID LINE        a slash command (without its slash) typed in the conversation
 *                            with ROOM or JID (topic, kick, config, ban, ping, ...)
 *   leave ROOM               close the room's conversation (leaves the room)
 *   alias JID NAME           rename a buddy (its roster item's name)
 *   move JID GROUP           drag a buddy to another group (its roster item's group)
 *   mood MOOD [TEXT]         set the account's mood (XEP-0107, published by PEP)
 *   icon HEX                 set the account's buddy icon (a PNG, in hexadecimal)
 *   invite ROOM JID [TEXT]   invite JID to the room
 *   room-list                Pidgin's Room List: libpurple asks for the service (an input
 *                            request), then lists its rooms
 *   block JID | unblock JID  the privacy deny list (purple_privacy_deny_add/remove)
 *   deny-list                the deny list as libpurple has it: `deny JID`..., `deny-end`
 *   send-file JID NAME       offer a file transfer (serv_send_file) of a small file NAME
 *   field ID FIELD VALUE     set a field of request ID (string, integer, boolean, choice)
 *   submit ID | cancel ID    answer a fields or input request (cancel: also close an action
 *                            request without choosing, as closing Pidgin's dialog does)
 *   choose ID INDEX          answer an action request with its action INDEX (from 0)
 *   unregister               delete the account on the server (purple_account_unregister)
 *   quit                     disconnect and exit
 *
 * Events, one a line on stdout (flushed; a newline inside a value is printed as \n):
 *   starttls (the server's <proceed/>) | auth MECH (the <auth/> libpurple sends)
 *   auth-failure CONDITION (the server's SASL <failure/>) | signed-on FULL_JID
 *   connection-error REASON_CODE TEXT | signed-off | registered yes|no | unregistered yes|no
 *   im FROM TEXT | typing FROM typing|typed|none
 *   buddy-added JID | buddy-removed JID | status JID STATUS_ID TEXT | signed-on-buddy JID
 *   mood JID MOOD TEXT (after a status line, while the buddy has a mood, XEP-0107)
 *   buddy-icon JID CHECKSUM SIZE (a buddy's icon as libpurple got it)
 *   signed-off-buddy JID | authorize-request ID JID | request-add JID
 *   userinfo WHO LABEL=VALUE | userinfo-end WHO | occupant NICK JID_ASKED (occupant-info)
 *   chat-joined ROOM | chat-left ROOM | chat-msg ROOM WHO TEXT | chat-topic ROOM WHO TOPIC
 *   chat-invited ROOM INVITER TEXT | room ROOM DESCRIPTION (the room list) | room-list-end
 *   chat-user-joined ROOM NICK | chat-user-left ROOM NICK REASON
 *   conv-write NAME WHO FLAGS TEXT (system and error lines of a conversation)
 *   notify TYPE TITLE | PRIMARY | SECONDARY
 *   request fields|action|input ID TITLE | PRIMARY  and, for fields, one line each:
 *   request-field ID FIELD TYPE VALUE, then request-end ID
 *   (for actions: request-action ID INDEX LABEL, then request-end ID); request-closed ID
 *   when libpurple withdraws a request it was not given an answer to
 *   notify formatted TITLE | PRIMARY | TEXT | deny JID | deny-end
 *   no-request ID | no-field ID FIELD | no-room ROOM | no-buddy JID | no-action LABEL |
 *   unknown-command VERB: a command that could not be carried out
 *   cmd-status STATUS ERROR | xfer STATUS NAME
 *   recv-xml XML | sent-xml XML: each top-level element both ways, with --xml (or
 *   PURPLE_HARNESS_XML=1 in the environment); PURPLE_HARNESS_DEBUG=1 prints libpurple's
 *   debug log on stderr
 *
 * Exit status 0 after quit.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <glib.h>
#include <purple.h>

#define UI_ID "fastxmpp-test"

static PurpleAccount *account;
static GMainLoop *loop;
static gboolean print_xml;
static const char *user_dir;

/* --- output ---------------------------------------------------------------------------- */

static void emit(const char *format, ...) G_GNUC_PRINTF(1, 2);

static void emit(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    char *line = g_strdup_vprintf(format, args);
    va_end(args);
    for (const char *p = line; *p; p++) {
        if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p != '\r')
            fputc(*p, stdout);
    }
    fputc('\n', stdout);
    fflush(stdout);
    g_free(line);
}

static const char *or_dash(const char *text)
{
    return text && *text ? text : "-";
}

/* --- GLib as libpurple's event loop ----------------------------------------------------- */

typedef struct {
    PurpleInputFunction function;
    gpointer data;
} Watch;

static gboolean watch_ready(GIOChannel *channel, GIOCondition condition, gpointer data)
{
    Watch *watch = data;
    PurpleInputCondition ready = 0;
    if (condition & (G_IO_IN | G_IO_HUP | G_IO_ERR))
        ready |= PURPLE_INPUT_READ;
    if (condition & (G_IO_OUT | G_IO_HUP | G_IO_ERR | G_IO_NVAL))
        ready |= PURPLE_INPUT_WRITE;
    watch->function(watch->data, g_io_channel_unix_get_fd(channel), ready);
    return TRUE;
}

static guint input_add(gint fd, PurpleInputCondition wanted, PurpleInputFunction function,
                       gpointer data)
{
    Watch *watch = g_new0(Watch, 1);
    watch->function = function;
    watch->data = data;
    GIOCondition condition = 0;
    if (wanted & PURPLE_INPUT_READ)
        condition |= G_IO_IN | G_IO_HUP | G_IO_ERR;
    if (wanted & PURPLE_INPUT_WRITE)
        condition |= G_IO_OUT | G_IO_HUP | G_IO_ERR | G_IO_NVAL;
    GIOChannel *channel = g_io_channel_unix_new(fd);
    guint id = g_io_add_watch_full(channel, G_PRIORITY_DEFAULT, condition, watch_ready, watch,
                                   g_free);
    g_io_channel_unref(channel);
    return id;
}

static PurpleEventLoopUiOps eventloop_ops = {
    .timeout_add = g_timeout_add,
    .timeout_remove = g_source_remove,
    .input_add = input_add,
    .input_remove = g_source_remove,
    .timeout_add_seconds = g_timeout_add_seconds,
};

/* --- requests: printed, answered by the test -------------------------------------------- */

typedef struct {
    int id;
    PurpleRequestType type;
    PurpleRequestFields *fields;
    GCallback ok_cb;
    GCallback cancel_cb;
    GArray *actions; /* of GCallback, for action requests */
    void *user_data;
    char *input;
    gboolean answered;
} Request;

static GHashTable *requests; /* id -> Request */
static int last_request;

static Request *new_request(PurpleRequestType type, const char *kind, const char *title,
                            const char *primary, void *user_data)
{
    Request *request = g_new0(Request, 1);
    request->id = ++last_request;
    request->type = type;
    request->user_data = user_data;
    g_hash_table_insert(requests, GINT_TO_POINTER(request->id), request);
    emit("request %s %d %s | %s", kind, request->id, or_dash(title), or_dash(primary));
    return request;
}

static void forget_request(Request *request)
{
    g_hash_table_remove(requests, GINT_TO_POINTER(request->id));
    if (request->fields)
        purple_request_fields_destroy(request->fields); /* the UI's to free, as Pidgin does */
    if (request->actions)
        g_array_free(request->actions, TRUE);
    g_free(request->input);
    g_free(request);
}

static void *request_input(const char *title, const char *primary, const char *secondary,
                           const char *default_value, gboolean multiline, gboolean masked,
                           gchar *hint, const char *ok_text, GCallback ok_cb,
                           const char *cancel_text, GCallback cancel_cb, PurpleAccount *acct,
                           const char *who, PurpleConversation *conv, void *user_data)
{
    Request *request = new_request(PURPLE_REQUEST_INPUT, "input", title, primary, user_data);
    request->ok_cb = ok_cb;
    request->cancel_cb = cancel_cb;
    request->input = g_strdup(default_value ? default_value : "");
    emit("request-end %d", request->id);
    return request;
}

static void *request_action(const char *title, const char *primary, const char *secondary,
                            int default_action, PurpleAccount *acct, const char *who,
                            PurpleConversation *conv, void *user_data, size_t action_count,
                            va_list actions)
{
    Request *request = new_request(PURPLE_REQUEST_ACTION, "action", title, primary, user_data);
    request->actions = g_array_new(FALSE, TRUE, sizeof(GCallback));
    for (size_t i = 0; i < action_count; i++) {
        const char *label = va_arg(actions, const char *);
        GCallback callback = va_arg(actions, GCallback);
        g_array_append_val(request->actions, callback);
        emit("request-action %d %zu %s", request->id, i, label);
    }
    emit("request-end %d", request->id);
    return request;
}

static char *field_value(PurpleRequestField *field)
{
    switch (purple_request_field_get_type(field)) {
    case PURPLE_REQUEST_FIELD_STRING:
        return g_strdup(or_dash(purple_request_field_string_get_value(field)));
    case PURPLE_REQUEST_FIELD_INTEGER:
        return g_strdup_printf("%d", purple_request_field_int_get_value(field));
    case PURPLE_REQUEST_FIELD_BOOLEAN:
        return g_strdup(purple_request_field_bool_get_value(field) ? "true" : "false");
    case PURPLE_REQUEST_FIELD_CHOICE: {
        int chosen = purple_request_field_choice_get_value(field);
        GList *labels = purple_request_field_choice_get_labels(field);
        const char *label = g_list_nth_data(labels, chosen);
        return g_strdup_printf("%d:%s", chosen, or_dash(label));
    }
    case PURPLE_REQUEST_FIELD_LIST: {
        GString *text = g_string_new("");
        for (GList *l = purple_request_field_list_get_items(field); l; l = l->next)
            g_string_append_printf(text, "%s%s", text->len ? "|" : "", (char *)l->data);
        return g_string_free(text, FALSE);
    }
    default:
        return g_strdup("-");
    }
}

static const char *field_type(PurpleRequestField *field)
{
    switch (purple_request_field_get_type(field)) {
    case PURPLE_REQUEST_FIELD_STRING:
        return purple_request_field_string_is_multiline(field) ? "text-multi" : "string";
    case PURPLE_REQUEST_FIELD_INTEGER:
        return "integer";
    case PURPLE_REQUEST_FIELD_BOOLEAN:
        return "boolean";
    case PURPLE_REQUEST_FIELD_CHOICE:
        return "choice";
    case PURPLE_REQUEST_FIELD_LIST:
        return "list";
    case PURPLE_REQUEST_FIELD_LABEL:
        return "label";
    default:
        return "other";
    }
}

static void *request_fields(const char *title, const char *primary, const char *secondary,
                            PurpleRequestFields *fields, const char *ok_text, GCallback ok_cb,
                            const char *cancel_text, GCallback cancel_cb, PurpleAccount *acct,
                            const char *who, PurpleConversation *conv, void *user_data)
{
    Request *request = new_request(PURPLE_REQUEST_FIELDS, "fields", title, primary, user_data);
    request->fields = fields;
    request->ok_cb = ok_cb;
    request->cancel_cb = cancel_cb;
    for (GList *g = purple_request_fields_get_groups(fields); g; g = g->next) {
        for (GList *f = purple_request_field_group_get_fields(g->data); f; f = f->next) {
            PurpleRequestField *field = f->data;
            char *value = field_value(field);
            emit("request-field %d %s %s %s", request->id, purple_request_field_get_id(field),
                 field_type(field), value);
            g_free(value);
        }
    }
    emit("request-end %d", request->id);
    return request;
}

/* libpurple closes a request: once answered (answer() asks it to, as Pidgin's dialogs do), or
   on its own (the connection or the room went away) */
static void close_request(PurpleRequestType type, void *handle)
{
    Request *request = handle;
    if (!request->answered)
        emit("request-closed %d", request->id);
    forget_request(request);
}

static PurpleRequestUiOps request_ops = {
    .request_input = request_input,
    .request_action = request_action,
    .request_fields = request_fields,
    .close_request = close_request,
};

static Request *find_request(const char *id)
{
    Request *request = g_hash_table_lookup(requests, GINT_TO_POINTER(atoi(id)));
    if (!request)
        emit("no-request %s", id);
    return request;
}

static void set_field(Request *request, const char *id, const char *value)
{
    PurpleRequestField *field =
        request->fields ? purple_request_fields_get_field(request->fields, id) : NULL;
    if (!field) {
        if (request->type == PURPLE_REQUEST_INPUT) {
            g_free(request->input);
            request->input = g_strdup(value);
            return;
        }
        emit("no-field %d %s", request->id, id);
        return;
    }
    char *text = g_strcompress(value); /* "\n" in the command: a newline (text-multi) */
    switch (purple_request_field_get_type(field)) {
    case PURPLE_REQUEST_FIELD_STRING:
        purple_request_field_string_set_value(field, text);
        break;
    case PURPLE_REQUEST_FIELD_INTEGER:
        purple_request_field_int_set_value(field, atoi(text));
        break;
    case PURPLE_REQUEST_FIELD_BOOLEAN:
        purple_request_field_bool_set_value(field, strcmp(text, "true") == 0);
        break;
    case PURPLE_REQUEST_FIELD_CHOICE:
        purple_request_field_choice_set_value(field, atoi(text));
        break;
    default:
        emit("no-field %d %s", request->id, id);
    }
    g_free(text);
}

static void answer(Request *request, gboolean ok, int action)
{
    PurpleRequestType type = request->type;
    GCallback cb = ok ? request->ok_cb : request->cancel_cb;
    request->answered = TRUE;
    if (type == PURPLE_REQUEST_FIELDS && cb) {
        ((PurpleRequestFieldsCb)cb)(request->user_data, request->fields);
    } else if (type == PURPLE_REQUEST_INPUT && cb) {
        ((PurpleRequestInputCb)cb)(request->user_data, request->input);
    } else if (type == PURPLE_REQUEST_ACTION && action >= 0 &&
               (guint)action < request->actions->len) {
        cb = g_array_index(request->actions, GCallback, action);
        if (cb)
            ((PurpleRequestActionCb)cb)(request->user_data, action);
    }
    /* frees libpurple's record of the request, then ours (close_request); a no-op when the
       callback closed it already */
    purple_request_close(type, request);
}

/* --- authorization requests (RFC 6121 §3.1.2: someone asks to see our presence) ---------- */

typedef struct {
    int id;
    PurpleAccountRequestAuthorizationCb authorize;
    PurpleAccountRequestAuthorizationCb deny;
    void *user_data;
} Authorization;

static GHashTable *authorizations;
static int last_authorization;

static void *request_authorize(PurpleAccount *acct, const char *remote_user, const char *id,
                               const char *alias, const char *message, gboolean on_list,
                               PurpleAccountRequestAuthorizationCb authorize_cb,
                               PurpleAccountRequestAuthorizationCb deny_cb, void *user_data)
{
    Authorization *request = g_new0(Authorization, 1);
    request->id = ++last_authorization;
    request->authorize = authorize_cb;
    request->deny = deny_cb;
    request->user_data = user_data;
    g_hash_table_insert(authorizations, GINT_TO_POINTER(request->id), request);
    emit("authorize-request %d %s", request->id, remote_user);
    return request;
}

static void close_account_request(void *handle)
{
    /* the handle stays valid: it is freed with the table */
}

static void request_add(PurpleAccount *acct, const char *remote_user, const char *id,
                        const char *alias, const char *message)
{
    emit("request-add %s", remote_user);
}

static PurpleAccountUiOps account_ops = {
    .request_add = request_add,
    .request_authorize = request_authorize,
    .close_account_request = close_account_request,
};

/* --- notifications ---------------------------------------------------------------------- */

static void *notify_message(PurpleNotifyMsgType type, const char *title, const char *primary,
                            const char *secondary)
{
    static const char *types[] = {"error", "warning", "info"};
    emit("notify %s %s | %s | %s", type <= PURPLE_NOTIFY_MSG_INFO ? types[type] : "other",
         or_dash(title), or_dash(primary), or_dash(secondary));
    return NULL;
}

static void *notify_formatted(const char *title, const char *primary, const char *secondary,
                              const char *text)
{
    emit("notify formatted %s | %s | %s", or_dash(title), or_dash(primary), or_dash(text));
    return NULL;
}

static void *notify_userinfo(PurpleConnection *gc, const char *who, PurpleNotifyUserInfo *info)
{
    for (GList *l = purple_notify_user_info_get_entries(info); l; l = l->next) {
        PurpleNotifyUserInfoEntry *entry = l->data;
        const char *label = purple_notify_user_info_entry_get_label(entry);
        if (label)
            emit("userinfo %s %s=%s", who, label,
                 or_dash(purple_notify_user_info_entry_get_value(entry)));
    }
    emit("userinfo-end %s", who);
    return NULL;
}

static PurpleNotifyUiOps notify_ops = {
    .notify_message = notify_message,
    .notify_formatted = notify_formatted,
    .notify_userinfo = notify_userinfo,
};

/* --- conversations ----------------------------------------------------------------------- */

static void write_conv(PurpleConversation *conv, const char *name, const char *alias,
                       const char *message, PurpleMessageFlags flags, time_t mtime)
{
    if (flags & (PURPLE_MESSAGE_SYSTEM | PURPLE_MESSAGE_ERROR))
        emit("conv-write %s %s %s %s", purple_conversation_get_name(conv), or_dash(name),
             flags & PURPLE_MESSAGE_ERROR ? "error" : "system", or_dash(message));
}

static PurpleConversationUiOps conversation_ops = {
    .write_conv = write_conv,
};

/* --- the room list (Pidgin's Room List window) ------------------------------------------- */

static void roomlist_add_room(PurpleRoomlist *list, PurpleRoomlistRoom *room)
{
    GList *values = purple_roomlist_room_get_fields(room);
    /* jabber's fields: room, server, description, users */
    emit("room %s@%s %s", or_dash(g_list_nth_data(values, 0)), or_dash(g_list_nth_data(values, 1)),
         or_dash(g_list_nth_data(values, 2)));
}

static void roomlist_in_progress(PurpleRoomlist *list, gboolean flag)
{
    if (!flag)
        emit("room-list-end");
}

static PurpleRoomlistUiOps roomlist_ops = {
    .add_room = roomlist_add_room,
    .in_progress = roomlist_in_progress,
};

/* --- file transfers: only the state of the offer ---------------------------------------- */

static void xfer_update(PurpleXfer *xfer, double percent)
{
}

static PurpleXferUiOps xfer_ops = {
    .update_progress = xfer_update,
};

static void on_xfer_state(PurpleXfer *xfer, gpointer data)
{
    emit("xfer %s %s", (const char *)data, or_dash(purple_xfer_get_filename(xfer)));
}

/* --- signals ------------------------------------------------------------------------------ */

static void on_signed_on(PurpleConnection *gc, gpointer data)
{
    emit("signed-on %s", purple_connection_get_display_name(gc));
}

static void on_signed_off(PurpleConnection *gc, gpointer data)
{
    emit("signed-off");
}

static void on_connection_error(PurpleConnection *gc, PurpleConnectionError reason,
                                const char *text, gpointer data)
{
    emit("connection-error %d %s", reason, or_dash(text));
}

static void on_im(PurpleAccount *acct, char *sender, char *message, PurpleConversation *conv,
                  PurpleMessageFlags flags, gpointer data)
{
    emit("im %s %s", sender, message);
}

static void on_chat_msg(PurpleAccount *acct, char *sender, char *message,
                        PurpleConversation *conv, PurpleMessageFlags flags, gpointer data)
{
    emit("chat-msg %s %s %s", purple_conversation_get_name(conv), or_dash(sender), message);
}

static void on_typing(PurpleAccount *acct, const char *who, gpointer state)
{
    emit("typing %s %s", who, (const char *)state);
}

static void on_buddy(PurpleBuddy *buddy, gpointer what)
{
    emit("%s %s", (const char *)what, purple_buddy_get_name(buddy));
}

static void on_buddy_status(PurpleBuddy *buddy, PurpleStatus *old, PurpleStatus *status,
                            gpointer data)
{
    emit("status %s %s %s", purple_buddy_get_name(buddy), purple_status_get_id(status),
         or_dash(purple_status_get_attr_string(status, "message")));
    PurpleStatus *mood = purple_presence_get_status(purple_buddy_get_presence(buddy), "mood");
    if (mood && purple_status_is_active(mood))
        emit("mood %s %s %s", purple_buddy_get_name(buddy),
             or_dash(purple_status_get_attr_string(mood, PURPLE_MOOD_NAME)),
             or_dash(purple_status_get_attr_string(mood, PURPLE_MOOD_COMMENT)));
}

static void on_buddy_icon(PurpleBuddy *buddy, gpointer data)
{
    PurpleBuddyIcon *icon = purple_buddy_get_icon(buddy);
    size_t size = 0;
    if (icon)
        purple_buddy_icon_get_data(icon, &size);
    emit("buddy-icon %s %s %zu", purple_buddy_get_name(buddy),
         icon ? or_dash(purple_buddy_icon_get_checksum(icon)) : "-", size);
}

static void on_chat_joined(PurpleConversation *conv, gpointer data)
{
    emit("chat-joined %s", purple_conversation_get_name(conv));
}

static void on_chat_left(PurpleConversation *conv, gpointer data)
{
    emit("chat-left %s", purple_conversation_get_name(conv));
}

static void on_chat_topic(PurpleConversation *conv, const char *who, const char *topic,
                          gpointer data)
{
    emit("chat-topic %s %s %s", purple_conversation_get_name(conv), or_dash(who),
         or_dash(topic));
}

static void on_chat_user_joined(PurpleConversation *conv, const char *name,
                                PurpleConvChatBuddyFlags flags, gboolean new_arrival,
                                gpointer data)
{
    emit("chat-user-joined %s %s", purple_conversation_get_name(conv), name);
}

static void on_chat_user_left(PurpleConversation *conv, const char *name, const char *reason,
                              gpointer data)
{
    emit("chat-user-left %s %s %s", purple_conversation_get_name(conv), name, or_dash(reason));
}

/* Its return value decides: 0 asks the user (1 would accept, -1 decline, unasked). */
static gint on_chat_invited(PurpleAccount *acct, const char *inviter, const char *chat,
                            const char *message, GHashTable *components, gpointer data)
{
    emit("chat-invited %s %s %s", chat, or_dash(inviter), or_dash(message));
    return 0;
}

/* The XMPP plugin's own signals: each top-level element as it goes and comes. */
static void on_xml(PurpleConnection *gc, xmlnode **packet, gpointer direction)
{
    if (!*packet)
        return;
    const char *name = (*packet)->name;
    /* libpurple writes <starttls/> as text: the server's <proceed/> tells it was sent */
    if (strcmp(direction, "recv") == 0 && strcmp(name, "proceed") == 0)
        emit("starttls");
    if (strcmp(direction, "sent") == 0 && strcmp(name, "auth") == 0)
        emit("auth %s", or_dash(xmlnode_get_attrib(*packet, "mechanism")));
    if (strcmp(direction, "recv") == 0 && strcmp(name, "failure") == 0 && (*packet)->child)
        emit("auth-failure %s", or_dash((*packet)->child->name));
    if (print_xml) {
        char *xml = xmlnode_to_str(*packet, NULL);
        emit("%s-xml %s", (const char *)direction, xml);
        g_free(xml);
    }
}

static void on_registered(PurpleAccount *acct, gboolean succeeded, void *data)
{
    emit("registered %s", succeeded ? "yes" : "no");
}

static void on_unregistered(PurpleAccount *acct, gboolean succeeded, void *data)
{
    emit("unregistered %s", succeeded ? "yes" : "no");
}

/* --- commands ------------------------------------------------------------------------------ */

static PurpleConnection *connection(void)
{
    return purple_account_get_connection(account);
}

static PurpleConversation *im_with(const char *who)
{
    PurpleConversation *conv =
        purple_find_conversation_with_account(PURPLE_CONV_TYPE_IM, who, account);
    return conv ? conv : purple_conversation_new(PURPLE_CONV_TYPE_IM, account, who);
}

static PurpleConversation *room(const char *name)
{
    PurpleConversation *conv =
        purple_find_conversation_with_account(PURPLE_CONV_TYPE_CHAT, name, account);
    if (!conv)
        emit("no-room %s", name);
    return conv;
}

static void run_action(const char *label)
{
    PurplePlugin *prpl = purple_connection_get_prpl(connection());
    if (!PURPLE_PLUGIN_HAS_ACTIONS(prpl)) {
        emit("no-action %s", label);
        return;
    }
    GList *actions = PURPLE_PLUGIN_ACTIONS(prpl, connection());
    gboolean found = FALSE;
    for (GList *l = actions; l; l = l->next) {
        PurplePluginAction *action = l->data;
        if (action && !found && strcmp(action->label, label) == 0) {
            action->plugin = prpl;
            action->context = connection();
            action->callback(action);
            found = TRUE;
        }
        if (action)
            purple_plugin_action_free(action);
    }
    g_list_free(actions);
    if (!found)
        emit("no-action %s", label);
}

static void send_file(const char *who, const char *name)
{
    char *path = g_build_filename(user_dir, name, NULL);
    g_file_set_contents(path, "a file from libpurple\n", -1, NULL);
    serv_send_file(connection(), who, path);
    g_free(path);
}

static void command(char *line)
{
    char **words = g_strsplit(line, " ", 3);
    const char *verb = words[0] ? words[0] : "";
    const char *one = words[0] && words[1] ? words[1] : "";
    const char *two = words[0] && words[1] && words[2] ? words[2] : "";
    char *rest = words[0] && words[1] ? g_strjoin(" ", words[1], words[2], NULL) : g_strdup("");

    if (strcmp(verb, "msg") == 0) {
        purple_conv_im_send(PURPLE_CONV_IM(im_with(one)), two);
    } else if (strcmp(verb, "typing") == 0) {
        PurpleTypingState state = strcmp(two, "typing") == 0  ? PURPLE_TYPING
                                  : strcmp(two, "typed") == 0 ? PURPLE_TYPED
                                                              : PURPLE_NOT_TYPING;
        serv_send_typing(connection(), one, state);
    } else if (strcmp(verb, "add") == 0) {
        PurpleBuddy *buddy = purple_buddy_new(account, one, *two ? two : NULL);
        purple_blist_add_buddy(buddy, NULL, NULL, NULL);
        purple_account_add_buddy(account, buddy);
    } else if (strcmp(verb, "remove") == 0) {
        PurpleBuddy *buddy = purple_find_buddy(account, one);
        if (buddy) {
            purple_account_remove_buddy(account, buddy, purple_buddy_get_group(buddy));
            purple_blist_remove_buddy(buddy);
        } else {
            emit("no-buddy %s", one);
        }
    } else if (strcmp(verb, "authorize") == 0) {
        Authorization *request = g_hash_table_lookup(authorizations, GINT_TO_POINTER(atoi(one)));
        if (request) {
            g_hash_table_steal(authorizations, GINT_TO_POINTER(request->id));
            (strcmp(two, "yes") == 0 ? request->authorize : request->deny)(request->user_data);
            g_free(request);
        } else {
            emit("no-request %s", one);
        }
    } else if (strcmp(verb, "status") == 0) {
        purple_account_set_status(account, one, TRUE, "message", *two ? two : NULL, NULL);
    } else if (strcmp(verb, "info") == 0) {
        serv_get_info(connection(), one);
    } else if (strcmp(verb, "occupant-info") == 0) {
        PurpleConversation *conv = room(one);
        PurplePluginProtocolInfo *prpl =
            PURPLE_PLUGIN_PROTOCOL_INFO(purple_connection_get_prpl(connection()));
        if (conv) {
            int id = purple_conv_chat_get_id(PURPLE_CONV_CHAT(conv));
            char *real = prpl->get_cb_real_name(connection(), id, two);
            emit("occupant %s %s", two, or_dash(real));
            serv_get_info(connection(), real ? real : two);
            g_free(real);
        }
    } else if (strcmp(verb, "action") == 0) {
        run_action(rest);
    } else if (strcmp(verb, "join") == 0) {
        char **parts = g_strsplit(one, "@", 2);
        char **nick_and_password = g_strsplit(two, " ", 2);
        GHashTable *components = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        g_hash_table_insert(components, g_strdup("room"), g_strdup(parts[0]));
        g_hash_table_insert(components, g_strdup("server"), g_strdup(parts[1] ? parts[1] : ""));
        g_hash_table_insert(components, g_strdup("handle"), g_strdup(nick_and_password[0]));
        if (nick_and_password[0] && nick_and_password[1])
            g_hash_table_insert(components, g_strdup("password"),
                                g_strdup(nick_and_password[1]));
        serv_join_chat(connection(), components);
        g_hash_table_destroy(components);
        g_strfreev(nick_and_password);
        g_strfreev(parts);
    } else if (strcmp(verb, "chat") == 0) {
        PurpleConversation *conv = room(one);
        if (conv)
            purple_conv_chat_send(PURPLE_CONV_CHAT(conv), two);
    } else if (strcmp(verb, "cmd") == 0) {
        PurpleConversation *conv =
            purple_find_conversation_with_account(PURPLE_CONV_TYPE_CHAT, one, account);
        if (!conv)
            conv = im_with(one);
        char *error = NULL;
        char *markup = g_markup_escape_text(two, -1);
        PurpleCmdStatus status = purple_cmd_do_command(conv, two, markup, &error);
        emit("cmd-status %d %s", status, or_dash(error));
        g_free(markup);
        g_free(error);
    } else if (strcmp(verb, "leave") == 0) {
        PurpleConversation *conv = room(one);
        if (conv)
            purple_conversation_destroy(conv);
    } else if (strcmp(verb, "block") == 0) {
        purple_privacy_deny_add(account, one, FALSE);
    } else if (strcmp(verb, "unblock") == 0) {
        purple_privacy_deny_remove(account, one, FALSE);
    } else if (strcmp(verb, "alias") == 0) {
        PurpleBuddy *buddy = purple_find_buddy(account, one);
        if (buddy) {
            purple_blist_alias_buddy(buddy, two);
            serv_alias_buddy(buddy);
        } else {
            emit("no-buddy %s", one);
        }
    } else if (strcmp(verb, "move") == 0) {
        PurpleBuddy *buddy = purple_find_buddy(account, one);
        if (buddy) {
            PurpleGroup *group = purple_find_group(two);
            if (!group) {
                group = purple_group_new(two);
                purple_blist_add_group(group, NULL);
            }
            purple_blist_add_buddy(buddy, NULL, group, NULL);
        } else {
            emit("no-buddy %s", one);
        }
    } else if (strcmp(verb, "mood") == 0) {
        purple_account_set_status(account, "mood", TRUE, PURPLE_MOOD_NAME, one,
                                  PURPLE_MOOD_COMMENT, *two ? two : NULL, NULL);
    } else if (strcmp(verb, "icon") == 0) {
        gsize size = strlen(one) / 2;
        guchar *data = g_malloc(size);
        for (gsize i = 0; i < size; i++)
            sscanf(one + 2 * i, "%2hhx", &data[i]);
        purple_buddy_icons_set_account_icon(account, data, size);
    } else if (strcmp(verb, "invite") == 0) {
        PurpleConversation *conv = room(one);
        char **parts = g_strsplit(two, " ", 2);
        if (conv && parts[0])
            serv_chat_invite(connection(), purple_conv_chat_get_id(PURPLE_CONV_CHAT(conv)),
                             parts[1] ? parts[1] : "", parts[0]);
        g_strfreev(parts);
    } else if (strcmp(verb, "room-list") == 0) {
        purple_roomlist_get_list(connection());
    } else if (strcmp(verb, "deny-list") == 0) {
        for (GSList *l = account->deny; l; l = l->next)
            emit("deny %s", (const char *)l->data);
        emit("deny-end");
    } else if (strcmp(verb, "send-file") == 0) {
        send_file(one, two);
    } else if (strcmp(verb, "field") == 0) {
        Request *request = find_request(one);
        char **parts = g_strsplit(two, " ", 2);
        if (request && parts[0])
            set_field(request, parts[0], parts[1] ? parts[1] : "");
        g_strfreev(parts);
    } else if (strcmp(verb, "submit") == 0 || strcmp(verb, "cancel") == 0) {
        Request *request = find_request(one);
        if (request)
            answer(request, strcmp(verb, "submit") == 0, -1);
    } else if (strcmp(verb, "choose") == 0) {
        Request *request = find_request(one);
        if (request)
            answer(request, TRUE, atoi(two));
    } else if (strcmp(verb, "unregister") == 0) {
        purple_account_unregister(account, on_unregistered, NULL);
    } else if (strcmp(verb, "quit") == 0) {
        purple_account_set_enabled(account, UI_ID, FALSE);
        g_main_loop_quit(loop);
    } else {
        emit("unknown-command %s", verb);
    }
    g_free(rest);
    g_strfreev(words);
}

static gboolean stdin_ready(GIOChannel *channel, GIOCondition condition, gpointer data)
{
    char *line = NULL;
    gsize length = 0;
    GIOStatus status = g_io_channel_read_line(channel, &line, &length, NULL, NULL);
    if (status == G_IO_STATUS_EOF || status == G_IO_STATUS_ERROR) {
        g_main_loop_quit(loop);
        return FALSE;
    }
    if (line) {
        g_strchomp(line);
        command(line);
        g_free(line);
    }
    return TRUE;
}

/* --- start ---------------------------------------------------------------------------------- */

static void copy_ca(const char *ca_file, const char *ca_dir)
{
    char *pem = NULL;
    gsize size = 0;
    if (!g_file_get_contents(ca_file, &pem, &size, NULL)) {
        fprintf(stderr, "cannot read %s\n", ca_file);
        exit(2);
    }
    g_mkdir_with_parents(ca_dir, 0700);
    char *path = g_build_filename(ca_dir, "test-ca.pem", NULL);
    g_file_set_contents(path, pem, size, NULL);
    g_free(path);
    g_free(pem);
}

static void debug_print(PurpleDebugLevel level, const char *category, const char *text)
{
    fprintf(stderr, "%s: %s", or_dash(category), text);
}

static gboolean debug_enabled(PurpleDebugLevel level, const char *category)
{
    return TRUE;
}

static PurpleDebugUiOps debug_ops = {
    .print = debug_print,
    .is_enabled = debug_enabled,
};

static PurpleCoreUiOps core_ops;

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s JID PASSWORD CA_FILE PORT USER_DIR [--register] [--xml]\n",
                argv[0]);
        return 2;
    }
    const char *jid = argv[1], *password = argv[2], *ca_file = argv[3];
    int port = atoi(argv[4]);
    user_dir = argv[5];
    gboolean do_register = FALSE;
    print_xml = g_getenv("PURPLE_HARNESS_XML") != NULL;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "--register") == 0)
            do_register = TRUE;
        else if (strcmp(argv[i], "--xml") == 0)
            print_xml = TRUE;
    }
    gboolean debug = g_getenv("PURPLE_HARNESS_DEBUG") != NULL;

    requests = g_hash_table_new(g_direct_hash, g_direct_equal);
    authorizations = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    loop = g_main_loop_new(NULL, FALSE);

    g_mkdir_with_parents(user_dir, 0700);
    purple_util_set_user_dir(user_dir);
    /* The only CA libpurple trusts: a search path set before the core starts replaces the
       system's (/etc/ssl/certs and libpurple's own ca-certs). */
    char *ca_dir = g_build_filename(user_dir, "ca", NULL);
    copy_ca(ca_file, ca_dir);
    purple_certificate_add_ca_search_path(ca_dir);

    purple_debug_set_enabled(debug);
    if (debug)
        purple_debug_set_ui_ops(&debug_ops);
    purple_core_set_ui_ops(&core_ops);
    purple_eventloop_set_ui_ops(&eventloop_ops);
    purple_request_set_ui_ops(&request_ops);
    purple_accounts_set_ui_ops(&account_ops);
    purple_notify_set_ui_ops(&notify_ops);
    purple_conversations_set_ui_ops(&conversation_ops);
    purple_xfers_set_ui_ops(&xfer_ops);
    purple_roomlist_set_ui_ops(&roomlist_ops);
    if (!purple_core_init(UI_ID)) {
        fprintf(stderr, "libpurple did not start\n");
        return 2;
    }
    purple_set_blist(purple_blist_new());
    purple_blist_load();
    purple_prefs_load();
    /* no chat logs on disk, no idle reports */
    purple_prefs_set_bool("/purple/logging/log_ims", FALSE);
    purple_prefs_set_bool("/purple/logging/log_chats", FALSE);
    purple_prefs_set_bool("/purple/logging/log_system", FALSE);
    purple_prefs_set_string("/purple/away/idle_reporting", "none");

    void *handle = &core_ops;
    purple_signal_connect(purple_connections_get_handle(), "signed-on", handle,
                          PURPLE_CALLBACK(on_signed_on), NULL);
    purple_signal_connect(purple_connections_get_handle(), "signed-off", handle,
                          PURPLE_CALLBACK(on_signed_off), NULL);
    purple_signal_connect(purple_connections_get_handle(), "connection-error", handle,
                          PURPLE_CALLBACK(on_connection_error), NULL);
    void *convs = purple_conversations_get_handle();
    purple_signal_connect(convs, "received-im-msg", handle, PURPLE_CALLBACK(on_im), NULL);
    purple_signal_connect(convs, "received-chat-msg", handle, PURPLE_CALLBACK(on_chat_msg),
                          NULL);
    purple_signal_connect(convs, "buddy-typing", handle, PURPLE_CALLBACK(on_typing), "typing");
    purple_signal_connect(convs, "buddy-typed", handle, PURPLE_CALLBACK(on_typing), "typed");
    purple_signal_connect(convs, "buddy-typing-stopped", handle, PURPLE_CALLBACK(on_typing),
                          "none");
    purple_signal_connect(convs, "chat-joined", handle, PURPLE_CALLBACK(on_chat_joined), NULL);
    purple_signal_connect(convs, "chat-left", handle, PURPLE_CALLBACK(on_chat_left), NULL);
    purple_signal_connect(convs, "chat-invited", handle, PURPLE_CALLBACK(on_chat_invited), NULL);
    purple_signal_connect(convs, "chat-topic-changed", handle, PURPLE_CALLBACK(on_chat_topic),
                          NULL);
    purple_signal_connect(convs, "chat-buddy-joined", handle,
                          PURPLE_CALLBACK(on_chat_user_joined), NULL);
    purple_signal_connect(convs, "chat-buddy-left", handle, PURPLE_CALLBACK(on_chat_user_left),
                          NULL);
    void *blist = purple_blist_get_handle();
    purple_signal_connect(blist, "buddy-added", handle, PURPLE_CALLBACK(on_buddy),
                          "buddy-added");
    purple_signal_connect(blist, "buddy-removed", handle, PURPLE_CALLBACK(on_buddy),
                          "buddy-removed");
    purple_signal_connect(blist, "buddy-signed-on", handle, PURPLE_CALLBACK(on_buddy),
                          "signed-on-buddy");
    purple_signal_connect(blist, "buddy-signed-off", handle, PURPLE_CALLBACK(on_buddy),
                          "signed-off-buddy");
    purple_signal_connect(blist, "buddy-icon-changed", handle, PURPLE_CALLBACK(on_buddy_icon),
                          NULL);
    purple_signal_connect(blist, "buddy-status-changed", handle,
                          PURPLE_CALLBACK(on_buddy_status), NULL);
    void *xfers = purple_xfers_get_handle();
    purple_signal_connect(xfers, "file-send-accept", handle, PURPLE_CALLBACK(on_xfer_state),
                          "accepted");
    purple_signal_connect(xfers, "file-send-cancel", handle, PURPLE_CALLBACK(on_xfer_state),
                          "cancelled");
    purple_signal_connect(xfers, "file-send-start", handle, PURPLE_CALLBACK(on_xfer_state),
                          "started");
    purple_signal_connect(xfers, "file-send-complete", handle, PURPLE_CALLBACK(on_xfer_state),
                          "completed");
    PurplePlugin *jabber = purple_plugins_find_with_id("prpl-jabber");
    if (!jabber) {
        fprintf(stderr, "no prpl-jabber plugin\n");
        return 2;
    }
    purple_signal_connect(jabber, "jabber-sending-xmlnode", handle, PURPLE_CALLBACK(on_xml),
                          "sent");
    purple_signal_connect(jabber, "jabber-receiving-xmlnode", handle, PURPLE_CALLBACK(on_xml),
                          "recv");

    account = purple_account_new(jid, "prpl-jabber");
    purple_account_set_password(account, password);
    purple_account_set_remember_password(account, TRUE);
    purple_account_set_string(account, "connect_server", "localhost");
    purple_account_set_int(account, "port", port);
    purple_account_set_string(account, "connection_security", "require_tls");
    purple_account_set_bool(account, "auth_plain_in_clear", FALSE);
    purple_account_set_string(account, "ft_proxies", "");
    purple_accounts_add(account);

    PurpleSavedStatus *available = purple_savedstatus_new(NULL, PURPLE_STATUS_AVAILABLE);
    purple_savedstatus_activate(available);
    if (do_register) {
        purple_account_set_register_callback(account, on_registered, NULL);
        purple_account_register(account);
    } else {
        purple_account_set_enabled(account, UI_ID, TRUE);
    }

    GIOChannel *input = g_io_channel_unix_new(0);
    g_io_add_watch(input, G_IO_IN | G_IO_HUP | G_IO_ERR, stdin_ready, NULL);
    g_main_loop_run(loop);
    purple_core_quit();
    g_free(ca_dir);
    return 0;
}
