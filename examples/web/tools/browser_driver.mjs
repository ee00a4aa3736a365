// Drives one headless Chromium for the Python tests and benchmark (tests/web_harness.py): one JSON command per
// line on stdin, one JSON answer per line on stdout. Commands: {id, op: "goto", url} | {id, op: "eval", body}
// (the body of an async function, run in the page; its return value must be JSON) | {id, op: "screenshot",
// path, width, height} | {id, op: "close"}. Page console messages and errors go to stderr.
import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';

const [executablePath, userDataDir] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath,
  headless: true,
  pipe: true,
  userDataDir,
  protocolTimeout: 600_000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const page = await browser.newPage();
page.setDefaultTimeout(600_000);
page.on('console', (msg) => process.stderr.write(`[console.${msg.type()}] ${msg.text()}\n`));
page.on('pageerror', (err) => process.stderr.write(`[pageerror] ${err.message}\n`));
page.on('crash', () => process.stderr.write('[crash] the page crashed\n'));

const reply = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
reply({ id: 0, ok: true, value: await browser.version() });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  try {
    let value = null;
    if (cmd.op === 'goto') {
      const response = await page.goto(cmd.url, { waitUntil: 'load' });
      value = response ? response.status() : null;
    } else if (cmd.op === 'eval') {
      value = await page.evaluate(`(async () => { ${cmd.body} })()`);
    } else if (cmd.op === 'screenshot') {
      await page.setViewport({ width: cmd.width ?? 1200, height: cmd.height ?? 900 });
      await page.screenshot({ path: cmd.path, fullPage: true });
    } else if (cmd.op === 'close') {
      break;
    } else {
      throw new Error(`unknown op ${cmd.op}`);
    }
    reply({ id: cmd.id, ok: true, value: value === undefined ? null : value });
  } catch (err) {
    reply({ id: cmd.id, ok: false, error: String(err?.message ?? err) });
  }
}
// Close the browser (bounded: a wedged browser must not keep the tests waiting), then answer and exit.
await Promise.race([browser.close(), new Promise((resolve) => setTimeout(resolve, 10_000))]);
reply({ id: -1, ok: true, value: 'closed' });
process.exit(0);
