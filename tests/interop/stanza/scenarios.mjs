// StanzaJS (stanza, pinned in package-lock.json) against a running fastxmpp over its
// RFC 7395 WebSocket transport: one scenario per run, driven by tests/test_interop_stanza.py.
//
//   node --dns-result-order=ipv4first scenarios.mjs SCENARIO WS_URL PASSWORD USER[,USER...] [ARG...]
//
// StanzaJS 12 has no TCP transport (only WebSocket and BOSH; BOSH_URL for the latter). TLS
// trust comes from NODE_EXTRA_CA_CERTS (the test CA): certificates are verified. Each line on stdout is a JSON
// object: {"step": NAME, ...} when the scenario reaches a point where the test acts with its
// own client, the last one {"step": "done", ...} with what the StanzaJS clients saw. A step
// that never completes throws an Error naming what was awaited (exit code 1).
import stanza from "stanza";
import { waitUntil } from "../wait_until.mjs"; // polls every 20 ms, 10 s at most

const [scenario, wsUrl, password, userList, ...args] = process.argv.slice(2);
const users = userList.split(",");
const STEP_TIMEOUT = 10_000;

function say(step, data = {}) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}


const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const opened = [];

// One StanzaJS client, session started (SASL, bind, XEP-0198 enabled when offered).
// `mechanism`: the only SASL mechanism left enabled; else StanzaJS picks by its priorities.
// Every stanza it receives is kept in `received`; the SASL mechanism it used in `mechanism`.
async function connect(username, resource, { mechanism, ...config } = {}) {
  const client = stanza.createClient({
    jid: `${username}@localhost`,
    password,
    resource,
    transports: { websocket: wsUrl, bosh: false },
    ...config,
  });
  if (mechanism) {
    for (const { name } of [...client.sasl.mechanisms]) {
      if (name !== mechanism) client.sasl.disable(name);
    }
  }
  client.received = [];
  client.on("stanza", (s) => client.received.push(s));
  client.on("raw:outgoing", (data) => {
    const auth = /<auth [^>]*mechanism=["']([^"']+)["']/.exec(data);
    if (auth) client.mechanism = auth[1];
  });
  opened.push(client);
  const started = new Promise((resolve, reject) => {
    client.once("session:started", resolve);
    client.once("auth:failed", () => reject(new Error(`${username}: authentication failed`)));
  });
  client.connect();
  await Promise.race([
    started,
    sleep(STEP_TIMEOUT).then(() => {
      throw new Error(`${username}: no session`);
    }),
  ]);
  return client;
}

// Message bodies a client received, as the JSON the test asserts on.
function bodies(client) {
  return client.received
    .filter((s) => s.body !== undefined && !s.archive && !s.carbon)
    .map((s) => ({ from: s.from, to: s.to, type: s.type, body: s.body, id: s.id }));
}

const scenarios = {
  // RFC 6120 §6 (SASL with `mechanism`, or the strongest StanzaJS knows among those offered),
  // §7 resource binding, RFC 6121 §2.2 roster get.
  async login() {
    const chosen = args[0] === "best" ? undefined : args[0];
    const a = await connect(users[0], "stanza", { mechanism: chosen });
    const roster = await a.getRoster();
    return {
      jid: a.jid,
      mechanism: a.mechanism,
      sm: a.sm.started,
      roster: roster.items.map(({ jid, name, subscription, groups }) => ({
        jid,
        name,
        subscription,
        groups,
      })),
    };
  },

  // XEP-0124/XEP-0206 with StanzaJS's BOSH transport (BOSH_URL) instead of the WebSocket:
  // SASL, binding, a message to the test's client (args[0]) and its reply.
  async bosh() {
    const a = await connect(users[0], "bosh", {
      transports: { websocket: false, bosh: process.env.BOSH_URL },
    });
    a.sendPresence();
    say("online", { jid: a.jid });
    a.sendMessage({ to: args[0], type: "chat", id: "b1", body: "over bosh" });
    await waitUntil(() => bodies(a).length, "the reply");
    return { jid: a.jid, mechanism: a.mechanism, at_a: bodies(a) };
  },

  // RFC 6121 §8.5 with XEP-0184: a message to the test's client (args[0], its full JID) by
  // its bare JID, asking for a receipt; its reply, whose receipt StanzaJS sends on its own.
  async messages() {
    const a = await connect(users[0], "stanza");
    const receipts = [];
    a.on("receipt", (m) => receipts.push({ from: m.from, id: m.receipt.id }));
    a.sendPresence();
    say("online", { jid: a.jid });
    a.sendMessage({
      to: args[0].split("/")[0],
      type: "chat",
      id: "m1",
      body: "hello from stanza",
      receipt: { type: "request" },
    });
    await waitUntil(() => bodies(a).length, "the reply");
    await waitUntil(() => receipts.length, "the receipt for m1");
    return { jid: a.jid, at_a: bodies(a), receipts };
  },

  // XEP-0045: StanzaJS creates room args[0] (an instant room, §10.1.2), then the test's
  // client joins as args[1] and writes; StanzaJS writes back and gets its message reflected.
  async muc() {
    const [room, otherNick] = args;
    const a = await connect(users[0], "stanza");
    a.sendPresence();
    const self = await a.joinRoom(room, "stanzanick");
    const selfStatuses = self.muc.statusCodes ?? [];
    if (selfStatuses.includes("201")) await a.configureRoom(room, {});
    say("joined", { self_from: self.from, statuses: selfStatuses });
    const groupchat = () => bodies(a).filter((m) => m.type === "groupchat");
    await waitUntil(
      () => groupchat().some((m) => m.from === `${room}/${otherNick}`),
      "the other occupant's message",
    );
    a.sendMessage({ to: room, type: "groupchat", id: "g1", body: "hello room from stanza" });
    await waitUntil(
      () => groupchat().some((m) => m.from === `${room}/stanzanick`),
      "the reflection of StanzaJS's message",
    );
    const occupants = a.received
      .filter((s) => s.muc && s.from.startsWith(`${room}/`) && s.type === undefined)
      .map((s) => s.from);
    return {
      joined: a.joinedRooms.get(room),
      occupants: [...new Set(occupants)],
      groupchat: groupchat(),
    };
  },

  // XEP-0045 §10.1.3 a persistent room configured by StanzaJS (the owner a), three messages;
  // b joins asking for the last two (§7.2.14), then reads the room's archive (XEP-0313 §6.1).
  async muc_history() {
    const room = args[0];
    const a = await connect(users[0], "stanza");
    const b = await connect(users[1], "stanza");
    await a.joinRoom(room, "owner");
    await a.configureRoom(room, {
      fields: [
        { name: "FORM_TYPE", value: "http://jabber.org/protocol/muc#roomconfig" },
        { name: "muc#roomconfig_persistentroom", value: true },
        { name: "muc#roomconfig_roomname", value: "Kept" },
      ],
    });
    for (let i = 1; i <= 3; i++) {
      a.sendMessage({ to: room, type: "groupchat", id: `h${i}`, body: `kept ${i}` });
    }
    await waitUntil(
      () => bodies(a).filter((m) => m.type === "groupchat").length >= 3,
      "the three reflections",
    );
    await b.joinRoom(room, "late", { muc: { history: { maxStanzas: 2 } } });
    // the subject comes after the history (§7.2.15): joinRoom resolves on the self-presence
    await waitUntil(
      () => b.received.some((s) => s.type === "groupchat" && s.hasSubject),
      "the room's subject",
    );
    const history = b.received
      .filter((s) => s.type === "groupchat" && s.body !== undefined)
      .map((s) => ({ from: s.from, body: s.body, stamp: s.delay?.timestamp ?? null }));
    const archive = await b.searchHistory({ to: room });
    const info = await b.getDiscoInfo(room);
    return {
      history,
      archive: archive.results.map((r) => ({
        from: r.item.message.from,
        body: r.item.message.body,
        stamp: r.item.delay?.timestamp ?? null,
      })),
      complete: archive.complete ?? false,
      features: info.features,
    };
  },

  // XEP-0313: what the test's client sent to StanzaJS's account while it was offline, from
  // its archive, filtered by `with` (args[0]), all at once and then a page of two (XEP-0059).
  async mam() {
    const a = await connect(users[0], "stanza");
    const shape = (res) => ({
      complete: res.complete ?? false,
      first: res.paging?.first ?? null,
      last: res.paging?.last ?? null,
      results: res.results.map((r) => ({
        id: r.id,
        from: r.item.message.from,
        to: r.item.message.to,
        body: r.item.message.body,
        stamp: r.item.delay?.timestamp ?? null,
      })),
    });
    const all = shape(await a.searchHistory({ with: args[0] }));
    const page = shape(await a.searchHistory({ with: args[0], paging: { max: 2 } }));
    // start/end as StanzaJS writes them: toISOString(), with milliseconds (XEP-0082 §3.2)
    const now = Date.now();
    const window = shape(
      await a.searchHistory({ start: new Date(now - 60_000), end: new Date(now + 60_000) }),
    );
    const future = shape(await a.searchHistory({ start: new Date(now + 60_000) }));
    return { all, page, window, future };
  },

  // XEP-0198 §5: StanzaJS's socket dies without a WebSocket close; the test's client writes
  // to it meanwhile; StanzaJS reconnects on its own, resumes, and gets what it missed once.
  async sm_resume() {
    const a = await connect(users[0], "stanza", { autoReconnect: true, maxReconnectBackoff: 1 });
    a.sendPresence();
    await waitUntil(() => a.sm.started && a.sm.id, "stream management enabled");
    const before = { jid: a.jid, sm_id: a.sm.id };
    say("online", before);
    await waitUntil(() => bodies(a).length === 1, "the first message");
    let resumed = false;
    a.on("stream:management:resumed", () => (resumed = true));
    a.sm.ack(); // what arrived so far is acknowledged before the cut
    await sleep(200);
    const disconnected = new Promise((resolve) => a.once("disconnected", resolve));
    a.transport.socket.terminate();
    await disconnected;
    // Sent with no connection: kept unacknowledged, sent again after <resumed/> (§5). Not
    // before "disconnected": a write while the socket closes makes StanzaJS 12.22.1 drop
    // its transport without the event its reconnection waits for.
    a.sendMessage({ to: args[0], type: "chat", id: "s8", body: "sent while detached" });
    say("cut");
    await waitUntil(() => resumed, "the resumption", 15_000);
    await waitUntil(() => bodies(a).length >= 3, "the messages sent while detached");
    await sleep(300); // anything sent twice would arrive by now
    a.sendMessage({ to: args[0], type: "chat", id: "s9", body: "after resumption" });
    await sleep(300);
    return {
      jid_before: before.jid,
      sm_id_before: before.sm_id,
      jid_after: a.jid,
      sm_id_after: a.sm.id,
      at_a: bodies(a).map((m) => m.body),
    };
  },

  // XEP-0280: StanzaJS enables carbons; the test's other resource of the same account sends
  // a message and receives one: StanzaJS gets a sent and a received carbon.
  async carbons() {
    const a = await connect(users[0], "stanza");
    const carbons = [];
    const keep = (m) => {
      const inner = m.carbon.forward.message;
      carbons.push({
        kind: m.carbon.type,
        outer_from: m.from,
        outer_to: m.to,
        from: inner.from,
        to: inner.to,
        body: inner.body,
      });
    };
    a.on("carbon:sent", keep);
    a.on("carbon:received", keep);
    a.sendPresence();
    await a.enableCarbons();
    say("carbons", { jid: a.jid });
    await waitUntil(() => carbons.length >= 2, "two carbons");
    return { jid: a.jid, carbons, direct: bodies(a) };
  },

  // XEP-0163 with XEP-0115: two StanzaJS clients subscribe to each other's presence and
  // announce their +notify features in caps; a publishes a tune, b a nickname; each sees the
  // other's item.
  async pep() {
    const [a, b] = [
      await connect(users[0], "stanza"),
      await connect(users[1], "stanza"),
    ];
    const seen = { a: [], b: [] };
    for (const [client, name] of [
      [a, "a"],
      [b, "b"],
    ]) {
      client.on("subscribe", (p) => {
        client.acceptSubscription(p.from);
        client.subscribe(p.from);
      });
      client.on("tune", (e) => {
        const { artist, title, length } = e.tune;
        seen[name].push({ kind: "tune", jid: e.jid, artist, title, length });
      });
      client.on("nick", (e) => seen[name].push({ kind: "nick", jid: e.jid, nick: e.nick }));
      client.updateCaps();
      client.sendPresence({ legacyCapabilities: client.disco.getCaps() });
    }
    a.subscribe(`${users[1]}@localhost`);
    const available = (client, from) =>
      client.received.some((s) => s.from === from && s.legacyCapabilities && s.type === undefined);
    await waitUntil(() => available(a, b.jid) && available(b, a.jid), "presence both ways");
    await a.publishTune({ artist: "Fastxmpp Band", title: "Notify Me", length: 241 });
    await b.publishNick("Bee");
    // the publisher's own resources are notified too (XEP-0163 §4.2)
    await waitUntil(() => seen.a.length >= 2 && seen.b.length >= 2, "both PEP items at each");
    await sleep(300); // a notification sent twice would arrive by now
    const roster = await a.getRoster();
    return {
      a: a.jid,
      b: b.jid,
      seen,
      subscription: roster.items.find((i) => i.jid === `${users[1]}@localhost`)?.subscription,
    };
  },
};

async function main() {
  if (!(scenario in scenarios)) throw new Error(`no scenario ${scenario}`);
  const result = await scenarios[scenario]();
  for (const client of opened) {
    client.off("*", () => {});
    await Promise.race([client.disconnect(), sleep(1000)]).catch(() => {});
  }
  say("done", result);
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exit(1);
  },
);
