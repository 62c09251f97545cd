// Shared by the node scenario scripts (tests/interop/js, tests/interop/stanza): poll `check`
// until it returns something truthy, or fail naming `what` after `timeout` milliseconds.
export function waitUntil(check, what, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeout;
    const poll = () => {
      const result = check();
      if (result) return resolve(result);
      if (Date.now() > deadline) return reject(new Error(`never got ${what}`));
      setTimeout(poll, 20);
    };
    poll();
  });
}
