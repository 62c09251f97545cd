// xmpp.js (@xmpp/client, pinned in package-lock.json) against a running fastxmpp: one
// scenario per run, driven by tests/test_interop_js.py.
//
//   node scenarios.mjs SCENARIO PORT PASSWORD USER[,USER...] [MECHANISM]
//
// TLS trust comes from NODE_EXTRA_CA_CERTS (the test CA): certificates are verified.
// Prints what the clients saw as one JSON object on stdout; a step that never completes
// throws an Error naming what was awaited (exit code 1).
import { client, xml } from "@xmpp/client";
import { waitUntil } from "../wait_until.mjs"; // polls every 20 ms, 10 s at most

const [scenario, port, password, userList, mechanism] = process.argv.slice(2);
const users = userList.split(",");
const STEP_TIMEOUT = 10_000;
const MAM = "urn:xmpp:mam:2";
const RSM = "http://jabber.org/protocol/rsm";
const SM = "urn:xmpp:sm:3";


const opened = [];

// One client, online: STARTTLS, SASL with `mechanism` (the first offered when not given),
// resource binding, stream management with resumption, initial presence. `service`: another
// transport (an RFC 7395 ws:// URL).
async function connect(username, resource, saslMechanism, service = `xmpp://localhost:${port}`) {
  const xmpp = client({
    service,
    domain: "localhost",
    resource,
    credentials: async (authenticate, offered) => {
      const chosen = saslMechanism ?? offered[0];
      if (!offered.includes(chosen)) {
        throw new Error(`${chosen} not offered, only ${offered}`);
      }
      await authenticate({ username, password }, chosen);
    },
  });
  xmpp.received = [];
  xmpp.on("stanza", (stanza) => xmpp.received.push(stanza));
  xmpp.on("error", () => {}); // a dropped socket is part of the resumption scenario
  opened.push(xmpp);
  await xmpp.start();
  await xmpp.send(xml("presence"));
  return xmpp;
}

function chat(to, body, id) {
  return xml("message", { to, type: "chat", id }, xml("body", {}, body));
}

function bodies(xmpp) {
  return xmpp.received
    .filter((s) => s.is("message") && s.getChildText("body") !== null)
    .map((s) => ({
      from: s.attrs.from,
      to: s.attrs.to,
      type: s.attrs.type,
      body: s.getChildText("body"),
    }));
}

const scenarios = {
  async login() {
    const xmpp = await connect(users[0], "js", mechanism);
    return { jid: xmpp.jid.toString(), secure: xmpp.isSecure() };
  },

  // Messages both ways (RFC 6121 §8.5): to the bare JID, the reply to the full JID.
  async messages() {
    const a = await connect(users[0], "js");
    const b = await connect(users[1], "js");
    await a.send(chat(`${users[1]}@localhost`, "hello from js", "m1"));
    await waitUntil(() => bodies(b).length, "the message at b");
    await b.send(chat(a.jid.toString(), "reply from js", "m2"));
    await waitUntil(() => bodies(a).length, "the reply at a");
    return { a: a.jid.toString(), b: b.jid.toString(), at_a: bodies(a), at_b: bodies(b) };
  },

  // RFC 7395: a over the WebSocket at WS_URL (node --experimental-websocket), b over TCP:
  // messages both ways, stream management enabled on the WebSocket.
  async websocket() {
    const a = await connect(users[0], "ws", "SCRAM-SHA-1", process.env.WS_URL);
    const b = await connect(users[1], "js");
    await a.send(chat(`${users[1]}@localhost`, "over the websocket", "w1"));
    await waitUntil(() => bodies(b).length, "the message at b");
    await b.send(chat(a.jid.toString(), "to the websocket", "w2"));
    await waitUntil(() => bodies(a).length, "the reply at a");
    return {
      a: a.jid.toString(),
      sm: a.streamManagement.enabled,
      at_a: bodies(a),
      at_b: bodies(b),
    };
  },

  // XEP-0313 with XEP-0059 paging: five messages archived for b, read two at a time
  // forwards (after) and then backwards from the end (before).
  async mam() {
    const a = await connect(users[0], "js");
    const b = await connect(users[1], "js");
    for (let i = 1; i <= 5; i++) {
      await a.send(chat(`${users[1]}@localhost`, `archived ${i}`, `mam${i}`));
    }
    await waitUntil(() => bodies(b).length >= 5, "five messages at b");

    let queryCount = 0;
    async function page(set) {
      const queryid = `q${++queryCount}`;
      const before = b.received.length;
      const iq = await b.iqCaller.request(
        xml(
          "iq",
          { type: "set" },
          xml(
            "query",
            { xmlns: MAM, queryid },
            xml("x", { xmlns: "jabber:x:data", type: "submit" },
              xml("field", { var: "FORM_TYPE", type: "hidden" }, xml("value", {}, MAM)),
              xml("field", { var: "with" }, xml("value", {}, `${users[0]}@localhost`)),
            ),
            xml("set", { xmlns: RSM }, ...set),
          ),
        ),
        STEP_TIMEOUT,
      );
      // The results come before the iq result (XEP-0313 §4.2).
      const results = b.received
        .slice(before)
        .map((s) => s.getChild("result", MAM))
        .filter((r) => r && r.attrs.queryid === queryid)
        .map((r) => {
          const forwarded = r.getChild("forwarded", "urn:xmpp:forward:0");
          const message = forwarded.getChild("message");
          return {
            id: r.attrs.id,
            body: message.getChildText("body"),
            from: message.attrs.from,
            stamp: forwarded.getChild("delay", "urn:xmpp:delay")?.attrs.stamp ?? null,
          };
        });
      const fin = iq.getChild("fin", MAM);
      const rsm = fin.getChild("set", RSM);
      return {
        complete: fin.attrs.complete === "true",
        results,
        first: rsm?.getChildText("first") ?? null,
        last: rsm?.getChildText("last") ?? null,
      };
    }

    const forwards = [await page([xml("max", {}, "2")])];
    while (!forwards.at(-1).complete && forwards.length < 10) {
      const after = forwards.at(-1).last;
      forwards.push(await page([xml("max", {}, "2"), xml("after", {}, after)]));
    }
    const backwards = [await page([xml("max", {}, "2"), xml("before")])];
    while (!backwards.at(-1).complete && backwards.length < 10) {
      const before = backwards.at(-1).first;
      backwards.push(await page([xml("max", {}, "2"), xml("before", {}, before)]));
    }
    return { forwards, backwards };
  },

  // XEP-0198 resumption: a's socket dies without a closing handshake; b writes to a's full
  // JID meanwhile; xmpp.js reconnects and resumes the session, and gets what it missed once.
  async sm_resume() {
    const a = await connect(users[0], "js");
    const b = await connect(users[1], "js");
    const smId = a.streamManagement.id;
    const jidBefore = a.jid.toString();
    if (!a.streamManagement.enabled) throw new Error("stream management not enabled");
    await b.send(chat(jidBefore, "before the drop", "s1"));
    await waitUntil(() => bodies(a).length === 1, "the first message at a");

    let resumed = false;
    a.streamManagement.on("resumed", () => (resumed = true));
    // Acknowledge what a got, then cut the connection under the stream.
    await a.send(xml("a", { xmlns: SM, h: a.streamManagement.inbound }));
    a.socket.socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    await b.send(chat(jidBefore, "while detached 1", "s2"));
    await b.send(chat(jidBefore, "while detached 2", "s3"));
    await waitUntil(() => resumed, "the resumption", 15_000);
    await waitUntil(() => bodies(a).length >= 3, "the messages sent while detached");
    // Anything sent twice would arrive by now.
    await new Promise((resolve) => setTimeout(resolve, 500));
    // After resumption the session works both ways.
    await a.send(chat(`${users[1]}@localhost`, "after resumption", "s4"));
    await waitUntil(
      () => bodies(b).some((m) => m.body === "after resumption"),
      "a's message after resumption at b",
    );
    return {
      sm_id_before: smId,
      sm_id_after: a.streamManagement.id,
      jid_before: jidBefore,
      jid_after: a.jid.toString(),
      at_a: bodies(a),
      at_b: bodies(b),
    };
  },

  // XEP-0484 FAST with XEP-0388/0386/0198: the password login gets a token; the connection
  // dies; xmpp.js reconnects with the token only (a wrong password beside it proves the
  // token did it) and resumes the session inline in the same <authenticate/>.
  async fast_resume() {
    const username = users[0];
    let saved = null;
    const userAgent = () =>
      xml("user-agent", { id: "b3c1f1de-fast-scenario" }, xml("software", {}, "scenarios"));
    const a = client({
      service: `xmpp://localhost:${port}`,
      domain: "localhost",
      resource: "phone",
      credentials: async (authenticate, offered) => {
        const credentials = saved
          ? { username, password: "not the password", token: saved }
          : { username, password };
        await authenticate(credentials, offered[0], userAgent());
      },
    });
    a.fast.saveToken = async (token) => {
      saved = token;
    };
    a.received = [];
    a.elements = [];
    a.on("stanza", (stanza) => a.received.push(stanza));
    a.on("element", (el) => a.elements.push(`${el.name} ${el.attrs.xmlns ?? ""}`));
    a.on("error", () => {});
    opened.push(a);
    await a.start();
    await a.send(xml("presence"));
    await waitUntil(() => saved, "a FAST token");
    const b = await connect(users[1], "js");
    const jidBefore = a.jid.toString();
    const smId = a.streamManagement.id;
    await b.send(chat(jidBefore, "before the drop", "f1"));
    await waitUntil(() => bodies(a).length === 1, "the first message at a");
    let resumed = false;
    a.streamManagement.on("resumed", () => (resumed = true));
    await a.send(xml("a", { xmlns: SM, h: a.streamManagement.inbound }));
    const mark = a.elements.length;
    a.socket.socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    await b.send(chat(jidBefore, "while away", "f2"));
    await waitUntil(() => resumed, "the resumption", 15_000);
    await waitUntil(() => bodies(a).length >= 2, "the message sent while away");
    return {
      token_mechanism: saved.mechanism,
      token_expiry: saved.expiry,
      jid_before: jidBefore,
      jid_after: a.jid.toString(),
      sm_id_before: smId,
      sm_id_after: a.streamManagement.id,
      after_drop: a.elements.slice(mark),
      at_a: bodies(a).map((m) => m.body),
    };
  },
};

async function main() {
  if (!(scenario in scenarios)) throw new Error(`no scenario ${scenario}`);
  const result = await scenarios[scenario]();
  for (const xmpp of opened) {
    await xmpp.stop().catch(() => {});
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exit(1);
  },
);
