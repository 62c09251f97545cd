// SCRAM-SHA-256-PLUS / SCRAM-SHA-1-PLUS with the tls-exporter channel binding (RFC 9266),
// the binding data exported by node's own TLS stack (tlsSocket.exportKeyingMaterial), so the
// server's exporter is checked against an implementation that is not its own.
// Run by tests/test_channel_binding.py:
//   node scram_plus.mjs PORT USER PASSWORD MECHANISM [BINDING]
// BINDING: the channel-binding type to name in the GS2 header (default tls-exporter);
// prints one JSON line: what the stream features offered and how the exchange ended.
import crypto from "node:crypto";
import net from "node:net";
import tls from "node:tls";

const [port, user, password, mechanism, binding = "tls-exporter"] = process.argv.slice(2);
const hash = mechanism.startsWith("SCRAM-SHA-256") ? "sha256" : "sha1";
const SASL = "urn:ietf:params:xml:ns:xmpp-sasl";
const header =
  "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' " +
  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

// Reads until `pattern` matches what arrived since the last read; returns the match.
function reader(socket) {
  let buffer = "";
  let waiting = null;
  socket.on("data", (chunk) => {
    buffer += chunk.toString("utf8");
    if (waiting) waiting();
  });
  return (pattern) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timeout waiting for ${pattern}: ${buffer}`)), 10000);
      const check = () => {
        const match = buffer.match(pattern);
        if (match) {
          buffer = buffer.slice(match.index + match[0].length);
          clearTimeout(timer);
          waiting = null;
          resolve(match);
        }
      };
      waiting = check;
      check();
    });
}

const hmac = (key, data) => crypto.createHmac(hash, key).update(data).digest();
const xor = (a, b) => Buffer.from(a.map((byte, i) => byte ^ b[i]));

async function main() {
  const plain = net.connect(Number(port), "127.0.0.1");
  await new Promise((resolve) => plain.once("connect", resolve));
  let read = reader(plain);
  plain.write(header);
  await read(/<\/stream:features>/);
  plain.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
  await read(/<proceed[^>]*\/>/);
  plain.removeAllListeners("data");
  const secure = tls.connect({ socket: plain, servername: "localhost" });
  await new Promise((resolve, reject) => {
    secure.once("secureConnect", resolve);
    secure.once("error", reject);
  });
  read = reader(secure);
  secure.write(header);
  const features = (await read(/<stream:features>([\s\S]*?)<\/stream:features>/))[1];
  const mechanisms = [...features.matchAll(/<mechanism>([^<]+)<\/mechanism>/g)].map((m) => m[1]);
  const bindings = [...features.matchAll(/<channel-binding type=['"]([^'"]+)['"]/g)].map((m) => m[1]);

  const data = secure.exportKeyingMaterial(32, "EXPORTER-Channel-Binding");
  const gs2 = `p=${binding},,`;
  const nonce = crypto.randomBytes(18).toString("base64");
  const first = `n=${user},r=${nonce}`;
  secure.write(
    `<auth xmlns='${SASL}' mechanism='${mechanism}'>` +
      Buffer.from(gs2 + first).toString("base64") +
      "</auth>",
  );
  const reply = await read(/<(challenge|failure)[^>]*>([\s\S]*?)<\/\1>/);
  if (reply[1] === "failure") {
    console.log(JSON.stringify({ mechanisms, bindings, tls: secure.getProtocol(), outcome: reply[2] }));
    secure.destroy();
    return;
  }
  const serverFirst = Buffer.from(reply[2], "base64").toString();
  const fields = Object.fromEntries(serverFirst.split(",").map((f) => [f[0], f.slice(2)]));
  const salted = crypto.pbkdf2Sync(password, Buffer.from(fields.s, "base64"), Number(fields.i), hash === "sha256" ? 32 : 20, hash);
  const clientKey = hmac(salted, "Client Key");
  const storedKey = crypto.createHash(hash).update(clientKey).digest();
  const withoutProof = `c=${Buffer.concat([Buffer.from(gs2), data]).toString("base64")},r=${fields.r}`;
  const authMessage = `${first},${serverFirst},${withoutProof}`;
  const proof = xor(clientKey, hmac(storedKey, authMessage)).toString("base64");
  secure.write(
    `<response xmlns='${SASL}'>` +
      Buffer.from(`${withoutProof},p=${proof}`).toString("base64") +
      "</response>",
  );
  const end = await read(/<(success|failure)[^>]*>([\s\S]*?)<\/\1>|<success[^>]*\/>/);
  const outcome = end[1] || "success";
  let verified = false;
  if (outcome === "success") {
    const expected = hmac(hmac(salted, "Server Key"), authMessage).toString("base64");
    verified = Buffer.from(end[2] || "", "base64").toString() === `v=${expected}`;
  }
  console.log(
    JSON.stringify({ mechanisms, bindings, tls: secure.getProtocol(), outcome: outcome === "success" ? "success" : end[2], verified }),
  );
  secure.destroy();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
