// End-to-end test of windi's browser client in a real headless Chromium.
//
//   node e2e/chat.mjs [BASE_URL] [SCREENSHOT_DIR]
//
// BASE_URL (or WINDI_URL; default http://127.0.0.1:8000) is a running windi with its relay;
// SCREENSHOT_DIR (or SCREENSHOT_DIR; default ./e2e-screenshots) receives PNGs of the phone and
// desktop layouts. The browser is Debian's /usr/bin/chromium (CHROMIUM_PATH overrides it); no
// browser is downloaded.
//
// Two people in two browser contexts (separate storage, so separate logins): Alice on a
// desktop-sized window, Bob on a phone-sized one. Through the UI only, except for a batch of
// group messages posted over the API to have history worth scrolling back through, and Bob's
// removal from the group (the client has no button for it):
//   1. both register; Alice finds Bob by name ("New chat"), starts a private chat and writes;
//   2. Bob sees the chat appear with an unread badge, live; opens it; Alice sees "read";
//   3. Bob types: Alice sees "Bob is typing…"; Bob's reply arrives live and is read;
//   4. Alice creates a group with Bob: it appears on Bob's side live; 60 messages later Bob
//      opens it and scrolls back to the first one, page by page;
//   5. Bob's relay connection drops; Alice writes twice meanwhile; Bob reconnects and `resume`
//      brings both, in order;
//   6. Bob's send reaches the server but its ack is lost with the connection: after the
//      reconnect the client sends it again with the same dedup_key, and it exists once;
//   7. Alice edits a message: Bob sees the new text, marked "edited", live, in the same place;
//   8. Alice deletes one: Bob sees its tombstone, live;
//   9. Bob reacts with 👍: Alice sees the count live (Bob's own highlighted); Bob takes it back;
//  10. Bob replies to Alice's first message: both see the quote above his reply;
//  11. Bob replies in the group to its first note; Alice reloads, so the note is older than
//      anything loaded: the quote says "message #id" until she clicks it and it pages back;
//  12. Bob's connection drops; meanwhile Alice edits, deletes, reacts, and removes Bob from the
//      group; after the reconnect, `resume` with Bob's revs brings all four;
//  13. files: Alice attaches a PNG (built here) with the 📎 button's file input and drops a text
//      file on the conversation (which lights up as a drop zone); both show as chips uploading,
//      with progress bars and Send disabled, until their PUTs (held by the test) go through;
//      she sends them with no text. Bob sees the image's thumbnail loaded and the text file's
//      row, live; he opens the image whole, downloads the text file (same bytes, same name),
//      and replies to the files, quoted as "📎 2 files" (as Alice's chat list says too);
//  14. Alice searches her messages on a fresh page: typing "note" lists the group's notes
//      (newest first, "More" for older ones, each match marked); "note 7" narrows it to one
//      note, older than anything loaded; clicking it opens the group, pages back to it and
//      outlines it. "This chat only" finds nothing of the private chat in the group; without
//      it, a message full of HTML-special characters is found and shown as text, and opens in
//      its chat. A query of only -excluded words is refused with the server's reason. Esc closes
//      the search;
//  15. Bob renames himself in the account panel: Alice's chat list shows the new name, live;
//  16. silent refresh: Alice's access token is about to expire and the client exchanges its
//      refresh token before then; a refused (expired) access token is refreshed and the
//      request retried, with no login;
//  17. Bob changes his password (a wrong current one is refused);
//  18. Alice logs out everywhere: she is at the login form and her old token is refused.
// All of it under the Content-Security-Policy windi sends: the page must carry one without
// 'unsafe-inline' for scripts, and any violation (a blocked script, style, image or relay
// connection) fails the run (e2e/csp.mjs).
// Every wait is on a condition with a timeout; nothing sleeps. Exit code 0 means it all held.

import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import { cspWatch, requirePolicy } from './csp.mjs';

const BASE_URL = (process.argv[2] ?? process.env.WINDI_URL ?? 'http://127.0.0.1:8000')
  .replace(/\/$/, '');
const SHOTS = path.resolve(process.argv[3] ?? process.env.SCREENSHOT_DIR ?? 'e2e-screenshots');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** One condition may take this long (the machine may be busy with other tests). */
const WAIT_MS = Number(process.env.E2E_WAIT_MS ?? 20000);
/** The whole run may take this long. */
const TOTAL_MS = Number(process.env.E2E_TOTAL_MS ?? 150000);
const PASSWORD = 'correct horse battery';

const started = Date.now();
const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${message}`);

const deadline = setTimeout(() => {
  console.error(`FAILED: the whole run took longer than ${TOTAL_MS} ms`);
  process.exit(1);
}, TOTAL_MS);
deadline.unref();

/** Waits until `fn(arg)` is truthy in the page; fails naming `what`. */
async function until(page, what, fn, arg) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    throw new Error(`timed out waiting for: ${what} (${error.message.split('\n')[0]})`);
  }
}

/** Waits for something that happens on the Node side (a route hit, an event); fails naming
 * `what`. */
async function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for: ${what}`)), WAIT_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits for a locator to be visible; fails naming `what`. */
async function visible(locator, what) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`timed out waiting for: ${what} (${error.message.split('\n')[0]})`);
  }
}

/** Waits until nothing matches a locator; fails naming `what`. */
async function gone(locator, what) {
  try {
    await locator.first().waitFor({ state: 'detached', timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`timed out waiting for: ${what} (${error.message.split('\n')[0]})`);
  }
}

/** The seq of our message with this text, once it is stored (a pending one has none yet). */
async function storedSeq(page, text, who) {
  const row = page.locator('#message-list .msg.own[data-seq]')
    .filter({ has: page.locator('.text', { hasText: exactly(text) }) });
  await visible(row, `${who}: "${text}" stored`);
  return Number(await row.first().getAttribute('data-seq'));
}

/**
 * Opens a message's ⋯ menu and presses one of its buttons: `action` is a `data-action`
 * (reply, edit, delete, confirm-delete) or, for a quick reaction, `{ emoji }`.
 */
async function messageAction(row, action, what) {
  const selector = typeof action === 'string'
    ? `[data-action="${action}"]` : `[data-emoji="${action.emoji}"]`;
  const button = row.locator(`.msg-actions ${selector}`);
  if (!(await button.count())) await row.locator('.msg-menu').click();
  await visible(button, what);
  await button.click();
}

/** Edits one of our messages through its menu: the composer takes the new text. */
async function editThrough(page, row, text, who) {
  await messageAction(row, 'edit', `${who}: "Edit" in the message's menu`);
  await until(page, `${who}: the composer in edit mode`,
    () => !document.getElementById('composer-context').hidden
      && document.getElementById('context-label').textContent === 'Edit message');
  await page.fill('#composer-text', text);
  await page.click('#send');
}

/** Deletes a message through its menu (which asks once more). */
async function deleteThrough(row, who) {
  await messageAction(row, 'delete', `${who}: "Delete" in the message's menu`);
  await messageAction(row, 'confirm-delete', `${who}: the confirmation of the delete`);
}

/** The own message with exactly this text. */
const ownMessage = (page, text) => page.locator('#message-list .msg.own')
  .filter({ has: page.locator('.text', { hasText: new RegExp(`^${escape(text)}$`) }) });
const anyMessage = (page, text) => page.locator('#message-list .msg')
  .filter({ has: page.locator('.text', { hasText: new RegExp(`^${escape(text)}$`) }) });
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** The message at this seq (what is there may change: edits, deletions); `more` narrows it,
 * e.g. `.deleted`. */
const messageAt = (page, seq, more = '') => page.locator(`#message-list .msg${more}[data-seq="${seq}"]`);
const exactly = (text) => new RegExp(`^${escape(text)}$`);

/** The seqs of the messages on screen, in screen order. */
const shownSeqs = (page) => page.$$eval('#message-list .msg[data-seq]',
  (rows) => rows.map((row) => Number(row.dataset.seq)));

function assertContiguous(seqs, from, to, who) {
  const expected = Array.from({ length: to - from + 1 }, (_, i) => from + i);
  if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
    throw new Error(`${who} shows seqs ${JSON.stringify(seqs)}, expected ${from}..${to} once each, in order`);
  }
}

/**
 * Waits until the message search shows its answer to `q` (in `scope`: 'all', or a chat id)
 * with `count` hits, and reads them as shown: chat, sender, text, the marked words, and every
 * element inside the text (only <mark> may be there).
 */
async function searchHits(page, q, scope, count, who) {
  const what = `${who}: ${count} hit(s) for "${q}" (${scope === 'all' ? 'every chat' : `chat ${scope}`})`;
  await until(page, what, ({ q, scope, count }) => {
    const results = document.getElementById('search-results');
    return !results.hidden && results.getAttribute('aria-busy') === 'false'
      && results.dataset.q === q && results.dataset.scope === String(scope)
      && document.querySelectorAll('#search-hits .hit').length === count;
  }, { q, scope, count });
  return page.$$eval('#search-hits .hit', (hits) => hits.map((hit) => ({
    chat: hit.querySelector('.chat-name').textContent,
    sender: hit.querySelector('.hit-sender').textContent,
    text: hit.querySelector('.hit-text').textContent,
    marks: [...hit.querySelectorAll('.hit-text mark')].map((mark) => mark.textContent),
    elements: [...hit.querySelectorAll('.hit-text *')].map((node) => node.localName),
  })));
}

/** Fails unless `actual` and `expected` are the same JSON. */
function assertSame(actual, expected, what) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, saw ${JSON.stringify(actual)}`);
  }
}

/** Waits until the message at `seq` is within the scrolled message pane. */
const onScreen = (page, seq, who) => until(page, `${who}: the message at seq ${seq} scrolled into view`,
  (seq) => {
    const row = document.querySelector(`#message-list .msg[data-seq="${seq}"]`);
    if (!row) return false;
    const box = document.getElementById('messages').getBoundingClientRect();
    const rect = row.getBoundingClientRect();
    return rect.top >= box.top && rect.bottom <= box.bottom;
  }, seq);

async function register(page, name, email) {
  await requirePolicy(await page.goto(BASE_URL), `${name}: the client page`);
  await visible(page.locator('#auth-form'), `${name}: the login form`);
  await page.click('#tab-register');
  await page.fill('#auth-name', name);
  await page.fill('#auth-email', email);
  await page.fill('#auth-password', PASSWORD);
  await page.click('#auth-submit');
  await visible(page.locator('#main-view'), `${name}: the chat screen after registering`);
  await until(page, `${name}: connected to the relay`,
    () => document.getElementById('conn').dataset.state === 'online');
  return Number(await page.textContent('#me-id'));
}

async function send(page, text) {
  await page.fill('#composer-text', text);
  await page.click('#send');
}

/** A real PNG (8-bit RGB, no interlace) of `width` × `height`: a gradient with a white disc,
 * for the server to decode and make a thumbnail of. */
function makePng(width, height) {
  const rows = [];
  for (let y = 0; y < height; y += 1) {
    const row = Buffer.alloc(1 + width * 3); // Filter type 0 (none), then the pixels.
    for (let x = 0; x < width; x += 1) {
      const disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2;
      row[1 + x * 3] = disc ? 255 : Math.round((255 * x) / width);
      row[2 + x * 3] = disc ? 255 : Math.round((255 * y) / height);
      row[3 + x * 3] = disc ? 255 : 180;
    }
    rows.push(row);
  }
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per sample
  header[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** PNG's CRC-32 (zlib's crc32 is not in every Node 20). */
function crc32(bytes) {
  let crc = ~0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit += 1) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return ~crc >>> 0;
}

async function shot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot ${file}`);
}

/**
 * Bob's relay connection goes through Playwright, so the test can cut it (as a lost network
 * would), keep it down, and lose what the server says while cutting.
 */
function relayControl(page) {
  const control = {
    blocked: false,
    /** When set, the next `send` frame reaches the server, but nothing more reaches the page. */
    loseAckOfNextSend: false,
    swallowing: false,
    live: new Set(),
    /** Every `send` frame the page sent: `{text, dedup_key}`. */
    sends: [],
    /** Every `resume` frame the page sent. */
    resumes: [],
    async drop() {
      this.blocked = true;
      for (const route of this.live) await route.close({ code: 4000, reason: 'test: network lost' });
      this.live.clear();
    },
  };
  return page.routeWebSocket(/\/ws\?token=/, (route) => {
    if (control.blocked) {
      route.close({ code: 4000, reason: 'test: network down' });
      return;
    }
    control.swallowing = false;
    const server = route.connectToServer();
    control.live.add(route);
    route.onMessage((message) => {
      server.send(message);
      const frame = JSON.parse(message);
      if (frame.type === 'send') control.sends.push({ text: frame.text, key: frame.dedup_key });
      if (frame.type === 'resume') control.resumes.push(frame);
      if (control.loseAckOfNextSend && frame.type === 'send') {
        control.loseAckOfNextSend = false;
        control.swallowing = true;
      }
    });
    server.onMessage((message) => {
      if (!control.swallowing) route.send(message);
    });
  }).then(() => control);
}

/** The network is back: unblock the relay and tell the page, as the browser would. */
async function reconnect(page, relay) {
  relay.blocked = false;
  await page.evaluate(() => window.dispatchEvent(new Event('online')));
}

async function main() {
  await mkdir(SHOTS, { recursive: true });
  log(`windi at ${BASE_URL}; chromium ${CHROMIUM}; screenshots in ${SHOTS}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: WAIT_MS,
  });
  const pages = [];
  const csp = cspWatch();
  try {
    const desktop = await browser.newContext({ viewport: { width: 1200, height: 760 } });
    const phone = await browser.newContext({
      viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true,
    });
    await csp.watch(desktop, 'alice');
    await csp.watch(phone, 'bob');
    const alice = await desktop.newPage();
    const bob = await phone.newPage();
    for (const [who, page] of [['alice', alice], ['bob', bob]]) {
      page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`${who} console ${m.type()}: ${m.text()}`); });
      page.on('pageerror', (e) => log(`${who} page error: ${e.message}`));
      pages.push([who, page]);
    }
    const bobRelay = await relayControl(bob);

    // 1. Register both; Alice finds Bob by name and writes to him.
    const tag = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    await requirePolicy(await bob.goto(BASE_URL), 'bob: the client page');
    await visible(bob.locator('#auth-form'), 'bob: the login form');
    await shot(bob, 'phone-login');
    const bobId = await register(bob, 'Bob', `bob-${tag}@example.com`);
    const aliceId = await register(alice, 'Alice', `alice-${tag}@example.com`);
    log(`registered Alice #${aliceId} and Bob #${bobId}`);

    await alice.click('#show-new-chat');
    await alice.fill('#new-chat-user', 'bo');
    const found = alice.locator('#people-results .person', { hasText: `#${bobId}` });
    await visible(found, 'alice: Bob found by the start of his name');
    await found.click();
    const hello = 'Hi Bob! Are you there?';
    await send(alice, hello);
    await visible(ownMessage(alice, hello).locator('.status[data-status="sent"]'),
      'alice: her first message stored (one tick)');
    log('Alice sent the first message');

    // 2. Bob sees it live, opens the chat, reads; Alice sees the read mark.
    const bobsItem = bob.locator('.chat-item', { hasText: 'Alice' });
    await visible(bobsItem.locator('.badge', { hasText: /^1$/ }), 'bob: the new chat with 1 unread');
    await visible(bobsItem.locator('.preview', { hasText: hello }), 'bob: the preview of the message');
    await shot(bob, 'phone-chat-list');
    await bobsItem.click();
    await visible(anyMessage(bob, hello), 'bob: the message in the open chat');
    await visible(ownMessage(alice, hello).locator('.status[data-status="read"]'),
      'alice: the read mark on her message');
    await until(bob, 'bob: the unread badge gone',
      () => !document.querySelector('.chat-item .badge'));
    log('Bob read it; Alice saw the read mark');

    // 3. Bob types: Alice sees it; then his reply arrives live and Alice reads it.
    const reply = 'Yes! Typing from my phone.';
    await bob.fill('#composer-text', reply.slice(0, 10));
    await until(alice, 'alice: "Bob is typing…"',
      () => /Bob is typing/.test(document.getElementById('typing').textContent));
    await shot(alice, 'desktop-typing');
    await bob.fill('#composer-text', reply);
    await bob.click('#send');
    await visible(anyMessage(alice, reply), 'alice: Bob\'s reply, live');
    await until(alice, 'alice: the typing line cleared by his message',
      () => document.getElementById('typing').textContent === '');
    await visible(ownMessage(bob, reply).locator('.status[data-status="read"]'),
      'bob: the read mark on his reply');
    log('typing shown; the reply arrived live and was read');

    // 4. A group: it appears on Bob's side live; its history pages back to seq 1.
    await bob.click('#back'); // On a phone the list and the open chat take turns.
    await alice.click('#show-new-group');
    await alice.fill('#new-group-name', 'Project Team');
    await alice.fill('#new-group-members', String(bobId));
    await alice.click('#new-group-form button[type=submit]');
    await until(alice, 'alice: the group open', () => document.getElementById('chat-title').textContent === 'Project Team');
    const groupItem = bob.locator('.chat-item', { hasText: 'Project Team' });
    await visible(groupItem, 'bob: the new group in his list, live');
    const groupId = Number(await alice.evaluate(() => document.querySelector('.chat-item[aria-current="true"]').dataset.chatId));
    const batch = 60;
    await alice.evaluate(async ({ chatId, count, tag }) => {
      // Over the API, as another client of Alice's would (same token, own dedup keys).
      const token = sessionStorage.getItem('windi.token');
      for (let i = 1; i <= count; i += 1) {
        const response = await fetch('/chat/message', {
          method: 'POST',
          headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ chat_id: chatId, text: `Note ${i} of ${count}`, dedup_key: `e2e-${tag}-${i}` }),
        });
        if (!response.ok) throw new Error(`POST /chat/message: ${response.status}`);
      }
    }, { chatId: groupId, count: batch, tag });
    await visible(groupItem.locator('.badge', { hasText: new RegExp(`^${batch}$`) }),
      `bob: ${batch} unread in the group, counted live`);
    // A fresh start of Bob's page (the login survives it): now the group's history has to come
    // from the API, a page at a time.
    await bob.reload();
    await until(bob, 'bob: connected again after the reload',
      () => document.getElementById('conn').dataset.state === 'online');
    await visible(groupItem.locator('.badge', { hasText: new RegExp(`^${batch}$`) }),
      `bob: ${batch} unread in the group, from the chat list`);
    await groupItem.click();
    await visible(anyMessage(bob, `Note ${batch} of ${batch}`), 'bob: the newest group message');
    await until(alice, 'alice: her last group message read by Bob (the only other member)',
      (text) => [...document.querySelectorAll('#message-list .msg.own')]
        .some((m) => m.querySelector('.text').textContent === text
          && m.querySelector('.status').dataset.status === 'read'),
      `Note ${batch} of ${batch}`);
    // Scroll back until the first message is there (each scroll to the top loads a page).
    await until(bob, 'bob: scrolled back to the first group message', () => {
      const box = document.getElementById('messages');
      box.scrollTop = 0;
      box.dispatchEvent(new Event('scroll'));
      return document.querySelector('#message-list .msg[data-seq="1"]') !== null;
    });
    assertContiguous(await shownSeqs(bob), 1, batch, 'bob\'s group');
    log(`group history scrolled back over ${batch} messages`);

    // Back to the private chat (phone: through the list).
    await bob.click('#back');
    await bobsItem.click();
    await visible(anyMessage(bob, reply), 'bob: the private chat again');
    await alice.locator('.chat-item', { hasText: 'Bob' }).click();
    await visible(anyMessage(alice, reply), 'alice: the private chat again');

    // 5. Bob's connection drops; two messages while he is away arrive by resume, in order.
    await bobRelay.drop();
    await until(bob, 'bob: shown as disconnected',
      () => document.getElementById('conn').dataset.state !== 'online');
    const away = ['While you were away (1)', 'While you were away (2)'];
    for (const text of away) {
      await send(alice, text);
      await visible(ownMessage(alice, text).locator('.status[data-status="sent"]'), `alice: "${text}" stored`);
    }
    await reconnect(bob, bobRelay);
    await until(bob, 'bob: reconnected',
      () => document.getElementById('conn').dataset.state === 'online');
    for (const text of away) await visible(anyMessage(bob, text), `bob: "${text}" after resume`);
    assertContiguous(await shownSeqs(bob), 1, 4, 'bob\'s private chat');
    log('Bob reconnected; resume brought what he missed');

    // 6. The ack of Bob's send is lost with his connection: the retry does not duplicate.
    const once = 'Sent once, whatever happens';
    bobRelay.loseAckOfNextSend = true;
    await send(bob, once);
    await visible(anyMessage(alice, once), 'alice: Bob\'s message (the server stored it)');
    await until(bob, 'bob: still waiting for the lost ack',
      () => document.querySelector('#message-list .msg.pending') !== null);
    await bobRelay.drop();
    await reconnect(bob, bobRelay);
    await until(bob, 'bob: reconnected again',
      () => document.getElementById('conn').dataset.state === 'online');
    await until(bob, 'bob: the pending message confirmed by the retry',
      () => document.querySelector('#message-list .msg.pending') === null);
    await visible(ownMessage(bob, once).locator('.status'), 'bob: his message, stored');
    await until(alice, 'alice: the message once, read by her',
      (text) => [...document.querySelectorAll('#message-list .msg .text')]
        .filter((t) => t.textContent === text).length === 1, once);
    assertContiguous(await shownSeqs(alice), 1, 5, 'alice\'s private chat');
    assertContiguous(await shownSeqs(bob), 1, 5, 'bob\'s private chat');
    const copies = await bob.locator('#message-list .msg .text', { hasText: once }).count();
    if (copies !== 1) throw new Error(`bob shows "${once}" ${copies} times`);
    const tries = bobRelay.sends.filter((s) => s.text === once);
    if (tries.length < 2 || new Set(tries.map((s) => s.key)).size !== 1) {
      throw new Error(`expected the send retried with one dedup_key, saw ${JSON.stringify(tries)}`);
    }
    await visible(ownMessage(bob, once).locator('.status[data-status="read"]'),
      'bob: Alice read the retried message');
    log(`a send whose ack was lost went ${tries.length} times with one dedup_key and exists once`);

    // 7. Alice edits a message; Bob sees the new text in its place, marked edited, live.
    const typo = 'See you at 10';
    const fixed = 'See you at 11';
    await send(alice, typo);
    await visible(anyMessage(bob, typo), `bob: "${typo}"`);
    const editedSeq = await storedSeq(alice, typo, 'alice');
    await editThrough(alice, ownMessage(alice, typo), fixed, 'alice');
    for (const [who, page] of [['alice', alice], ['bob', bob]]) {
      await visible(messageAt(page, editedSeq).locator('.text', { hasText: exactly(fixed) }),
        `${who}: the edited text at seq ${editedSeq}`);
      await visible(messageAt(page, editedSeq).locator('.edited'), `${who}: the "edited" mark`);
    }
    await gone(anyMessage(bob, typo), 'bob: the old text gone');
    await until(alice, 'alice: the composer back to sending',
      () => document.getElementById('composer-context').hidden
        && document.getElementById('composer-text').value === '');
    log('Alice edited a message; Bob saw the edit live');

    // 8. Alice deletes one; Bob sees the tombstone in its place, live.
    const oops = 'Oops, wrong chat';
    await send(alice, oops);
    await visible(anyMessage(bob, oops), `bob: "${oops}"`);
    const deletedSeq = await storedSeq(alice, oops, 'alice');
    await deleteThrough(ownMessage(alice, oops), 'alice');
    for (const [who, page] of [['alice', alice], ['bob', bob]]) {
      await visible(messageAt(page, deletedSeq, '.deleted').locator('.text', { hasText: /^message deleted$/ }),
        `${who}: the tombstone at seq ${deletedSeq}`);
    }
    await gone(anyMessage(bob, oops), 'bob: the deleted text gone');
    log('Alice deleted a message; Bob saw the tombstone live');

    // 9. Bob reacts to the edited message; Alice sees it live; Bob takes it back.
    await messageAction(messageAt(bob, editedSeq), { emoji: '👍' }, 'bob: 👍 in the menu');
    const thumbs = (page, more = '') => messageAt(page, editedSeq)
      .locator(`.reaction${more}[data-emoji="👍"]`);
    await visible(thumbs(alice, '[aria-pressed="false"]').locator('.count', { hasText: /^1$/ }),
      'alice: Bob\'s 👍 (1), live, not hers');
    await visible(thumbs(bob, '.mine[aria-pressed="true"]').locator('.count', { hasText: /^1$/ }),
      'bob: his own 👍 highlighted');
    await thumbs(bob).click();
    await gone(thumbs(alice), 'alice: the 👍 gone again, live');
    await gone(thumbs(bob), 'bob: the 👍 gone again');
    log('Bob reacted and took it back; Alice saw both live');

    // 10. Bob replies to Alice's first message: the quote shows on both sides.
    await messageAction(anyMessage(bob, hello), 'reply', 'bob: "Reply" in the menu');
    await until(bob, 'bob: the composer says whom he replies to',
      () => !document.getElementById('composer-context').hidden
        && document.getElementById('context-label').textContent === 'Reply to Alice');
    const answer = 'Yes, I was there all along';
    await send(bob, answer);
    for (const [who, page, sender] of [['bob', bob, 'Alice'], ['alice', alice, 'You']]) {
      const quote = anyMessage(page, answer).locator('.quote');
      await visible(quote.locator('.quote-sender', { hasText: exactly(sender) }), `${who}: the quote's sender`);
      await visible(quote.locator('.quote-text', { hasText: exactly(hello) }), `${who}: the quoted text`);
    }
    await until(bob, 'bob: the composer back to sending',
      () => document.getElementById('composer-context').hidden);
    log('Bob replied; both saw the quote');

    // 11. A reply to a message older than anything loaded: "message #id" until clicked.
    await bob.click('#back');
    await groupItem.click();
    const firstNote = `Note 1 of ${batch}`;
    await messageAction(anyMessage(bob, firstNote), 'reply', 'bob: "Reply" on the first note');
    const late = 'Replying to the very first note';
    await send(bob, late);
    await visible(ownMessage(bob, late).locator('.quote-text', { hasText: exactly(firstNote) }),
      'bob: his reply quoting the first note');
    await alice.reload();
    await until(alice, 'alice: connected again after the reload',
      () => document.getElementById('conn').dataset.state === 'online');
    await alice.locator('.chat-item', { hasText: 'Project Team' }).click();
    const lateQuote = anyMessage(alice, late).locator('.quote');
    await visible(anyMessage(alice, late).locator('.quote.unknown .quote-text', { hasText: /^message #\d+$/ }),
      'alice: the quote of a message not loaded, as "message #id"');
    if (await messageAt(alice, 1).count()) throw new Error('alice: the first note was loaded already');
    await lateQuote.click();
    await visible(messageAt(alice, 1).locator('.text', { hasText: exactly(firstNote) }),
      'alice: the first note, paged back to');
    await visible(lateQuote.locator('.quote-text', { hasText: exactly(firstNote) }),
      'alice: the quote now shows the note');
    assertContiguous(await shownSeqs(alice), 1, batch + 1, 'alice\'s group');
    log('a quote of an unloaded message showed as "message #id" and paged back to it');

    // 12. While Bob is offline, Alice edits, deletes and reacts, and removes him from the
    // group: none of it adds a message, so only `resume` by revs can bring it.
    await bob.click('#back');
    await bobsItem.click();
    await visible(anyMessage(bob, answer), 'bob: the private chat again');
    await alice.locator('.chat-item', { hasText: 'Bob' }).click();
    await visible(anyMessage(alice, answer), 'alice: the private chat again');
    const [awayEdited, awayDeleted] = away;
    const seqs = {
      edited: await storedSeq(alice, awayEdited, 'alice'),
      deleted: await storedSeq(alice, awayDeleted, 'alice'),
      reacted: Number(await anyMessage(alice, once).getAttribute('data-seq')),
    };
    await bobRelay.drop();
    await until(bob, 'bob: shown as disconnected once more',
      () => document.getElementById('conn').dataset.state !== 'online');
    const awayFixed = `${awayEdited}, edited while you were away`;
    await editThrough(alice, ownMessage(alice, awayEdited), awayFixed, 'alice');
    await visible(messageAt(alice, seqs.edited).locator('.edited'), 'alice: her edit stored');
    await deleteThrough(ownMessage(alice, awayDeleted), 'alice');
    await visible(messageAt(alice, seqs.deleted, '.deleted'), 'alice: her delete stored');
    await messageAction(messageAt(alice, seqs.reacted), { emoji: '❤️' }, 'alice: ❤️ in the menu');
    const heart = (page) => messageAt(page, seqs.reacted).locator('.reaction[data-emoji="❤️"]');
    await visible(heart(alice).locator('.count', { hasText: /^1$/ }), 'alice: her ❤️ stored');
    await alice.evaluate(async ({ chatId, userId }) => {
      const token = sessionStorage.getItem('windi.token');
      const response = await fetch(`/chat/group/${chatId}/members/${userId}`, {
        method: 'DELETE', headers: { Authorization: `Bearer ${token}` },
      });
      if (!response.ok) throw new Error(`DELETE /chat/group/…/members: ${response.status}`);
    }, { chatId: groupId, userId: bobId });
    const resumesBefore = bobRelay.resumes.length;
    // Nothing of it may have reached Bob yet.
    if (await messageAt(bob, seqs.edited).locator('.edited').count()) {
      throw new Error('bob saw the edit while he was offline');
    }
    await reconnect(bob, bobRelay);
    await until(bob, 'bob: reconnected a third time',
      () => document.getElementById('conn').dataset.state === 'online');
    await visible(messageAt(bob, seqs.edited).locator('.text', { hasText: exactly(awayFixed) }),
      'bob: the edit made while he was away');
    await visible(messageAt(bob, seqs.edited).locator('.edited'), 'bob: its "edited" mark');
    await visible(messageAt(bob, seqs.deleted, '.deleted'),
      'bob: the tombstone of the message deleted while he was away');
    await visible(heart(bob).locator('.count', { hasText: /^1$/ }),
      'bob: Alice\'s ❤️ from while he was away');
    if (await heart(bob).getAttribute('aria-pressed') !== 'false') {
      throw new Error('bob: Alice\'s ❤️ shown as his own');
    }
    await gone(groupItem, 'bob: the group he was removed from gone from his list');
    const resume = bobRelay.resumes.at(-1);
    if (bobRelay.resumes.length <= resumesBefore || !resume.revs || resume.chats
        || !(Number(resume.revs[String(groupId)]) > 0)) {
      throw new Error(`expected a resume with revs after the reconnect, saw ${JSON.stringify(resume)}`);
    }
    assertContiguous(await shownSeqs(bob), 1, deletedSeq + 1, 'bob\'s private chat');
    log(`resume with revs ${JSON.stringify(resume.revs)} brought an edit, a delete, a reaction and a removal`);

    await shot(alice, 'desktop-chat');
    await shot(bob, 'phone-chat');

    // 13. Files. Alice attaches a PNG through the 📎 button's file input and drops a text
    // file on the conversation; their PUTs are held until the chips have been seen uploading.
    const png = makePng(320, 200);
    const packing = 'Packing list:\n- tent\n- stove\n- maps\n';
    const held = [];
    let bothHeld;
    const uploadsHeld = new Promise((resolve) => { bothHeld = resolve; });
    const uploadLinks = /\/files\/uploads\//;
    await alice.route(uploadLinks, (route) => {
      if (route.request().method() !== 'PUT') return route.continue();
      held.push(route);
      if (held.length === 2) bothHeld();
      return undefined;
    });
    await visible(alice.locator('#attach[aria-label="Attach files"]'), 'alice: the 📎 button');
    await alice.setInputFiles('#file-input', { name: 'photo.png', mimeType: 'image/png', buffer: png });
    const dropped = await alice.evaluateHandle((text) => {
      const data = new DataTransfer();
      data.items.add(new File([text], 'packing.txt', { type: 'text/plain' }));
      return data;
    }, packing);
    await alice.dispatchEvent('#messages', 'dragenter', { dataTransfer: dropped });
    await alice.dispatchEvent('#messages', 'dragover', { dataTransfer: dropped });
    await until(alice, 'alice: the conversation lit up as a drop zone',
      () => document.getElementById('chat-view').classList.contains('dragging'));
    await shot(alice, 'desktop-drop');
    await alice.dispatchEvent('#messages', 'drop', { dataTransfer: dropped });
    await until(alice, 'alice: the drop zone dark again',
      () => !document.getElementById('chat-view').classList.contains('dragging'));
    await within(uploadsHeld, 'alice: both files announced and their uploads started');
    const chips = alice.locator('#uploads .chip');
    await until(alice, 'alice: two chips uploading, with progress bars, Send disabled',
      () => {
        const shown = [...document.querySelectorAll('#uploads .chip')];
        return shown.length === 2
          && shown.every((c) => c.dataset.status === 'uploading' && c.querySelector('progress'))
          && document.getElementById('send').disabled;
      });
    assertSame(await chips.locator('.chip-name').allTextContents(), ['photo.png', 'packing.txt'],
      'alice: the chips, in the order chosen');
    await until(alice, 'alice: the photo previewed on its chip', () => {
      const preview = document.querySelector('#uploads .chip img.chip-preview');
      return preview?.complete && preview.naturalWidth === 320;
    });
    await shot(alice, 'desktop-uploading');
    for (const route of held) await route.continue();
    await alice.unroute(uploadLinks);
    await until(alice, 'alice: both uploads done, Send enabled', () => {
      const shown = [...document.querySelectorAll('#uploads .chip')];
      return shown.length === 2 && shown.every((c) => c.dataset.status === 'done')
        && !document.getElementById('send').disabled;
    });
    // A file the server refuses (text declared as a PNG): its chip says why, and goes with ×.
    // One over 25 MiB (dropped) is refused here, before anything is uploaded.
    await alice.setInputFiles('#file-input', {
      name: 'fake.png', mimeType: 'image/png', buffer: Buffer.from('not a picture at all'),
    });
    const fake = alice.locator('#uploads .chip[data-status="failed"]', { hasText: 'fake.png' });
    await visible(fake.locator('.chip-error', { hasText: /\S/ }), 'alice: the refused file\'s chip, saying why');
    log(`the server refused fake.png: "${await fake.locator('.chip-error').textContent()}"`);
    if (await alice.locator('#send').isDisabled()) throw new Error('alice: a failed upload blocks Send');
    await shot(alice, 'desktop-attachments');
    await fake.locator('.chip-remove').click();
    await gone(fake, 'alice: the refused file removed');
    const big = await alice.evaluateHandle(() => {
      const data = new DataTransfer();
      data.items.add(new File([new Uint8Array(25 * 1024 * 1024 + 1)], 'big.bin'));
      return data;
    });
    await alice.dispatchEvent('#messages', 'drop', { dataTransfer: big });
    await visible(alice.locator('#chat-error', { hasText: 'big.bin is larger than 25 MB.' }),
      'alice: a file over 25 MiB refused before uploading');
    if (await chips.count() !== 2) throw new Error('alice: a chip for the file over 25 MiB');
    // No text: the files are the message.
    await alice.fill('#composer-text', '');
    await alice.click('#send');
    await until(alice, 'alice: the chips cleared by sending',
      () => document.getElementById('uploads').hidden
        && !document.querySelector('#uploads .chip'));
    const filesRow = (page, more = '') => page.locator(`#message-list .msg.files-only${more}[data-seq]`);
    await visible(filesRow(alice, '.own').locator('.status'), 'alice: her files message stored');
    const filesSeq = Number(await filesRow(alice, '.own').getAttribute('data-seq'));
    if (await filesRow(alice, '.own').locator('.text').count()) {
      throw new Error('alice: a message of files alone shows a line of text');
    }
    const thumbLoaded = (seq) => {
      const img = document.querySelector(`#message-list .msg[data-seq="${seq}"] img.thumb`);
      return img?.complete && img.naturalWidth > 0
        && Math.round(img.getBoundingClientRect().width) === 240
        && Math.round(img.getBoundingClientRect().height) === 150;
    };
    await until(alice, 'alice: her image shown in her message, 240 × 150', thumbLoaded, filesSeq);
    await visible(alice.locator('.chat-item .preview', { hasText: '📎 2 files' }),
      'alice: "📎 2 files" as the chat\'s last message');

    // Bob sees both, live: the image's thumbnail loaded (with his token, from a blob: URL) and
    // the text file's row.
    await until(bob, 'bob: the image\'s thumbnail, loaded, 240 × 150', thumbLoaded, filesSeq);
    const fileRow = messageAt(bob, filesSeq).locator('.attachment-file', { hasText: 'packing.txt' });
    await visible(fileRow, 'bob: the text file\'s row');
    assertSame(await fileRow.locator('.file-size').textContent(), `${packing.length} B`,
      'bob: the text file\'s size');
    await shot(bob, 'phone-attachments');

    // The image whole, then back.
    await messageAt(bob, filesSeq).locator('.attachment-image').click();
    await until(bob, 'bob: the whole image shown', () => {
      const image = document.getElementById('lightbox-image');
      return document.getElementById('lightbox').open && image.dataset.attachmentId
        && image.complete && image.naturalWidth === 320 && image.naturalHeight === 200;
    });
    await shot(bob, 'phone-image');
    await bob.keyboard.press('Escape');
    await until(bob, 'bob: the image closed', () => !document.getElementById('lightbox').open);

    // The text file, downloaded under its name with its bytes.
    const [download] = await Promise.all([
      bob.waitForEvent('download', { timeout: WAIT_MS }),
      fileRow.locator('.file-download').click(),
    ]);
    assertSame(download.suggestedFilename(), 'packing.txt', 'bob: the downloaded file\'s name');
    assertSame(await readFile(await download.path(), 'utf8'), packing, 'bob: the downloaded bytes');

    // A reply to the files quotes them as what they are.
    await messageAction(messageAt(bob, filesSeq), 'reply', 'bob: "Reply" on the files');
    await until(bob, 'bob: the composer quotes the files',
      () => document.getElementById('context-text').textContent === '📎 2 files');
    const thanks = 'Got the list and the picture';
    await send(bob, thanks);
    for (const [who, page] of [['bob', bob], ['alice', alice]]) {
      await visible(anyMessage(page, thanks).locator('.quote-text', { hasText: exactly('📎 2 files') }),
        `${who}: the reply quoting "📎 2 files"`);
    }
    log('Alice sent an image (file input) and a text file (dropped) with no text; Bob saw the '
      + 'thumbnail live, opened the image, downloaded the file and replied to them');

    // 14. Message search. A message with every character HTML treats specially and an entity
    // written out, to be found later (not a tag such as <b>: Postgres's text search parser
    // leaves tags out of the index and the highlight); then a fresh page, so that the group's
    // first notes are older than anything loaded.
    const dinner = 'Dinner: fish & chips <3 "Bob\'s" treat, 1 < 2 > 0 &amp;lt; too';
    await send(alice, dinner);
    await visible(ownMessage(alice, dinner).locator('.status'), 'alice: the dinner message stored');
    const dinnerSeq = await storedSeq(alice, dinner, 'alice');
    await alice.reload();
    await until(alice, 'alice: connected again after the reload',
      () => document.getElementById('conn').dataset.state === 'online');

    // Search as you type ("note" also finds "notes", as the last word is a prefix): newest
    // first, the reply to the first note before the notes; "More" brings the next page.
    await alice.locator('#search-input').pressSequentially('note');
    let hits = await searchHits(alice, 'note', 'all', 20, 'alice');
    assertSame(hits.slice(0, 3).map((h) => h.text),
      [late, `Note ${batch} of ${batch}`, `Note ${batch - 1} of ${batch}`], 'alice: the first hits, newest first');
    assertSame([hits[0].marks, hits[1].marks], [['note'], ['Note']], 'alice: the matches marked');
    assertSame([hits[1].chat, hits[1].sender], ['Project Team', 'You'], 'alice: where a hit is, who wrote it');
    await alice.click('#search-more');
    hits = await searchHits(alice, 'note', 'all', 40, 'alice');
    if (new Set(hits.map((h) => h.text)).size !== 40) throw new Error('alice: "More" repeated a hit');
    assertSame(hits[20].text, `Note ${batch - 19} of ${batch}`, 'alice: the first hit of the second page');
    // One more word narrows it to one note, older than anything loaded.
    await alice.locator('#search-input').press('End');
    await alice.locator('#search-input').pressSequentially(' 7');
    hits = await searchHits(alice, 'note 7', 'all', 1, 'alice');
    assertSame(hits[0], {
      chat: 'Project Team', sender: 'You', text: `Note 7 of ${batch}`, marks: ['Note', '7'],
      elements: ['mark', 'mark'],
    }, 'alice: the one hit for "note 7"');
    await alice.click('#search-hits .hit');
    await until(alice, 'alice: the group opened by the hit',
      () => document.getElementById('chat-title').textContent === 'Project Team');
    await visible(messageAt(alice, 7, '.found').locator('.text', { hasText: exactly(`Note 7 of ${batch}`) }),
      'alice: the note found, outlined in its chat');
    await onScreen(alice, 7, 'alice');
    await visible(alice.locator('#search-hits .hit[aria-current="true"]'), 'alice: the hit opened, marked');
    assertContiguous(await shownSeqs(alice), 1, batch + 1, 'alice\'s group after the jump');
    await shot(alice, 'desktop-search');
    log('a search hit older than anything loaded opened in its chat, paged back to and outlined');

    // "This chat only" (the group): the dinner message is not in it; in every chat it is, its
    // text exactly as sent (the highlight's HTML escaped by the server, built as text here).
    await alice.check('#search-this-chat');
    hits = await searchHits(alice, 'note 7', groupId, 1, 'alice');
    await alice.fill('#search-input', 'chips');
    await searchHits(alice, 'chips', groupId, 0, 'alice');
    await visible(alice.locator('#search-status', { hasText: 'No messages found in this chat.' }),
      'alice: nothing found in the group');
    await alice.uncheck('#search-this-chat');
    hits = await searchHits(alice, 'chips', 'all', 1, 'alice');
    assertSame(hits[0], { chat: 'Bob', sender: 'You', text: dinner, marks: ['chips'], elements: ['mark'] },
      'alice: the dinner message found, shown as text');
    await alice.click('#search-hits .hit');
    await until(alice, 'alice: the private chat opened by the hit',
      () => document.getElementById('chat-title').textContent === 'Bob');
    await visible(messageAt(alice, dinnerSeq, '.found').locator('.text', { hasText: exactly(dinner) }),
      'alice: the dinner message outlined in its chat');
    await onScreen(alice, dinnerSeq, 'alice');
    if (await alice.locator('#message-list .msg.found').count() !== 1) {
      throw new Error('alice: more than one message outlined');
    }

    // A query of nothing but an exclusion: the server's 422 says why, and no hit stays.
    await alice.fill('#search-input', '-chips');
    await visible(alice.locator('#search-status.error', { hasText: 'must contain a word' }),
      'alice: the reason a query of only -excluded words finds nothing');
    if (await alice.locator('#search-hits .hit').count()) throw new Error('alice: hits of an earlier query left');

    // Esc: the chat list again, and no outline.
    await alice.locator('#search-input').press('Escape');
    await until(alice, 'alice: the search closed by Esc',
      () => document.getElementById('search-results').hidden
        && document.getElementById('search-input').value === ''
        && !document.querySelector('#message-list .msg.found'));
    await visible(alice.locator('.chat-item', { hasText: 'Project Team' }), 'alice: her chat list back');
    log('"this chat only" limited the search; a hit opened in another chat; a query of only '
      + 'exclusions was refused; Esc closed the search');

    // 15. Bob renames himself; Alice sees it in her list, live.
    if (await bob.locator('#back').isVisible()) await bob.click('#back');
    await bob.click('#show-account');
    await bob.fill('#profile-name', 'Bobby Tables');
    await bob.click('#profile-form button[type=submit]');
    await visible(bob.locator('#me-name', { hasText: 'Bobby Tables' }), 'bob: his new name');
    await visible(alice.locator('.chat-item', { hasText: 'Bobby Tables' }),
      'alice: Bob\'s new name in her chat list, live');
    log('a new name reached the other side live');

    // 16. Silent refresh, ahead of expiry and after a refused access token.
    const firstRefresh = await alice.evaluate(() => sessionStorage.getItem('windi.refresh'));
    await alice.evaluate(() => sessionStorage.setItem('windi.expires', String(Date.now() + 61000)));
    await alice.reload();
    await until(alice, 'alice: the refresh token exchanged before the access token expired',
      (old) => {
        const now = sessionStorage.getItem('windi.refresh');
        return now && now !== old;
      }, firstRefresh);
    await visible(alice.locator('#main-view'), 'alice: still signed in after the refresh');
    const secondRefresh = await alice.evaluate(() => sessionStorage.getItem('windi.refresh'));
    await alice.evaluate(() => sessionStorage.setItem('windi.token', 'expired.access.token'));
    await alice.click('#show-new-chat');
    await alice.fill('#new-chat-user', 'bobby');
    await visible(alice.locator('#people-results .person', { hasText: 'Bobby Tables' }),
      'alice: a search that met a refused token, refreshed and retried');
    await until(alice, 'alice: a new access token', (old) =>
      sessionStorage.getItem('windi.token') !== 'expired.access.token'
        && sessionStorage.getItem('windi.refresh') !== old, secondRefresh);
    log('the client refreshed its tokens silently, twice');

    // 17. Bob changes his password.
    await bob.fill('#password-current', 'not my password');
    await bob.fill('#password-new', 'an even better password');
    await bob.click('#password-form button[type=submit]');
    await visible(bob.locator('#account-status', { hasText: 'wrong' }), 'bob: a wrong current password refused');
    await bob.fill('#password-current', PASSWORD);
    await bob.fill('#password-new', 'an even better password');
    await bob.click('#password-form button[type=submit]');
    await visible(bob.locator('#account-status', { hasText: 'Password changed' }), 'bob: password changed');
    await visible(bob.locator('#main-view'), 'bob: still signed in after his password change');

    // 18. Alice logs out everywhere.
    const aliceToken = await alice.evaluate(() => sessionStorage.getItem('windi.token'));
    await alice.click('#show-account');
    await alice.click('#logout-all');
    await visible(alice.locator('#auth-form'), 'alice: the login form after logging out everywhere');
    const status = await alice.evaluate(async (token) => (await fetch('/auth/me', {
      headers: { Authorization: `Bearer ${token}` },
    })).status, aliceToken);
    if (status !== 401) throw new Error(`alice's old token answered ${status} after logout-all`);
    log('logged out everywhere; the old token is refused');
    csp.assertNone();
    log('no Content-Security-Policy violation');
    console.log(`e2e passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    for (const [who, page] of pages) {
      await page.screenshot({ path: path.join(SHOTS, `failure-${who}.png`) }).catch(() => {});
    }
    throw csp.explain(error);
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`FAILED: ${error.message}`);
    process.exit(1);
  },
);
