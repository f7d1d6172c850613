// The page: xterm.js on the terminal client. URL: /terminal?user=LOGIN#ticket=TICKET
// (the ticket stays in the fragment, never sent with the page request). The session id is
// kept in sessionStorage, so a reload attaches to the same session and replays its output.
import { TerminalClient } from './client.js';

const params = new URLSearchParams(location.search);
const user = params.get('user');
const hash = new URLSearchParams(location.hash.slice(1));
let ticket = hash.get('ticket');
history.replaceState(null, '', location.pathname + location.search);
const key = `orchestratord-terminal:${user}`;
const status = document.getElementById('status');

const term = new window.Terminal({ cols: 100, rows: 30, convertEol: false, scrollback: 5000 });
term.open(document.getElementById('terminal'));
term.focus();

const client = new TerminalClient({
  session: sessionStorage.getItem(key),
  url: (t, session) => {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let u = `${proto}//${location.host}/api/v1/boxes/${encodeURIComponent(user)}/terminal`
      + `?ticket=${encodeURIComponent(t)}&cols=${term.cols}&rows=${term.rows}`;
    if (session) u += `&session=${encodeURIComponent(session)}`;
    return u;
  },
  getTicket: async () => {
    if (ticket) { const t = ticket; ticket = null; return t; }
    // A front end provides fresh tickets for reconnects (window.orchestratordTicket).
    if (window.orchestratordTicket) return window.orchestratordTicket(user);
    throw new Error('no ticket');
  },
  onHello: (h) => {
    sessionStorage.setItem(key, h.session);
    document.body.dataset.session = h.session;
    client.resize(term.cols, term.rows);
  },
  // xterm's write callback fires once the data is parsed: that is when we acknowledge.
  onOutput: (bytes, done) => term.write(bytes, done),
  onGap: (from, to) => term.write(`\r\n[${to - from} bytes of output lost]\r\n`),
  onExit: (s) => {
    sessionStorage.removeItem(key);
    document.body.dataset.exit = String(s);
    term.write(`\r\n[exited with status ${s}]\r\n`);
  },
  onError: (kind, message) => { status.textContent = `${kind}: ${message}`; },
  onState: (text) => { status.textContent = text; },
});
term.onData((d) => client.input(d));
term.onBinary((d) => client.input(Uint8Array.from(d, (c) => c.charCodeAt(0))));
term.onResize(({ cols, rows }) => client.resize(cols, rows));
client.connect().catch((e) => { status.textContent = `cannot connect: ${e}`; });
window.orchestratordTerminal = { term, client };
