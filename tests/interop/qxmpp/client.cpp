/* A QXmpp 1.4 client (the C++/Qt library under Kaidan) driven by tests/test_interop_qxmpp.py.
 *
 *   client JID PASSWORD CA_FILE PORT [RESOURCE] [--register]
 *
 * With --register the account is first created in band, as Kaidan's sign-up does
 * (QXmppRegistrationManager with register-on-connect: the server's form, filled with the JID's
 * local part and PASSWORD), and the harness exits after the result (0: registered).
 *
 * Connects to 127.0.0.1:PORT as QXmpp does by default, with STARTTLS required (TLSRequired;
 * QXmpp's default uses it when offered), the server's certificate verified against CA_FILE
 * only (QXmppConfiguration::setCaCertificates; SSL errors are not ignored, so a bad
 * certificate fails the login), the SASL mechanism QXmpp picks, bind, XEP-0198 (QXmpp
 * enables it with resumption whenever the server offers it).
 * Automatic reconnection is off: the test says when to connect again (`resume`). Then reads
 * one command a line on stdin:
 *
 *   msg TO BODY              a chat message
 *   roster                   the roster QXmpp fetched at login
 *   add JID NAME             add a contact as Kaidan does: a roster item, then subscribe
 *   accept JID               accept JID's subscription request
 *   remove JID               remove the contact (its roster item)
 *   carbons                  enable XEP-0280 carbons (QXmppCarbonManager)
 *   mam WITH MAX [AFTER]     a XEP-0313 query (QXmppMamManager) with XEP-0059 paging
 *   mam-back WITH MAX [BEFORE]  as Kaidan loads history: the last page (an empty <before/>,
 *                            XEP-0059 §2.5) or the one before BEFORE, up to now (an 'end'
 *                            with milliseconds, as QXmpp writes the current time)
 *   join ROOM NICK           enter a room (QXmppMucRoom::join)
 *   instant ROOM             submit an empty form: an instant room (XEP-0045 §10.1.2)
 *   groupchat ROOM BODY      a groupchat message to the room
 *   subject ROOM TEXT        change the subject
 *   nick ROOM NICK           change the nickname
 *   room-form ROOM           ask for the room's configuration form (XEP-0045 §10.2)
 *   room-set ROOM VAR VALUE  submit the form last received with VAR set to VALUE
 *   permissions ROOM         ask for the room's affiliation lists (QXmppMucRoom)
 *   kick ROOM OCCUPANT_JID REASON | ban ROOM BARE_JID REASON
 *   leave ROOM
 *   vcard-set FN NICKNAME    publish the own vCard (XEP-0054)
 *   vcard-get [JID]          fetch the own vCard, or JID's
 *   vcard-photo HEX          publish a vCard with a PNG photo (the avatar Kaidan shows)
 *   upload NAME CONTENT      ask for a XEP-0363 slot (QXmppUploadRequestManager), PUT
 *                            CONTENT there over HTTPS (the same CA only), GET it back
 *   slot NAME SIZE           only ask for a slot for a file of SIZE bytes
 *   disco JID                a disco#info query
 *   version JID | time JID   XEP-0092 / XEP-0202 queries
 *   password NEW...          change the password in band (XEP-0077 §3.3)
 *   unregister               delete the account in band (XEP-0077 §3.2)
 *   active | inactive        XEP-0352 client state (QXmppClient::setActive)
 *   push JID NODE SECRET     enable XEP-0357 push to app server JID (QXmppPushEnableIq, the
 *                            secret in publish-options): its answer is `iq sync-push TYPE`
 *   sync ID                  an XEP-0199 ping to the server: its answer (`iq ID TYPE`) says
 *                            the server handled what came before on this stream
 *   cut                      shut the socket down, unannounced
 *   resume                   connect again: QXmpp tries to resume the session (XEP-0198
 *                            §5; 1.4 cannot, see tests/test_interop_qxmpp.py)
 *   quit                     close the stream and exit
 *
 * and prints one line per event on stdout (flushed):
 *
 *   starttls | auth MECH | connected BOUND_JID SM_STATE | disconnected
 *   error socket|keepalive | error stream CONDITION
 *   ssl-error TEXT | sm enabled RESUME | sm resumed H | sm failed
 *   sm resume SENT_XML | sm acked H (QXmpp's <a/>, sent when the server asks)
 *   roster-received N | roster JID SUBSCRIPTION | subscription-request JID
 *   roster-item added|changed JID SUBSCRIPTION [ask] | roster-item removed JID
 *   message FROM TO TYPE BODY (after `stanza-id BY ID BODY` when it has one) | presence FROM TYPE
 *   carbon received|sent FROM TO BODY
 *   mam-message QUERY_ID FROM BODY | mam-end QUERY_ID COUNT FIRST LAST COMPLETE
 *   room-joined ROOM | room-participant ROOM JID added|changed|removed
 *   room-message ROOM FROM BODY | room-subject ROOM TEXT | room-nick ROOM NICK
 *   room-error ROOM CONDITION | room-form ROOM VAR... | room-name ROOM NAME
 *   room-permissions ROOM JID:AFFILIATION... | room-kicked ROOM JID REASON | room-left ROOM
 *   vcard JID|- FN NICKNAME | vcard self FN NICKNAME (the own, as QXmpp keeps it) | vcard-set
 *   upload-services JID:MAX_SIZE... | slot PUT_URL GET_URL | slot-error CONDITION
 *   put STATUS ok|ERROR_TEXT | get STATUS BODY
 *   items FROM JID... (the server's, asked at login) | disco FROM IDENTITY...
 *   feature FROM VAR ... disco-end FROM | iq ID TYPE
 *   version FROM NAME VERSION | time FROM TZO_SECONDS UTC_ISO
 *   register-form FIELDS... | registered | register-failed CONDITION
 *   password-changed | password-failed CONDITION | deleted | delete-failed CONDITION
 *
 * Exit status 0 after quit, 1 when the connection failed before any login.
 */
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include <QCoreApplication>
#include <QMimeDatabase>
#include <QNetworkAccessManager>
#include <QNetworkReply>
#include <QNetworkRequest>
#include <QRegularExpression>
#include <QSocketNotifier>
#include <QSslCertificate>
#include <QSslConfiguration>
#include <QSslSocket>

#include <QXmppCarbonManager.h>
#include <QXmppClient.h>
#include <QXmppConfiguration.h>
#include <QXmppDiscoveryIq.h>
#include <QXmppDiscoveryManager.h>
#include <QXmppEntityTimeIq.h>
#include <QXmppEntityTimeManager.h>
#include <QXmppHttpUploadIq.h>
#include <QXmppLogger.h>
#include <QXmppMamManager.h>
#include <QXmppMessage.h>
#include <QXmppMucIq.h>
#include <QXmppMucManager.h>
#include <QXmppPingIq.h>
#include <QXmppPresence.h>
#include <QXmppPushEnableIq.h>
#include <QXmppRegisterIq.h>
#include <QXmppRegistrationManager.h>
#include <QXmppResultSet.h>
#include <QXmppRosterManager.h>
#include <QXmppUploadRequestManager.h>
#include <QXmppVCardIq.h>
#include <QXmppVCardManager.h>
#include <QXmppVersionIq.h>
#include <QXmppVersionManager.h>

static void emit_line(const QString &line)
{
    std::fputs(line.toUtf8().constData(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

static QString attr(const QString &xml, const QString &name)
{
    QRegularExpression re(QStringLiteral(" %1=[\"']([^\"']*)[\"']").arg(name));
    auto match = re.match(xml);
    return match.hasMatch() ? match.captured(1) : QString();
}

static const char *condition(QXmppStanza::Error::Condition c)
{
    switch (c) {
    case QXmppStanza::Error::Conflict:
        return "conflict";
    case QXmppStanza::Error::Forbidden:
        return "forbidden";
    case QXmppStanza::Error::ItemNotFound:
        return "item-not-found";
    case QXmppStanza::Error::NotAcceptable:
        return "not-acceptable";
    case QXmppStanza::Error::NotAllowed:
        return "not-allowed";
    case QXmppStanza::Error::BadRequest:
        return "bad-request";
    case QXmppStanza::Error::ServiceUnavailable:
        return "service-unavailable";
    case QXmppStanza::Error::FeatureNotImplemented:
        return "feature-not-implemented";
    case QXmppStanza::Error::ResourceConstraint:
        return "resource-constraint";
    case QXmppStanza::Error::NotAuthorized:
        return "not-authorized";
    default:
        return "other";
    }
}

class Harness : public QObject
{
public:
    Harness(const QString &jid, const QString &password, const QString &caFile, int port,
            const QString &resource, bool signUp)
    {
        cas = QSslCertificate::fromPath(caFile);
        config.setJid(jid);
        if (!resource.isEmpty())
            config.setResource(resource);  // else QXmpp's default, "QXmpp"
        config.setPassword(password);
        config.setHost(QStringLiteral("127.0.0.1"));
        config.setPort(port);
        config.setStreamSecurityMode(QXmppConfiguration::TLSRequired);
        config.setCaCertificates(cas);
        config.setAutoReconnectionEnabled(false);
        config.setKeepAliveInterval(0);  // no pings of its own in the tests' streams

        logger.setLoggingType(QXmppLogger::SignalLogging);
        logger.setMessageTypes(QXmppLogger::AnyMessage);
        debug = qEnvironmentVariableIsSet("QXMPP_HARNESS_DEBUG");
        connect(&logger, &QXmppLogger::message, this, &Harness::onLog);
        client.setLogger(&logger);

        client.addExtension(carbons = new QXmppCarbonManager);
        client.addExtension(mam = new QXmppMamManager);
        client.addExtension(muc = new QXmppMucManager);
        client.addExtension(upload = new QXmppUploadRequestManager);
        roster = client.findExtension<QXmppRosterManager>();
        vcards = client.findExtension<QXmppVCardManager>();
        disco = client.findExtension<QXmppDiscoveryManager>();
        versions = client.findExtension<QXmppVersionManager>();
        times = client.findExtension<QXmppEntityTimeManager>();
        client.addExtension(registration = new QXmppRegistrationManager);
        registration->setRegisterOnConnectEnabled(signUp);

        connect(registration, &QXmppRegistrationManager::registrationFormReceived, this,
                [this, jid, password](const QXmppRegisterIq &form) {
                    QStringList fields;
                    if (!form.username().isNull())
                        fields << "username";
                    if (!form.password().isNull())
                        fields << "password";
                    if (!form.form().isNull())
                        fields << "x:data";
                    emit_line(QStringLiteral("register-form %1").arg(fields.join(' ')));
                    QXmppRegisterIq filled;
                    filled.setUsername(jid.section('@', 0, 0));
                    filled.setPassword(password);
                    registration->setRegistrationFormToSend(filled);
                    registration->sendCachedRegistrationForm();
                });
        connect(registration, &QXmppRegistrationManager::registrationSucceeded, this, [this] {
            emit_line(QStringLiteral("registered"));
            quitting = true;
            client.disconnectFromServer();
        });
        connect(registration, &QXmppRegistrationManager::registrationFailed, this,
                [this](const QXmppStanza::Error &e) {
                    emit_line(QStringLiteral("register-failed %1").arg(condition(e.condition())));
                    client.disconnectFromServer();
                });
        connect(registration, &QXmppRegistrationManager::passwordChanged, this,
                [](const QString &) { emit_line(QStringLiteral("password-changed")); });
        connect(registration, &QXmppRegistrationManager::passwordChangeFailed, this,
                [](const QXmppStanza::Error &e) {
                    emit_line(QStringLiteral("password-failed %1").arg(condition(e.condition())));
                });
        connect(registration, &QXmppRegistrationManager::accountDeleted, this,
                [] { emit_line(QStringLiteral("deleted")); });
        connect(registration, &QXmppRegistrationManager::accountDeletionFailed, this,
                [](const QXmppStanza::Error &e) {
                    emit_line(QStringLiteral("delete-failed %1").arg(condition(e.condition())));
                });
        connect(versions, &QXmppVersionManager::versionReceived, this,
                [](const QXmppVersionIq &v) {
                    emit_line(QStringLiteral("version %1 %2 %3").arg(v.from(), v.name(), v.version()));
                });
        connect(times, &QXmppEntityTimeManager::timeReceived, this,
                [](const QXmppEntityTimeIq &t) {
                    emit_line(QStringLiteral("time %1 %2 %3")
                                  .arg(t.from())
                                  .arg(t.tzo())
                                  .arg(t.utc().toString(Qt::ISODate)));
                });
        connect(roster, &QXmppRosterManager::subscriptionReceived, this,
                [](const QString &jid) { emit_line("subscription-request " + jid); });
        connect(roster, &QXmppRosterManager::itemAdded, this,
                [this](const QString &jid) { rosterItem("added", jid); });
        connect(roster, &QXmppRosterManager::itemChanged, this,
                [this](const QString &jid) { rosterItem("changed", jid); });
        connect(roster, &QXmppRosterManager::itemRemoved, this,
                [this](const QString &jid) { rosterItem("removed", jid); });

        connect(&client, &QXmppClient::connected, this, [this] {
            everConnected = true;
            // as Kaidan's DiscoveryManager: the server's items, then each item's info, which
            // is where QXmppUploadRequestManager finds the upload service (XEP-0363 §2)
            if (client.streamManagementState() != QXmppClient::ResumedStream)
                disco->requestItems(client.configuration().domain());
            const char *state[] = {"none", "new", "resumed"};
            emit_line(QStringLiteral("connected %1 %2")
                          .arg(client.configuration().jid(),
                               state[client.streamManagementState()]));
        });
        connect(&client, &QXmppClient::disconnected, this, [this] {
            emit_line(QStringLiteral("disconnected"));
            if (quitting || !everConnected)
                QCoreApplication::exit(quitting ? 0 : 1);
        });
        connect(&client, &QXmppClient::error, this, [this](QXmppClient::Error e) {
            const char *kinds[] = {"none", "socket", "keepalive", "stream"};
            // what Kaidan tells its user from: a stream error's (or SASL failure's) condition
            if (e == QXmppClient::XmppStreamError)
                emit_line(QStringLiteral("error stream %1").arg(condition(client.xmppStreamError())));
            else
                emit_line(QStringLiteral("error %1").arg(kinds[e]));
        });
        connect(&client, &QXmppClient::sslErrors, this, [](const QList<QSslError> &errors) {
            for (const auto &e : errors)
                emit_line(QStringLiteral("ssl-error %1").arg(e.errorString()));
        });
        connect(&client, &QXmppClient::messageReceived, this, [](const QXmppMessage &m) {
            if (m.body().isEmpty() || m.type() == QXmppMessage::GroupChat)
                return;
            const char *types[] = {"error", "normal", "chat", "groupchat", "headline"};
            if (!m.stanzaId().isEmpty())  // XEP-0359, what Kaidan pages the archive after
                emit_line(QStringLiteral("stanza-id %1 %2 %3").arg(m.stanzaIdBy(), m.stanzaId(), m.body()));
            emit_line(QStringLiteral("message %1 %2 %3 %4")
                          .arg(m.from(), m.to(), types[m.type()], m.body()));
        });
        connect(&client, &QXmppClient::presenceReceived, this, [](const QXmppPresence &p) {
            const char *types[] = {"error",     "available",    "unavailable", "subscribe",
                                   "subscribed", "unsubscribe", "unsubscribed", "probe"};
            emit_line(QStringLiteral("presence %1 %2").arg(p.from(), types[p.type()]));
        });
        connect(roster, &QXmppRosterManager::rosterReceived, this, [this] {
            emit_line(QStringLiteral("roster-received %1").arg(roster->getRosterBareJids().size()));
        });
        connect(carbons, &QXmppCarbonManager::messageReceived, this, [](const QXmppMessage &m) {
            emit_line(QStringLiteral("carbon received %1 %2 %3").arg(m.from(), m.to(), m.body()));
        });
        connect(carbons, &QXmppCarbonManager::messageSent, this, [](const QXmppMessage &m) {
            emit_line(QStringLiteral("carbon sent %1 %2 %3").arg(m.from(), m.to(), m.body()));
        });
        connect(mam, &QXmppMamManager::archivedMessageReceived, this,
                [](const QString &id, const QXmppMessage &m) {
                    emit_line(QStringLiteral("mam-message %1 %2 %3").arg(id, m.from(), m.body()));
                });
        connect(mam, &QXmppMamManager::resultsRecieved, this,
                [](const QString &id, const QXmppResultSetReply &r, bool complete) {
                    emit_line(QStringLiteral("mam-end %1 %2 %3 %4 %5")
                                  .arg(id)
                                  .arg(r.count())
                                  .arg(r.first(), r.last(), complete ? "true" : "false"));
                });
        connect(vcards, &QXmppVCardManager::vCardReceived, this, [](const QXmppVCardIq &v) {
            emit_line(QStringLiteral("vcard %1 %2 %3")
                          .arg(v.from().isEmpty() ? QStringLiteral("-") : v.from(),
                               v.fullName(), v.nickName()));
        });
        connect(vcards, &QXmppVCardManager::clientVCardReceived, this, [this] {
            const auto &v = vcards->clientVCard();
            emit_line(QStringLiteral("vcard self %1 %2").arg(v.fullName(), v.nickName()));
        });
        connect(upload, &QXmppUploadRequestManager::serviceFoundChanged, this, [this] {
            QStringList jids;
            for (const auto &s : upload->uploadServices())
                jids << QStringLiteral("%1:%2").arg(s.jid()).arg(s.sizeLimit());
            emit_line(QStringLiteral("upload-services %1").arg(jids.join(' ')));
        });
        connect(upload, &QXmppUploadRequestManager::slotReceived, this,
                &Harness::onSlot);
        connect(upload, &QXmppUploadRequestManager::requestFailed, this,
                [](const QXmppHttpUploadRequestIq &iq) {
                    emit_line(QStringLiteral("slot-error %1").arg(condition(iq.error().condition())));
                });
        connect(disco, &QXmppDiscoveryManager::itemsReceived, this,
                [this](const QXmppDiscoveryIq &iq) {
                    QStringList jids;
                    for (const auto &item : iq.items()) {
                        jids << item.jid();
                        disco->requestInfo(item.jid());
                    }
                    emit_line(QStringLiteral("items %1 %2").arg(iq.from(), jids.join(' ')));
                });
        connect(disco, &QXmppDiscoveryManager::infoReceived, this, [](const QXmppDiscoveryIq &iq) {
            QStringList ids;
            for (const auto &i : iq.identities())
                ids << QStringLiteral("%1/%2").arg(i.category(), i.type());
            emit_line(QStringLiteral("disco %1 %2").arg(iq.from(), ids.join(' ')));
            for (const auto &f : iq.features())
                emit_line(QStringLiteral("feature %1 %2").arg(iq.from(), f));
            emit_line(QStringLiteral("disco-end %1").arg(iq.from()));
        });

        stdinNotifier = new QSocketNotifier(0, QSocketNotifier::Read, this);
        connect(stdinNotifier, &QSocketNotifier::activated, this, &Harness::onStdin);
        client.connectToServer(config);
    }

private:
    void onLog(QXmppLogger::MessageType type, const QString &text)
    {
        if (debug)
            std::fprintf(stderr, "%d %s\n", int(type), text.toUtf8().constData());
        if (type == QXmppLogger::SentMessage && text.startsWith(QLatin1String("<auth ")))
            emit_line(QStringLiteral("auth %1").arg(attr(text, "mechanism")));
        if (type == QXmppLogger::SentMessage && text.startsWith(QLatin1String("<resume")))
            emit_line(QStringLiteral("sm resume %1").arg(text));
        if (type == QXmppLogger::SentMessage && text.startsWith(QLatin1String("<a ")))
            emit_line(QStringLiteral("sm acked %1").arg(attr(text, "h")));
        if (type != QXmppLogger::ReceivedMessage)
            return;
        // one log entry is what one read returned: maybe several elements
        static const QRegularExpression tags(
            QStringLiteral("<(proceed|enabled|resumed|failed|iq)[ />][^>]*>"));
        auto it = tags.globalMatch(text);
        while (it.hasNext()) {
            const auto match = it.next();
            const QString name = match.captured(1), tag = match.captured(0);
            if (name == "proceed")
                emit_line(QStringLiteral("starttls"));
            else if (name == "enabled")
                emit_line(QStringLiteral("sm enabled %1").arg(attr(tag, "resume")));
            else if (name == "resumed")
                emit_line(QStringLiteral("sm resumed %1").arg(attr(tag, "h")));
            else if (name == "failed")
                emit_line(QStringLiteral("sm failed"));
            else if (attr(tag, "id").startsWith("sync"))
                emit_line(QStringLiteral("iq %1 %2").arg(attr(tag, "id"), attr(tag, "type")));
        }
    }

    void rosterItem(const char *what, const QString &jid)
    {
        if (QLatin1String(what) == QLatin1String("removed")) {
            emit_line(QStringLiteral("roster-item removed %1").arg(jid));
            return;
        }
        const auto item = roster->getRosterEntry(jid);
        QString sub = subscription(item.subscriptionType());
        if (!item.subscriptionStatus().isEmpty())
            sub += " ask";
        emit_line(QStringLiteral("roster-item %1 %2 %3").arg(what, jid, sub));
    }

    static QString subscription(QXmppRosterIq::Item::SubscriptionType type)
    {
        const char *subs[] = {"none", "from", "to", "both", "remove"};
        const int sub = int(type);
        return sub >= 0 && sub < 5 ? subs[sub] : "?";
    }

    QXmppMucRoom *room(const QString &jid)
    {
        for (auto *r : muc->rooms())
            if (r->jid() == jid)
                return r;
        auto *r = muc->addRoom(jid);
        connect(r, &QXmppMucRoom::joined, this, [jid] { emit_line("room-joined " + jid); });
        connect(r, &QXmppMucRoom::configurationReceived, this,
                [this, jid](const QXmppDataForm &form) {
                    roomForms[jid] = form;
                    QStringList vars;
                    for (const auto &field : form.fields())
                        vars << field.key();
                    emit_line(QStringLiteral("room-form %1 %2").arg(jid, vars.join(' ')));
                });
        connect(r, &QXmppMucRoom::nameChanged, this, [jid](const QString &name) {
            emit_line(QStringLiteral("room-name %1 %2").arg(jid, name));
        });
        connect(r, &QXmppMucRoom::permissionsReceived, this,
                [jid](const QList<QXmppMucItem> &items) {
                    QStringList entries;
                    for (const auto &item : items)
                        entries << QStringLiteral("%1:%2").arg(
                            item.jid(), QXmppMucItem::affiliationToString(item.affiliation()));
                    entries.sort();
                    emit_line(QStringLiteral("room-permissions %1 %2").arg(jid, entries.join(' ')));
                });
        connect(r, &QXmppMucRoom::kicked, this, [jid](const QString &by, const QString &reason) {
            emit_line(QStringLiteral("room-kicked %1 %2 %3").arg(jid, by, reason));
        });
        connect(r, &QXmppMucRoom::left, this, [jid] { emit_line("room-left " + jid); });
        connect(r, &QXmppMucRoom::participantAdded, this, [jid](const QString &p) {
            emit_line(QStringLiteral("room-participant %1 %2 added").arg(jid, p));
        });
        connect(r, &QXmppMucRoom::participantChanged, this, [jid](const QString &p) {
            emit_line(QStringLiteral("room-participant %1 %2 changed").arg(jid, p));
        });
        connect(r, &QXmppMucRoom::participantRemoved, this, [jid](const QString &p) {
            emit_line(QStringLiteral("room-participant %1 %2 removed").arg(jid, p));
        });
        connect(r, &QXmppMucRoom::messageReceived, this, [jid](const QXmppMessage &m) {
            if (!m.body().isEmpty())
                emit_line(QStringLiteral("room-message %1 %2 %3").arg(jid, m.from(), m.body()));
        });
        connect(r, &QXmppMucRoom::subjectChanged, this, [jid](const QString &s) {
            emit_line(QStringLiteral("room-subject %1 %2").arg(jid, s));
        });
        connect(r, &QXmppMucRoom::nickNameChanged, this, [jid](const QString &n) {
            emit_line(QStringLiteral("room-nick %1 %2").arg(jid, n));
        });
        connect(r, &QXmppMucRoom::error, this, [jid](const QXmppStanza::Error &e) {
            emit_line(QStringLiteral("room-error %1 %2").arg(jid, condition(e.condition())));
        });
        return r;
    }

    void onSlot(const QXmppHttpUploadSlotIq &slot)
    {
        emit_line(QStringLiteral("slot %1 %2").arg(slot.putUrl().toString(),
                                                    slot.getUrl().toString()));
        QSslConfiguration tls = QSslConfiguration::defaultConfiguration();
        tls.setCaCertificates(cas);
        QNetworkRequest put(slot.putUrl());
        put.setSslConfiguration(tls);
        put.setHeader(QNetworkRequest::ContentTypeHeader, QStringLiteral("text/plain"));
        const auto headers = slot.putHeaders();
        for (auto it = headers.begin(); it != headers.end(); ++it)
            put.setRawHeader(it.key().toUtf8(), it.value().toUtf8());
        QNetworkReply *reply = http.put(put, pendingUpload);
        const QUrl getUrl = slot.getUrl();
        connect(reply, &QNetworkReply::finished, this, [this, reply, getUrl, tls] {
            emit_line(QStringLiteral("put %1 %2")
                          .arg(reply->attribute(QNetworkRequest::HttpStatusCodeAttribute).toInt())
                          .arg(reply->error() == QNetworkReply::NoError ? "ok"
                                                                        : reply->errorString()));
            reply->deleteLater();
            QNetworkRequest get(getUrl);
            get.setSslConfiguration(tls);
            QNetworkReply *back = http.get(get);
            connect(back, &QNetworkReply::finished, this, [back] {
                emit_line(QStringLiteral("get %1 %2")
                              .arg(back->attribute(QNetworkRequest::HttpStatusCodeAttribute).toInt())
                              .arg(QString::fromUtf8(back->readAll())));
                back->deleteLater();
            });
        });
    }

    void onStdin()
    {
        char chunk[4096];
        ssize_t n = ::read(0, chunk, sizeof(chunk));
        if (n <= 0) {
            stdinNotifier->setEnabled(false);
            command(QStringLiteral("quit"));
            return;
        }
        buffer.append(chunk, int(n));
        int end;
        while ((end = buffer.indexOf('\n')) >= 0) {
            command(QString::fromUtf8(buffer.left(end)));
            buffer.remove(0, end + 1);
        }
    }

    void command(const QString &line)
    {
        const QString verb = line.section(' ', 0, 0);
        const QString a1 = line.section(' ', 1, 1);
        const QString rest1 = line.section(' ', 1);
        const QString rest2 = line.section(' ', 2);
        if (verb == "msg") {
            client.sendPacket(QXmppMessage(QString(), a1, rest2));
        } else if (verb == "roster") {
            for (const auto &jid : roster->getRosterBareJids()) {
                emit_line(QStringLiteral("roster %1 %2")
                              .arg(jid, subscription(roster->getRosterEntry(jid).subscriptionType())));
            }
            emit_line(QStringLiteral("roster-end"));
        } else if (verb == "add") {
            roster->addItem(a1, rest2);
            roster->subscribe(a1);
        } else if (verb == "accept") {
            roster->acceptSubscription(a1);
        } else if (verb == "remove") {
            roster->removeItem(a1);
        } else if (verb == "version") {
            versions->requestVersion(a1);
        } else if (verb == "time") {
            times->requestTime(a1);
        } else if (verb == "password") {
            registration->changePassword(rest1);
        } else if (verb == "unregister") {
            registration->deleteAccount();
        } else if (verb == "carbons") {
            carbons->setCarbonsEnabled(true);
        } else if (verb == "mam") {
            QXmppResultSetQuery rsm;
            rsm.setMax(line.section(' ', 2, 2).toInt());
            if (!line.section(' ', 3, 3).isEmpty())
                rsm.setAfter(line.section(' ', 3, 3));
            emit_line("mam-query " +
                      mam->retrieveArchivedMessages(QString(), QString(), a1, QDateTime(),
                                                    QDateTime(), rsm));
        } else if (verb == "mam-back") {
            QXmppResultSetQuery rsm;
            rsm.setMax(line.section(' ', 2, 2).toInt());
            QString before = line.section(' ', 3, 3);
            if (before.isNull())
                before = QString(QLatin1String(""));  // empty, not null: the last page
            rsm.setBefore(before);
            QDateTime now = QDateTime::currentDateTimeUtc();
            if (now.time().msec() == 0)
                now = now.addMSecs(1);  // always a fraction of a second
            emit_line("mam-query " +
                      mam->retrieveArchivedMessages(QString(), QString(), a1, QDateTime(), now,
                                                    rsm));
        } else if (verb == "join") {
            auto *r = room(a1);
            r->setNickName(rest2);
            r->join();
        } else if (verb == "instant") {
            room(a1)->setConfiguration(QXmppDataForm(QXmppDataForm::Submit));
        } else if (verb == "room-form") {
            room(a1)->requestConfiguration();
        } else if (verb == "room-set") {
            QXmppDataForm form = roomForms.value(a1);
            form.setType(QXmppDataForm::Submit);
            const QString var = line.section(' ', 2, 2);
            for (auto &field : form.fields())
                if (field.key() == var)
                    field.setValue(line.section(' ', 3));
            room(a1)->setConfiguration(form);
        } else if (verb == "permissions") {
            room(a1)->requestPermissions();
        } else if (verb == "kick") {
            room(a1)->kick(line.section(' ', 2, 2), line.section(' ', 3));
        } else if (verb == "ban") {
            room(a1)->ban(line.section(' ', 2, 2), line.section(' ', 3));
        } else if (verb == "leave") {
            room(a1)->leave();
        } else if (verb == "groupchat") {
            room(a1)->sendMessage(rest2);
        } else if (verb == "subject") {
            room(a1)->setSubject(rest2);
        } else if (verb == "nick") {
            room(a1)->setNickName(rest2);
        } else if (verb == "vcard-set") {
            QXmppVCardIq card;
            card.setFullName(a1);
            card.setNickName(rest2);
            vcards->setClientVCard(card);
            emit_line(QStringLiteral("vcard-set"));
        } else if (verb == "vcard-photo") {
            QXmppVCardIq card;
            card.setFullName(QStringLiteral("With Avatar"));
            card.setPhoto(QByteArray::fromHex(a1.toLatin1()));
            card.setPhotoType(QStringLiteral("image/png"));
            vcards->setClientVCard(card);
            emit_line(QStringLiteral("vcard-set"));
        } else if (verb == "vcard-get") {
            if (a1.isEmpty())
                vcards->requestClientVCard();
            else
                vcards->requestVCard(a1);
        } else if (verb == "upload") {
            pendingUpload = rest2.toUtf8();
            upload->requestUploadSlot(a1, pendingUpload.size(),
                                      QMimeDatabase().mimeTypeForName("text/plain"));
        } else if (verb == "slot") {
            upload->requestUploadSlot(a1, line.section(' ', 2, 2).toLongLong(),
                                      QMimeDatabase().mimeTypeForName("text/plain"));
        } else if (verb == "disco") {
            disco->requestInfo(a1);
        } else if (verb == "sync") {
            QXmppPingIq ping;
            ping.setId(a1);
            ping.setTo(client.configuration().domain());
            client.sendPacket(ping);
        } else if (verb == "push") {
            QXmppPushEnableIq push;
            push.setId(QStringLiteral("sync-push"));
            push.setType(QXmppIq::Set);
            push.setMode(QXmppPushEnableIq::Enable);
            push.setJid(a1);
            push.setNode(line.section(' ', 2, 2));
            QXmppDataForm options(QXmppDataForm::Submit);
            options.setFields({
                QXmppDataForm::Field(QXmppDataForm::Field::HiddenField, QStringLiteral("FORM_TYPE"),
                                     QStringLiteral("http://jabber.org/protocol/pubsub#publish-options")),
                QXmppDataForm::Field(QXmppDataForm::Field::TextSingleField, QStringLiteral("secret"),
                                     line.section(' ', 3, 3)),
            });
            push.setDataForm(options);
            client.sendPacket(push);
        } else if (verb == "active") {
            client.setActive(true);
        } else if (verb == "inactive") {
            client.setActive(false);
        } else if (verb == "cut") {
            // the TCP connection goes without </stream>: the server sees it lost (XEP-0198 §5)
            for (auto *socket : client.findChildren<QSslSocket *>())
                if (socket->socketDescriptor() >= 0)
                    ::shutdown(int(socket->socketDescriptor()), SHUT_RDWR);
        } else if (verb == "resume") {
            client.connectToServer(config);
        } else if (verb == "quit") {
            quitting = true;
            if (client.state() == QXmppClient::DisconnectedState)
                QCoreApplication::exit(0);
            else
                client.disconnectFromServer();
        } else {
            emit_line("unknown " + line);
        }
    }

    QXmppClient client;
    QXmppConfiguration config;
    QXmppLogger logger;
    QList<QSslCertificate> cas;
    QXmppCarbonManager *carbons;
    QXmppMamManager *mam;
    QXmppMucManager *muc;
    QXmppUploadRequestManager *upload;
    QXmppRosterManager *roster;
    QXmppVCardManager *vcards;
    QXmppDiscoveryManager *disco;
    QXmppVersionManager *versions;
    QXmppEntityTimeManager *times;
    QXmppRegistrationManager *registration;
    QNetworkAccessManager http;
    QByteArray pendingUpload;
    QMap<QString, QXmppDataForm> roomForms;
    QSocketNotifier *stdinNotifier;
    QByteArray buffer;
    bool quitting = false;
    bool everConnected = false;
    bool debug = false;
};

int main(int argc, char **argv)
{
    QCoreApplication app(argc, argv);
    QStringList args = app.arguments().mid(1);
    const bool signUp = args.removeAll(QStringLiteral("--register")) > 0;
    if (args.size() != 4 && args.size() != 5) {
        std::fprintf(stderr, "usage: client JID PASSWORD CA_FILE PORT [RESOURCE] [--register]\n");
        return 2;
    }
    Harness harness(args[0], args[1], args[2], args[3].toInt(), args.value(4), signUp);
    return app.exec();
}
