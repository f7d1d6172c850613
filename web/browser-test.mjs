// Browser test of the web terminal (run by tests/terminal.rs): headless Chromium (Debian's
// package) driven by playwright-core. Types into the xterm.js page, reads the rendered
// screen, reloads the page with a fresh ticket and finds the same session and its output.
//
// Env: ORCH_BASE (http://127.0.0.1:PORT), ORCH_USER, ORCH_TOKEN (mints tickets),
// CHROMIUM (default /usr/bin/chromium). Prints one JSON line; exits non-zero on failure.
import { chromium } from 'playwright-core';

const base = process.env.ORCH_BASE;
const user = process.env.ORCH_USER;
const token = process.env.ORCH_TOKEN;
const GUARD = 60_000; // hang guard per wait, never a performance bound

async function ticket() {
  const r = await fetch(`${base}/api/v1/boxes/${user}/terminal/tickets`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: '{}',
  });
  if (r.status !== 200) throw new Error(`ticket: ${r.status} ${await r.text()}`);
  return (await r.json()).ticket;
}

// The rendered screen: the text of xterm's DOM rows. (Locators run in Playwright's own
// world, so the page keeps its real CSP, which forbids eval.)
const screen = (page) => page.locator('.xterm-rows').innerText();

async function waitScreen(page, needle) {
  const deadline = Date.now() + GUARD;
  for (;;) {
    const text = await screen(page).catch(() => '');
    if (text.includes(needle)) return;
    if (Date.now() > deadline) throw new Error(`hang guard: ${needle} never appeared:\n${text}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const session = (page) => page.locator('body').getAttribute('data-session');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('pageerror', e));
  await page.goto(`${base}/terminal?user=${user}#ticket=${await ticket()}`);
  await page.waitForSelector('body[data-session]', { timeout: GUARD });
  const first = await session(page);
  await waitScreen(page, '$ ');
  await page.click('#terminal');
  await page.keyboard.type('echo web-$((6*7))');
  await page.keyboard.press('Enter');
  await waitScreen(page, 'web-42');
  if (page.url().includes('ticket=')) throw new Error('the ticket stayed in the address bar');

  // "Reload": the same tab opens the page again with a fresh ticket (a front end would
  // mint it); sessionStorage names the session, the ring replays its output.
  await page.goto(`${base}/terminal?user=${user}&again=1#ticket=${await ticket()}`);
  await page.waitForSelector('body[data-session]', { timeout: GUARD });
  const second = await session(page);
  await waitScreen(page, 'web-42');
  await page.click('#terminal');
  await page.keyboard.type('echo again-$((1+2))');
  await page.keyboard.press('Enter');
  await waitScreen(page, 'again-3');
  const text = await screen(page);
  console.log(JSON.stringify({ first, second, sameSession: first === second, screen: text }));
  if (first !== second) process.exitCode = 1;
} finally {
  await browser.close();
}
