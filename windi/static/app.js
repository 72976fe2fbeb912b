// windi's browser client: plain JavaScript, no build step, no dependencies.
//
// It uses only the public HTTP API and the WebSocket relay protocol (docs/api.md and
// docs/relay-protocol.md), so it is also the worked example for anyone writing a client. What
// every client has to get right, and where this file does it:
//
//  * Order by `seq`, never by time. Each chat keeps `lastSeq`, the highest seq this client has
//    accounted for (from a chat summary or a delivered message); history pages by seq from it.
//    A message whose seq is already here is a duplicate: it replaces the copy only if it is
//    newer (see the next point). → onMessage(), storeMessage(), loadLatest(), loadOlder()
//  * Resume by `rev`. Every change to a chat (a new message, an edit, a deletion, a reaction, a
//    member joining or leaving) takes the chat's next `rev`. Each chat keeps `rev`, the highest
//    one applied (from its summary when first listed, then from the frames); after every
//    (re)connect the client sends `resume` with those, and the relay replays every change after
//    them, in order, then goes on live. Each message also carries the `rev` of its own latest
//    change, so an older copy (a history page fetched before an edit arrived) never undoes a
//    newer one. → onReady(), advanceRev(), storeMessage(), updateMessage()
//  * Every send carries a `dedup_key`, made once per message. A retry (after a timeout or a
//    dropped connection, over the relay or over HTTP) reuses it, so the server stores the
//    message once however often it is sent. → send(), transmit(), sendOverHttp()
//  * Edits, deletions and reactions go over HTTP (PATCH / DELETE /chat/message/{id}, PUT /
//    DELETE …/reactions/{emoji}); the answer is shown at once and the `message_updated` frame
//    that follows brings the same state to every other device. A deleted message stays as a
//    tombstone in its seq. → editMessage(), deleteMessage(), toggleReaction(), onMessageUpdated()
//  * A reply carries `reply_to`; the quoted message may be older than anything loaded, so the
//    quote says "message #id" until it is, and clicking it pages back to it. → quoteBlock()
//  * Read marks go out with `PATCH /chat/message/{id}/read` for the newest message on screen
//    (it marks everything before it too); other members' marks come in as `read` frames.
//    → markShownAsRead(), onRead()
//  * Typing goes out as a `typing` frame at most every couple of seconds while the user
//    types, and shows for a few seconds after each one that comes in. → onComposerInput()
//  * Message search (`GET /chat/search`) asks as the user types: debounced, and a newer query
//    aborts the answer still on its way to an older one, so results never show out of order.
//    The highlight is HTML the server escaped; it is still built as text nodes and <mark>
//    elements here, never assigned as HTML. Opening a hit pages history back to it, so the
//    messages stay contiguous. → onSearchInput(), runSearch(), highlightNodes(), openHit()
//  * Files go in three steps: announce (`POST /chat/attachments`) for an id and an upload link,
//    PUT the bytes to that link (no token: the link is the permission; any 2xx is success, as
//    an S3 link answers with an empty body), then send the ids in the message's `attachments`
//    (its text may then be empty). Reading a file needs the token, so an <img> cannot point at
//    it: the client fetches it with the token and shows it from a blob: URL (bounded cache).
//    → addFiles(), startUpload(), putFile(), attachmentsBlock(), loadThumbnail(), fetchFile()

// ---------------------------------------------------------------------------------------------
// Tunables

/** Messages per history page. */
const PAGE_SIZE = 50;
/** A `send` over the relay not acknowledged within this is retried over HTTP (same key). */
const ACK_TIMEOUT_MS = 8000;
/** Longest wait between reconnect attempts. */
const MAX_RECONNECT_DELAY_MS = 10000;
/** How often we tell others we are typing, while we are (the relay allows one a second). */
const TYPING_SEND_EVERY_MS = 2000;
/** How long "… is typing" stays up after the last typing frame. */
const TYPING_SHOW_MS = 4000;
/** A relay connection not ready within this is given up and tried again. */
const CONNECT_TIMEOUT_MS = 10000;
/** HTTP requests give up after this. */
const HTTP_TIMEOUT_MS = 15000;
/** How close to the bottom (px) counts as "the newest messages are on screen". */
const NEAR_BOTTOM_PX = 60;
/** The reactions a message's menu offers; reactions of others with any emoji show as well. */
const QUICK_EMOJI = ['👍', '❤️', '😂'];
/** How much of a quoted message a reply shows. */
const QUOTE_CHARS = 80;

const TOKEN_KEY = 'windi.token';
/** The session's refresh token (single-use: each refresh stores the next one). */
const REFRESH_KEY = 'windi.refresh';
/** When (ms since the epoch) the access token expires. */
const EXPIRES_KEY = 'windi.expires';
/** Refresh this long before the access token expires, so a request never carries a dead one. */
const REFRESH_AHEAD_MS = 60_000;
/** The relay's close code for an ended session (logout elsewhere, password change, …). */
const SESSION_ENDED = 4001;
/** The relay's close code when the token a socket was opened with expires. */
const TOKEN_EXPIRED = 4002;
/** Wait this long after the last keystroke before searching people. */
const SEARCH_DEBOUNCE_MS = 250;
/** Wait this long after the last keystroke before searching messages (the server allows 5
 * searches a second, with bursts of 20). */
const MESSAGE_SEARCH_DEBOUNCE_MS = 300;
/** Hits per page of message search ("More" asks for the next). */
const SEARCH_PAGE_SIZE = 20;
/** How many more pages a search reads by itself when the server stopped one short. */
const SEARCH_AUTO_PAGES = 4;
/** The largest history page the server gives: opening a search hit far back pages in these. */
const MAX_HISTORY_PAGE = 200;
/** Messages loaded above a search hit opened far back, so it does not sit at the very top. */
const REVEAL_CONTEXT = 10;
/** The server's limits on files: 25 MiB each, 10 a message. Checked here first, so a file too
 * large is refused at once rather than after announcing it. */
const MAX_FILE_BYTES = 25 * 1024 * 1024;
const MAX_FILES = 10;
/** Thumbnails kept as blob: URLs (the oldest is revoked past this). */
const THUMB_CACHE_SIZE = 200;
/** The largest box (px) an image takes in a message; its thumbnail is at most 320 px. */
const THUMB_MAX_WIDTH = 240;
const THUMB_MAX_HEIGHT = 320;
/** A thumbnail that failed to load is not asked for again before this. */
const THUMB_RETRY_MS = 30_000;
/** Downloading a file (up to 25 MiB) may take longer than an API call. */
const FILE_TIMEOUT_MS = 120_000;
/** An upload link is valid for 15 minutes: an upload still going then cannot succeed. */
const UPLOAD_TIMEOUT_MS = 15 * 60_000;
/** The types a chip previews from the local file (what the server makes thumbnails of). */
const PREVIEW_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

// ---------------------------------------------------------------------------------------------
// State

const state = {
  /** The signed-in user `{id, name, email}`, or null when signed out. */
  me: null,
  /** Chat id → chat (see newChat). */
  chats: new Map(),
  /** The chat on screen, or null. */
  openChatId: null,
  /** A user id we are about to write to in a private chat that does not exist yet: the first
   * message creates it (`recipient_id`). */
  draftRecipient: null,
  /** Messages sent but not yet confirmed, by dedup_key (see send). */
  outbox: new Map(),
  /** The message whose action menu is open: `{chatId, id, confirmDelete}`, or null. */
  menu: null,
  /** What the composer does besides a plain send: `{mode: 'reply' | 'edit', chatId, id}`, or
   * null. An edit keeps the draft it replaced in `draft`, to put it back afterwards. */
  compose: null,
  /** The message a search hit opened, outlined until another chat opens: `{chatId, id}`, or
   * null. */
  found: null,
  /** Files chosen for the next message, as chips above the composer (see addFiles). Like the
   * draft text they belong to the composer, not to a chat. */
  uploads: [],
  /** An edit is being saved (the Send button waits for it). */
  saving: false,
};

/** A chat as this client tracks it. `summary` is a ChatSummary from the API or a `chat` frame. */
function newChat(summary) {
  const chat = {
    id: summary.id,
    kind: 'private',
    name: null,
    memberIds: [],
    /** Every message up to this seq is accounted for (history pages from here). */
    lastSeq: summary.last_seq ?? 0,
    /** Resume cursor: every change up to this rev is applied. */
    rev: summary.rev ?? 0,
    /** Our role, `owner` or `member`: a group's owner may delete anyone's message. */
    role: 'member',
    /** How far we have read (our own marker). */
    myReadSeq: 0,
    /** Unread messages of others, counted up to `countedSeq`. */
    unread: 0,
    countedSeq: summary.last_seq ?? 0,
    lastMessage: null,
    /** Sort key of the chat list: when its newest message (or the chat) was made, in ms. */
    activity: 0,
    /** seq → MessageOut: what we can show. Contiguous from its smallest seq up. */
    messages: new Map(),
    /** message id → seq, for the messages in `messages` (replies and updates name ids). */
    seqById: new Map(),
    /** message id → MessageOut for messages outside `messages` (a quoted message, or an update
     * of one not loaded): kept apart so that `messages` stays contiguous. */
    outside: new Map(),
    /** For a private chat: how far the other member has read (from `read` frames). */
    otherReadSeq: 0,
    /** user id → timer clearing their "typing" line. */
    typing: new Map(),
    /** The history page being loaded before the oldest message, or null. */
    loadingOlder: null,
    marking: false,
  };
  applySummary(chat, summary);
  return chat;
}

/** Takes what a fresher summary says about a chat we know. It never moves `lastSeq` or `rev`:
 * messages and changes up to the summary's may still be on their way to us over the relay. */
function applySummary(chat, s) {
  chat.kind = s.kind;
  chat.name = s.name;
  chat.role = s.role ?? chat.role;
  chat.memberIds = s.member_ids;
  // Display names, by user id (a joiner's comes with their `member` frame).
  chat.names = new Map((s.members ?? []).map((m) => [m.id, m.name]));
  // Its unread count, unless we already know more (live messages, or our own newer marker).
  if (s.last_seq >= chat.countedSeq && s.last_read_seq >= chat.myReadSeq) {
    chat.unread = s.unread_count;
    chat.countedSeq = s.last_seq;
  }
  chat.myReadSeq = Math.max(chat.myReadSeq, s.last_read_seq);
  if (s.last_message) noteLastMessage(chat, s.last_message);
  const when = Date.parse(chat.lastMessage ? chat.lastMessage.timestamp : s.created_at);
  if (when > chat.activity) chat.activity = when;
}

/** The chat with this id; one we have not heard of yet (its `chat` frame is still to come, or
 * our list is stale) starts empty, with cursor 0, and the chat list fills it in. */
function ensureChat(chatId) {
  let chat = state.chats.get(chatId);
  if (!chat) {
    chat = newChat({
      id: chatId, kind: 'private', name: null, member_ids: [], last_seq: 0, rev: 0,
      last_read_seq: 0, unread_count: 0, last_message: null, created_at: new Date().toISOString(),
    });
    state.chats.set(chatId, chat);
    refreshChats();
  }
  return chat;
}

/** Makes `message` the chat's newest (its list preview) if it is: a later seq, or a newer copy
 * of the same message. */
function noteLastMessage(chat, message) {
  const last = chat.lastMessage;
  if (!last || message.seq > last.seq || (message.seq === last.seq && !isOlderCopy(message, last))) {
    chat.lastMessage = message;
  }
}

/** Whether `a` is an older state of the message `b` holds: each change of a message raises its
 * `rev`, so of two copies the one with the higher rev is the newer. */
const isOlderCopy = (a, b) => a.id === b.id && (b.rev ?? 0) > (a.rev ?? 0);

/** Moves a chat's resume cursor to a change we have applied. Frames arrive in rev order, so
 * the highest one seen is the point to resume after. */
function advanceRev(chat, rev) {
  if (Number.isSafeInteger(rev) && rev > chat.rev) chat.rev = rev;
}

const isMine = (message) => message.sender_id === state.me.id;
const openChat = () => state.chats.get(state.openChatId) ?? null;

// ---------------------------------------------------------------------------------------------
// HTTP API

class ApiError extends Error {
  constructor(status, detail, code, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    /** Seconds to wait before asking again (429, 503), if the server said. */
    this.retryAfter = retryAfter;
  }
}

/** One JSON request to the API with our token. Errors are `{detail, code}` JSON. A 401 on a
 * signed-in call may be an access token that just expired: one silent refresh and a retry;
 * if the session itself has ended, the refresh fails and we sign out. `signal` aborts it
 * (a search overtaken by a newer one). */
function api(method, path, body, { signal } = {}) {
  return withSession(() => request(method, path, body, signal));
}

/** Runs `call` (a request with the stored token); a 401 refreshes the session once and runs it
 * again, with the new token, and an ended session signs out. */
async function withSession(call, retried = false) {
  try {
    return await call();
  } catch (error) {
    if (error.status === 401 && state.me && !retried && await refreshSession()) {
      return withSession(call, true);
    }
    if (error.status === 401 && state.me) {
      signOut('Your session has ended. Please log in again.');
    }
    throw error;
  }
}

/** A file (or thumbnail) of a message, as a Blob: `GET /chat/attachments/…` with our token
 * answers a redirect to a short-lived link, which fetch follows. (A cross-origin link, such as
 * S3's, gets no Authorization header: browsers drop it on such a redirect, as they should.) */
function fetchFile(path) {
  return withSession(async () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(path, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(FILE_TIMEOUT_MS),
    });
    if (!response.ok) throw await responseError(response);
    return response.blob();
  });
}

/** The ApiError of a failed answer (errors are `{detail, code}` JSON; anything else is its
 * text, or the status). */
async function responseError(response) {
  const text = await response.text().catch(() => '');
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  const retryAfter = Number(response.headers.get('Retry-After'));
  return new ApiError(response.status, data?.detail || response.statusText || `HTTP ${response.status}`,
    data?.code, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
}

async function request(method, path, body, signal) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const timeout = AbortSignal.timeout(HTTP_TIMEOUT_MS);
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    const retryAfter = Number(response.headers.get('Retry-After'));
    throw new ApiError(response.status, data?.detail ?? response.statusText, data?.code,
      Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// The session: an access token refreshed silently before it expires

let refreshTimer = null;
let sessionRefresh = null;

/** Keeps a login's or a refresh's tokens and plans the next refresh. */
function storeTokens({ access_token: access, refresh_token: refresh, expires_in: expiresIn }) {
  sessionStorage.setItem(TOKEN_KEY, access);
  if (refresh) sessionStorage.setItem(REFRESH_KEY, refresh);
  sessionStorage.setItem(EXPIRES_KEY, String(Date.now() + expiresIn * 1000));
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const expires = Number(sessionStorage.getItem(EXPIRES_KEY) ?? 0);
  if (!expires || !sessionStorage.getItem(REFRESH_KEY)) return;
  const wait = Math.max(1_000, expires - Date.now() - REFRESH_AHEAD_MS);
  refreshTimer = setTimeout(() => { refreshSession(); }, wait);
}

/** Exchanges the refresh token for new tokens; true if it worked. One at a time: a refresh
 * token is single-use, and presenting it twice would end the session as stolen. */
function refreshSession() {
  sessionRefresh ??= (async () => {
    const token = sessionStorage.getItem(REFRESH_KEY);
    if (!token) return false;
    try {
      storeTokens(await request('POST', '/auth/refresh', { refresh_token: token }));
      return true;
    } catch (error) {
      if (error.status === 401 && state.me) {
        signOut('Your session has ended. Please log in again.');
      }
      if (error.status !== 401) scheduleRefresh();
      return false;
    } finally {
      sessionRefresh = null;
    }
  })();
  return sessionRefresh;
}

/** A random dedup key: made once per message and reused for every retry of it. */
function newDedupKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http LAN hosts too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------------------------------------
// The relay connection

const relay = {
  socket: null,
  /** True between the `ready` frame and the close. */
  ready: false,
  /** Consecutive failed attempts, for the backoff. */
  failures: 0,
  reconnectTimer: null,
};

let clientConfig = null;

async function connectRelay() {
  clearTimeout(relay.reconnectTimer);
  if (!state.me || relay.socket) return;
  try {
    // windi tells us where the relay is: its public URL behind a proxy (RELAY_PUBLIC_URL),
    // else its own port of this host.
    clientConfig ??= await api('GET', '/client-config.json');
  } catch {
    scheduleReconnect();
    return;
  }
  if (!state.me || relay.socket) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const token = encodeURIComponent(sessionStorage.getItem(TOKEN_KEY) ?? '');
  // Browsers cannot set headers on a WebSocket, so the token goes in the query.
  const base = clientConfig.relay_url ?? `${scheme}://${location.hostname}:${clientConfig.relay_port}/ws`;
  const socket = new WebSocket(`${base}?token=${token}`);
  relay.socket = socket;
  setConnection('connecting');
  let opened = false;
  socket.addEventListener('open', () => { opened = true; });
  // A connection that hangs (no answer, no error) would otherwise never be retried.
  const connectTimer = setTimeout(() => { if (!relay.ready) socket.close(); }, CONNECT_TIMEOUT_MS);
  socket.addEventListener('message', (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(frame);
  });
  socket.addEventListener('close', (event) => {
    clearTimeout(connectTimer);
    if (relay.socket !== socket) return;
    relay.socket = null;
    relay.ready = false;
    setConnection('offline');
    if (!state.me) return;
    if (event.code === SESSION_ENDED) {
      signOut('This session was ended (logged out elsewhere, or the password changed).');
      return;
    }
    if (event.code === TOKEN_EXPIRED) {
      // The socket's token ran out. The stored one is usually newer already (refreshed ahead
      // of expiry); if not, refresh now. Then reconnect at once and resume.
      const fresh = Number(sessionStorage.getItem(EXPIRES_KEY) ?? 0) - Date.now() > 5_000;
      (fresh ? Promise.resolve(true) : refreshSession()).then((ok) => { if (ok) scheduleReconnect(0); });
      return;
    }
    // A refused upgrade (bad or expired token: 401) looks like any failed connection here;
    // asking /auth/me tells, and signs out on a 401.
    if (!opened) api('GET', '/auth/me').catch(() => {});
    // 1012: the relay restarts: come back at once. Otherwise (a drop, 1001 idle, 1008 too
    // slow) back off a little. Either way we resume from our cursors, so nothing is lost.
    scheduleReconnect(event.code === 1012 ? 0 : undefined);
  });
}

function scheduleReconnect(delay) {
  clearTimeout(relay.reconnectTimer);
  if (!state.me) return;
  relay.failures += 1;
  const backoff = Math.min(MAX_RECONNECT_DELAY_MS, 500 * 2 ** (relay.failures - 1));
  const wait = delay ?? backoff * (0.5 + Math.random() / 2);
  relay.reconnectTimer = setTimeout(connectRelay, wait);
}

function relaySend(frame) {
  if (!relay.ready) return false;
  relay.socket.send(JSON.stringify(frame));
  return true;
}

/** The frames that are changes of a chat (message, message_updated, member, chat) move its
 * resume cursor. `read` and `typing` frames carry a rev too: how far the relay has delivered
 * the chat, where the change frames before them have brought the cursor already. */
function onFrame(frame) {
  switch (frame.type) {
    case 'ready': return onReady();
    case 'message': return onMessage(frame.message, frame.rev);
    case 'message_updated': return onMessageUpdated(frame);
    case 'read': return onRead(frame);
    case 'chat': return onChatFrame(frame.chat, frame.rev);
    case 'chat_removed': return onChatRemoved(frame.chat_id);
    case 'member': return onMember(frame);
    case 'typing': return onTyping(frame);
    case 'user_updated': return onUserUpdated(frame);
    case 'ack': return onAck(frame);
    case 'error': return onRelayError(frame);
    default: return undefined; // Frames added later are ignored by older clients.
  }
}

/** Connected and subscribed: from here every new message of our chats arrives. */
function onReady() {
  relay.ready = true;
  relay.failures = 0;
  setConnection('online');
  // Resume first: "I have applied every change up to `rev` in each chat". Whatever changed
  // while we were away (new messages, edits, deletions, reactions, members) is replayed in rev
  // order before anything live; chats we joined meanwhile arrive as `chat` frames, chats we
  // left as `chat_removed`.
  const revs = {};
  for (const chat of state.chats.values()) revs[String(chat.id)] = chat.rev;
  relaySend({ type: 'resume', revs });
  // Sends that were never confirmed go again, with the same dedup keys.
  for (const item of state.outbox.values()) if (!item.error) transmit(item);
  // Chats created since our list was fetched (e.g. while we were away) are subscribed by the
  // relay but unknown here: the list tells us about them.
  refreshChats();
}

// ---------------------------------------------------------------------------------------------
// Incoming events

/** A new message from the relay: keep it once, by seq. (A replay after `resume` brings it in
 * its current state, which may already be edited or deleted.) */
function onMessage(message, rev) {
  const chat = ensureChat(message.chat_id);
  advanceRev(chat, rev);
  const stored = storeMessage(chat, message);
  if (message.seq > chat.lastSeq) chat.lastSeq = message.seq;
  if (message.seq > chat.countedSeq) {
    chat.countedSeq = message.seq;
    // A deleted message is not unread (the server does not count it either).
    if (!isMine(message) && !stored.deleted && message.seq > chat.myReadSeq) chat.unread += 1;
  }
  chat.activity = Math.max(chat.activity, Date.parse(message.timestamp));
  // Our own message, sent from here or another device: it is no longer pending.
  if (isMine(message) && message.dedup_key) settle(message.dedup_key, message);
  // Sending is reading: the server moved the sender's read marker to this message (no `read`
  // frame says so).
  memberRead(chat, message.sender_id, message.seq);
  stopTyping(chat, message.sender_id);
  renderChatList();
  if (chat.id === state.openChatId) {
    renderMessages();
    markShownAsRead();
  }
}

/** Adds a message to what can be shown (not to the resume cursors), unless we hold a newer
 * copy of it; answers the copy kept. */
function storeMessage(chat, message) {
  const known = chat.messages.get(message.seq) ?? chat.outside.get(message.id);
  const copy = known && isOlderCopy(message, known) ? { ...known } : { ...message };
  // A read mark may have overtaken the message (or an older copy already says read). Reading
  // does not change a message's rev, so either copy may be the one that knows.
  if (known?.read || message.read
      || (chat.kind === 'private' && isMine(copy) && copy.seq <= chat.otherReadSeq)) {
    copy.read = true;
  }
  chat.messages.set(copy.seq, copy);
  chat.seqById.set(copy.id, copy.seq);
  chat.outside.delete(copy.id);
  noteLastMessage(chat, copy);
  return copy;
}

/** The message with this id, if we know it (shown, or held for a quote). */
function findMessage(chat, id) {
  const seq = chat.seqById.get(id);
  return seq === undefined ? chat.outside.get(id) : chat.messages.get(seq);
}

/** A message changed (edited, deleted, reacted to): from a `message_updated` frame, or the
 * answer to our own change over HTTP. Shown messages change in place; a message not loaded is
 * kept aside for quotes, so that history stays contiguous. */
function updateMessage(chat, message) {
  if (chat.seqById.has(message.id)) {
    storeMessage(chat, message);
  } else {
    const known = chat.outside.get(message.id);
    if (!known || !isOlderCopy(message, known)) chat.outside.set(message.id, { ...message });
    noteLastMessage(chat, chat.outside.get(message.id));
  }
  // A menu or an edit of a message that is gone now has nothing left to act on.
  if (message.deleted) {
    if (state.menu?.id === message.id) state.menu = null;
    if (state.compose?.mode === 'edit' && state.compose.id === message.id) {
      endCompose();
      showError('chat-error', 'That message was deleted meanwhile.');
    }
  }
  renderChatList();
  if (chat.id === state.openChatId) renderMessages();
}

function onMessageUpdated({ chat_id: chatId, rev, change, message }) {
  const chat = state.chats.get(chatId);
  if (!chat || !message) return;
  // Only a change we have not applied yet may take a deleted message off the unread count: one
  // at or below our cursor (a duplicate, or counted in the chat summary) was taken off already.
  const fresh = !(rev <= chat.rev);
  advanceRev(chat, rev);
  if (fresh && change === 'deleted' && !isMine(message)
      && message.seq > chat.myReadSeq && message.seq <= chat.countedSeq) {
    chat.unread = Math.max(0, chat.unread - 1);
  }
  updateMessage(chat, message);
}

/** A member's read marker moved (ours, from another device, or someone else's). */
function onRead({ chat_id: chatId, user_id: userId, last_read_seq: seq }) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  memberRead(chat, userId, seq);
  renderChatList();
  if (chat.id === state.openChatId) renderMessages();
}

/** Member `userId` has read chat messages up to `seq`. */
function memberRead(chat, userId, seq) {
  if (userId === state.me.id) {
    if (seq > chat.myReadSeq) {
      chat.myReadSeq = seq;
      recountUnread(chat);
    }
    return;
  }
  if (chat.kind === 'private') {
    // The only other member has read up to `seq`: our messages up to it are read.
    chat.otherReadSeq = Math.max(chat.otherReadSeq, seq);
    for (const message of chat.messages.values()) {
      if (isMine(message) && message.seq <= seq) message.read = true;
    }
    if (chat.lastMessage && isMine(chat.lastMessage) && chat.lastMessage.seq <= seq) {
      chat.lastMessage = { ...chat.lastMessage, read: true };
    }
    return;
  }
  // In a group a message is read once *every* other member has read it; the server knows all
  // the markers, so ask it again about our messages up to `seq` that are not read yet.
  for (const message of chat.messages.values()) {
    if (isMine(message) && !message.read && message.seq <= seq) {
      refreshReadFlags(chat);
      return;
    }
  }
}

/** We joined (or created) a chat, or the relay tells us of one our `resume` did not list. The
 * summary is the chat now; the changes after `rev` follow, and those the summary already
 * counts change nothing when applied again (by seq, and by each message's rev). */
function onChatFrame(summary, rev) {
  const known = state.chats.get(summary.id);
  if (!known) {
    const chat = newChat(summary);
    advanceRev(chat, rev);
    state.chats.set(summary.id, chat);
  } else {
    applySummary(known, summary);
    // Known already (our chat list got there first). Changes up to `rev` will not be sent
    // again: the summary stands for them, and shown messages are fetched afresh.
    if (rev > known.rev) {
      advanceRev(known, rev);
      known.lastSeq = Math.max(known.lastSeq, summary.last_seq);
      if (known.id === state.openChatId) {
        loadLatest(known).catch((error) => console.warn('history:', error.message));
      }
    }
  }
  // The private chat we were drafting now exists.
  if (state.draftRecipient !== null && state.draftRecipient !== state.me.id
      && summary.kind === 'private' && summary.member_ids.includes(state.draftRecipient)) {
    openChatView(summary.id);
  }
  renderChatList();
  if (summary.id === state.openChatId) renderHeader();
}

/** We left or were removed: the chat goes from the list (and from the next `resume`). */
function onChatRemoved(chatId) {
  state.chats.delete(chatId);
  if (state.openChatId === chatId) closeChatView();
  renderChatList();
}

/** Someone else joined or left one of our chats, or a member (maybe us) became its owner. */
function onMember({ chat_id: chatId, user_id: userId, change, rev, name }) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  advanceRev(chat, rev);
  if (change === 'promoted') {
    // The owner left and handed the group on; only the new owner's role changes.
    if (userId === state.me?.id) chat.role = 'owner';
    // An owner may delete anyone's message: the actions under each message change.
    if (chatId === state.openChatId) renderMessages();
    return;
  }
  const others = chat.memberIds.filter((id) => id !== userId);
  chat.memberIds = change === 'joined' ? [...others, userId] : others;
  // A joiner comes with their name.
  if (change === 'joined' && name) chat.names?.set(userId, name);
  if (chatId === state.openChatId) renderHeader();
}

/** A member renamed themself: the name shows everywhere from now on. */
function onUserUpdated({ chat_id: chatId, user_id: userId, name }) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  chat.names.set(userId, name);
  if (chat.kind === 'private' && userId !== state.me?.id) chat.name = name;
  renderChatList();
  if (state.openChatId === chatId) {
    renderHeader();
    renderMessages();
  }
}

function onTyping({ chat_id: chatId, user_id: userId }) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  clearTimeout(chat.typing.get(userId));
  chat.typing.set(userId, setTimeout(() => stopTyping(chat, userId), TYPING_SHOW_MS));
  renderTyping(chat);
}

function stopTyping(chat, userId) {
  if (!chat.typing.has(userId)) return;
  clearTimeout(chat.typing.get(userId));
  chat.typing.delete(userId);
  renderTyping(chat);
}

/** The relay stored (or found) our message. */
function onAck({ dedup_key: key, message }) {
  // Shown at once; the `message` frame with the same seq follows and moves the cursors. (The
  // ack does not move them: an older change of someone else may still be on its way.)
  settle(key, message);
}

/** An error frame does not say which frame caused it. If sends are waiting, ask HTTP about them
 * right away: with the same dedup keys it answers each one exactly (stored, or why not). */
function onRelayError(frame) {
  console.warn('relay:', frame.code, frame.detail);
  for (const item of state.outbox.values()) if (!item.error) sendOverHttp(item);
}

// ---------------------------------------------------------------------------------------------
// Sending

/** Queues a message for the open chat (or the drafted private chat) and sends it; `replyTo` is
 * the id of the message it answers, or null; `files` are uploaded files (AttachmentOut-shaped,
 * at least `{id, filename, content_type, size}`) it carries. */
function send(text, replyTo = null, files = []) {
  const item = {
    key: newDedupKey(),
    chatId: state.openChatId,
    recipientId: state.openChatId === null ? state.draftRecipient : null,
    text,
    replyTo,
    /** Their ids go with every try (the dedup key stands for text and files together). */
    attachments: files.map((file) => file.id),
    /** What the pending message shows of them until the stored one replaces it. */
    files,
    error: null,
    timer: null,
    httpInFlight: false,
  };
  state.outbox.set(item.key, item);
  transmit(item);
  renderMessages({ toBottom: true });
}

/** Over the relay when connected, with a deadline for the ack; over HTTP otherwise. */
function transmit(item) {
  clearTimeout(item.timer);
  const frame = { type: 'send', text: item.text, dedup_key: item.key };
  if (item.replyTo !== null) frame.reply_to = item.replyTo;
  if (item.attachments.length) frame.attachments = item.attachments;
  if (item.chatId !== null) frame.chat_id = item.chatId;
  else frame.recipient_id = item.recipientId;
  if (relaySend(frame)) {
    item.timer = setTimeout(() => sendOverHttp(item), ACK_TIMEOUT_MS);
  } else {
    sendOverHttp(item);
  }
}

async function sendOverHttp(item) {
  clearTimeout(item.timer);
  if (!state.outbox.has(item.key) || item.httpInFlight) return;
  item.httpInFlight = true;
  const body = { text: item.text, dedup_key: item.key };
  if (item.replyTo !== null) body.reply_to = item.replyTo;
  if (item.attachments.length) body.attachments = item.attachments;
  if (item.chatId !== null) body.chat_id = item.chatId;
  else body.recipient_id = item.recipientId;
  try {
    // 201 new, 200 the same message again (an earlier try got through): both are success.
    const message = await api('POST', '/chat/message', body);
    settle(item.key, message);
  } catch (error) {
    if (error instanceof ApiError && error.status < 500) {
      item.error = error.message; // A 4xx will not get better by retrying: show it.
      if (isShown(item)) renderMessages();
    } else if (state.outbox.has(item.key)) {
      // The network or the server failed: try again (same key) in a while, or at `ready`.
      item.timer = setTimeout(() => transmit(item), 5000);
    }
  } finally {
    item.httpInFlight = false;
  }
}

/** A send is confirmed (ack, HTTP answer, or our own message coming back): show the stored
 * message instead of the pending one; a drafted private chat becomes a real one. */
function settle(key, message) {
  const item = state.outbox.get(key);
  if (!item) return;
  clearTimeout(item.timer);
  state.outbox.delete(key);
  storeMessage(ensureChat(message.chat_id), message);
  if (item.chatId === null && state.openChatId === null
      && state.draftRecipient === item.recipientId) {
    openChatView(message.chat_id);
    return;
  }
  if (message.chat_id === state.openChatId) renderMessages();
  renderChatList();
}

/** Whether a pending send belongs to what is on screen. */
function isShown(item) {
  if (item.chatId !== null) return item.chatId === state.openChatId;
  if (state.openChatId === null) return item.recipientId === state.draftRecipient;
  const chat = openChat();
  return chat?.kind === 'private' && chat.memberIds.includes(item.recipientId);
}

// ---------------------------------------------------------------------------------------------
// Changing messages: edits, deletions, reactions

/** A change of a message over HTTP. Its answer is the message as it is now and shows at once;
 * the `message_updated` frame that follows brings it to our other devices and moves the resume
 * cursor. Answers whether it worked; a failure shows above the composer. */
async function changeMessage(chat, method, path, body) {
  showError('chat-error', null);
  try {
    updateMessage(chat, await api(method, path, body));
    return true;
  } catch (error) {
    // (A 409 `deleted` means its `message_updated` frame is on the way: it brings the tombstone.)
    showError('chat-error', changeErrorText(error));
    return false;
  }
}

function changeErrorText(error) {
  switch (error.code) {
    case 'deleted': return 'That message was deleted.';
    case 'not_sender': return 'Only the sender can change that message.';
    case 'too_many_reactions': return 'That message has all the different reactions it can take.';
    default: return error.message;
  }
}

function editMessage(chat, id, text) {
  return changeMessage(chat, 'PATCH', `/chat/message/${id}`, { text });
}

function deleteMessage(chat, id) {
  return changeMessage(chat, 'DELETE', `/chat/message/${id}`);
}

/** Our reaction with `emoji` on, or off again if it is on. Both calls are idempotent, so a
 * double click or a stale screen cannot make a count wrong. */
function toggleReaction(chat, id, emoji) {
  const message = findMessage(chat, id);
  if (!message || message.deleted) return Promise.resolve(false);
  return changeMessage(chat, hasReacted(message, emoji) ? 'DELETE' : 'PUT',
    `/chat/message/${id}/reactions/${encodeURIComponent(emoji)}`);
}

const hasReacted = (message, emoji) => (message.reactions ?? [])
  .some((r) => r.emoji === emoji && r.user_ids.includes(state.me.id));

// ---------------------------------------------------------------------------------------------
// Reading: history, read marks, unread counts

/** The chat list from the API: adds chats we did not know, refreshes the others. */
let refreshing = null;
function refreshChats() {
  refreshing ??= (async () => {
    try {
      const list = await api('GET', '/chat/list?limit=200');
      for (const summary of list) {
        const known = state.chats.get(summary.id);
        if (known) applySummary(known, summary);
        else state.chats.set(summary.id, newChat(summary));
      }
      renderChatList();
      if (state.openChatId !== null) renderHeader();
    } catch (error) {
      console.warn('chat list:', error.message);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** The newest page of a chat: `before_seq = last seq + 1` ends it at the newest we know of.
 * (Without a cursor, history pages from the oldest message, as the original API did.) */
async function loadLatest(chat) {
  let newest = Math.max(chat.lastSeq, chat.countedSeq);
  for (const seq of chat.messages.keys()) newest = Math.max(newest, seq);
  const page = await api('GET',
    `/chat/history/${chat.id}?before_seq=${newest + 1}&limit=${PAGE_SIZE}`);
  for (const message of page) storeMessage(chat, message);
  if (chat.id === state.openChatId) {
    renderMessages({ toBottom: true });
    markShownAsRead();
  }
}

/** The page (of `limit` messages) before the oldest message we have (scrolling back). One page
 * at a time: a call while one is loading answers the same promise. */
function loadOlder(chat, limit = PAGE_SIZE) {
  if (oldestSeq(chat) <= 1) return Promise.resolve();
  chat.loadingOlder ??= (async () => {
    try {
      const page = await api('GET',
        `/chat/history/${chat.id}?before_seq=${oldestSeq(chat)}&limit=${limit}`);
      for (const message of page) storeMessage(chat, message);
      if (chat.id === state.openChatId) renderMessages({ keepBottomDistance: true });
    } catch (error) {
      console.warn('history:', error.message);
    } finally {
      chat.loadingOlder = null;
    }
  })();
  return chat.loadingOlder;
}

/** Scrolls to a message (a reply's quote or a search hit was clicked), paging back until it
 * is loaded. When its seq is known (`knownSeq`: a search hit), the pages are as large as it takes to get
 * there (and a few messages before it), up to the largest history gives; either way what is
 * loaded stays contiguous. */
async function revealMessage(chat, id, knownSeq = null) {
  while (!chat.seqById.has(id) && oldestSeq(chat) > 1) {
    const before = oldestSeq(chat);
    const limit = knownSeq === null ? PAGE_SIZE
      : Math.min(MAX_HISTORY_PAGE, Math.max(PAGE_SIZE, before - knownSeq + REVEAL_CONTEXT));
    await loadOlder(chat, limit);
    if (oldestSeq(chat) === before) return; // The page failed (logged): leave it to a retry.
  }
  const seq = chat.seqById.get(id);
  if (chat.id !== state.openChatId || seq === undefined) return;
  const row = document.querySelector(`#message-list .msg[data-seq="${seq}"]`);
  if (!row) return;
  row.scrollIntoView({ block: 'center' });
  row.classList.add('flash');
}

function oldestSeq(chat) {
  let oldest = Math.max(chat.lastSeq, chat.countedSeq) + 1;
  for (const seq of chat.messages.keys()) if (seq < oldest) oldest = seq;
  return oldest;
}

/** Marks the newest message on screen as read, when someone else wrote something we have not
 * read and the user can see it (the tab is visible and the list is scrolled to the bottom). */
function markShownAsRead() {
  const chat = openChat();
  if (!chat || chat.marking || document.visibilityState !== 'visible' || !nearBottom()) return;
  // The newest message that is not deleted: tombstones after it stay after our marker, but
  // they are not unread (here or on the server).
  let newest = null;
  let unseen = false;
  for (const message of chat.messages.values()) {
    if (message.deleted) continue;
    if (!newest || message.seq > newest.seq) newest = message;
    if (message.seq > chat.myReadSeq && !isMine(message)) unseen = true;
  }
  if (!newest || !unseen) return;
  chat.marking = true;
  api('PATCH', `/chat/message/${newest.id}/read`)
    .then(() => {
      chat.myReadSeq = Math.max(chat.myReadSeq, newest.seq);
      recountUnread(chat);
      renderChatList();
      chat.marking = false;
      markShownAsRead(); // More may have come in meanwhile.
    })
    .catch((error) => {
      chat.marking = false;
      console.warn('read mark:', error.message);
    });
}

/** Unread = messages of others after our marker, deleted ones aside. Exact when we hold them
 * all; otherwise the server counts. */
function recountUnread(chat) {
  let count = 0;
  for (let seq = chat.myReadSeq + 1; seq <= chat.countedSeq; seq += 1) {
    const message = chat.messages.get(seq);
    if (!message) {
      refreshChats();
      return;
    }
    if (!isMine(message) && !message.deleted) count += 1;
  }
  chat.unread = count;
}

/** Re-reads the `read` flags of our unread messages in a group (debounced per chat). */
function refreshReadFlags(chat) {
  clearTimeout(chat.readFlagsTimer);
  chat.readFlagsTimer = setTimeout(async () => {
    let from = Infinity;
    for (const m of chat.messages.values()) if (isMine(m) && !m.read && m.seq < from) from = m.seq;
    if (from === Infinity) return;
    try {
      const page = await api('GET', `/chat/history/${chat.id}?after_seq=${from - 1}&limit=200`);
      for (const message of page) {
        const known = chat.messages.get(message.seq);
        if (known && message.read) known.read = true;
      }
      if (chat.lastMessage) {
        const newer = chat.messages.get(chat.lastMessage.seq);
        if (newer) chat.lastMessage = newer;
      }
      renderChatList();
      if (chat.id === state.openChatId) renderMessages();
    } catch (error) {
      console.warn('read flags:', error.message);
    }
  }, 250);
}

// ---------------------------------------------------------------------------------------------
// Rendering

const $ = (id) => document.getElementById(id);

/** Creates an element; text goes in as text, never as HTML. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'title'
        || key === 'role') {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function chatTitle(chat) {
  if (chat.name) return chat.name;
  const other = chat.memberIds.find((id) => id !== state.me.id);
  return other ? `User #${other}` : `Chat ${chat.id}`;
}

function senderName(chat, userId) {
  if (userId === state.me.id) return 'You';
  // The chat list carries each member's name; a member who joined since shows as #id.
  return chat.names?.get(userId) ?? `#${userId}`;
}

function shortTime(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString([], { day: 'numeric', month: 'short' });
}

function setConnection(status) {
  const dot = $('conn');
  dot.dataset.state = status;
  dot.title = status;
  dot.setAttribute('aria-label', `connection: ${status}`);
}

function renderChatList() {
  if (!state.me) return;
  const chats = [...state.chats.values()].sort((a, b) => b.activity - a.activity);
  const items = chats.map((chat) => {
    const last = chat.lastMessage;
    const typing = chat.typing.size > 0;
    let preview = 'No messages yet';
    if (typing) preview = 'typing…';
    else if (last?.deleted) preview = 'message deleted';
    else if (last) preview = `${isMine(last) ? (last.read ? '✓✓ ' : '✓ ') : ''}${gist(last)}`;
    const title = chatTitle(chat);
    return el('li', {},
      el('button', {
        type: 'button',
        class: `chat-item${typing ? ' is-typing' : ''}`,
        'data-chat-id': chat.id,
        'aria-current': chat.id === state.openChatId ? 'true' : null,
        onclick: () => openChatView(chat.id),
      },
      el('span', { class: `avatar ${chat.kind}`, text: title.charAt(0).toUpperCase(), 'aria-hidden': 'true' }),
      el('span', { class: 'chat-body' },
        el('span', { class: 'row' },
          el('span', { class: 'chat-name', text: title }),
          last ? el('time', { class: 'small muted', text: shortTime(last.timestamp) }) : null),
        el('span', { class: 'row' },
          el('span', { class: 'preview small', text: preview }),
          chat.unread > 0
            ? el('span', { class: 'badge', text: String(chat.unread), 'aria-label': `${chat.unread} unread` })
            : null))));
  });
  $('chat-list').replaceChildren(...items);
  $('no-chats').hidden = chats.length > 0;
  const unread = chats.reduce((sum, chat) => sum + chat.unread, 0);
  document.title = unread > 0 ? `(${unread}) windi` : 'windi';
}

function renderHeader() {
  const chat = openChat();
  if (chat) {
    $('chat-title').textContent = chatTitle(chat);
    $('chat-subtitle').textContent = chat.kind === 'group'
      ? `Group · ${chat.memberIds.map((id) => (id === state.me.id ? 'you' : senderName(chat, id))).join(', ')}`
      : `Private chat${chat.memberIds.length ? ` with #${chat.memberIds.find((id) => id !== state.me.id) ?? state.me.id}` : ''}`;
  } else if (state.draftRecipient !== null) {
    $('chat-title').textContent = `User #${state.draftRecipient}`;
    $('chat-subtitle').textContent = 'New private chat: your first message starts it';
  }
}

function renderTyping(chat) {
  renderChatList();
  if (chat.id !== state.openChatId) return;
  const names = [...chat.typing.keys()].map((id) => senderName(chat, id));
  $('typing').textContent = names.length === 0 ? ''
    : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
}

function nearBottom() {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
}

/** Redraws the open chat's messages, keeping the scroll position sensible: stuck to the bottom
 * if it was there, the same place otherwise (also when older messages are added above). */
function renderMessages({ toBottom = false, keepBottomDistance = false } = {}) {
  const chat = openChat();
  if (!chat && state.draftRecipient === null) return;
  const box = $('messages');
  const stick = toBottom || nearBottom();
  const fromBottom = box.scrollHeight - box.scrollTop;
  const scrollTop = box.scrollTop;

  const rows = [];
  let day = null;
  if (chat) {
    const messages = [...chat.messages.values()].sort((a, b) => a.seq - b.seq);
    for (const message of messages) {
      const thisDay = new Date(message.timestamp).toDateString();
      if (thisDay !== day) {
        day = thisDay;
        rows.push(el('li', { class: 'day small muted', text: new Date(message.timestamp)
          .toLocaleDateString([], { weekday: 'short', day: 'numeric', month: 'short' }) }));
      }
      rows.push(messageRow(chat, message));
    }
    $('load-older').hidden = oldestSeq(chat) <= 1;
  } else {
    $('load-older').hidden = true;
  }
  for (const item of state.outbox.values()) if (isShown(item)) rows.push(pendingRow(item));
  $('message-list').replaceChildren(...rows);
  observeThumbnails();
  renderComposeContext(); // The message replied to or edited may have changed too.

  if (stick) box.scrollTop = box.scrollHeight;
  else if (keepBottomDistance) box.scrollTop = box.scrollHeight - fromBottom;
  else box.scrollTop = scrollTop;
}

const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

/** One message: a reply's quote, the text (or the tombstone of a deleted one), its reactions,
 * and a menu (⋯) to react, reply, edit or delete. */
function messageRow(chat, message) {
  const mine = isMine(message);
  const status = message.read ? 'read' : 'sent';
  const menuOpen = state.menu?.id === message.id;
  const classes = ['msg', mine ? 'own' : 'theirs'];
  if (message.deleted) classes.push('deleted');
  if (menuOpen) classes.push('menu-open');
  // Files and no text: the bubble is the files, with no empty line of text under them.
  const hasText = message.deleted || message.text !== '' || !filesOf(message).length;
  if (!hasText) classes.push('files-only');
  if (state.found?.chatId === chat.id && state.found.id === message.id) classes.push('found');
  return el('li', { class: classes.join(' '), 'data-seq': message.seq, 'data-id': message.id },
    !mine && chat.kind === 'group' ? el('div', { class: 'sender small', text: senderName(chat, message.sender_id) }) : null,
    message.reply_to != null && !message.deleted ? quoteBlock(chat, message.reply_to) : null,
    message.deleted ? null : attachmentsBlock(filesOf(message)),
    message.deleted
      ? el('div', { class: 'text tombstone', text: 'message deleted' })
      : hasText ? el('div', { class: 'text', text: message.text }) : null,
    message.deleted ? null : reactionsRow(chat, message),
    el('div', { class: 'meta small' },
      message.deleted ? null : el('button', {
        type: 'button', class: 'msg-menu', text: '⋯', title: 'React, reply, edit, delete',
        'aria-label': 'Message actions', 'aria-expanded': String(menuOpen),
        onclick: () => toggleMenu(chat, message.id),
      }),
      message.edited_at && !message.deleted
        ? el('span', { class: 'edited', text: 'edited', title: `edited ${clock(message.edited_at)}` })
        : null,
      el('time', { dateTime: message.timestamp, text: clock(message.timestamp) }),
      mine && !message.deleted ? el('span', {
        class: 'status', 'data-status': status, title: status,
        'aria-label': status, text: message.read ? '✓✓' : '✓',
      }) : null),
    menuOpen && !message.deleted ? actionBar(chat, message) : null);
}

/** What a reply quotes: who wrote it and how it starts. A message older than anything loaded
 * shows as "message #id" until it is; clicking the quote pages back to it. */
function quoteBlock(chat, id) {
  const quoted = findMessage(chat, id);
  return el('button', {
    type: 'button', class: `quote${quoted ? '' : ' unknown'}`, 'data-reply-to': id,
    title: 'Show the message', onclick: () => revealMessage(chat, id),
  },
  quoted ? el('span', { class: 'quote-sender', text: senderName(chat, quoted.sender_id) }) : null,
  el('span', { class: 'quote-text', text: quoted ? excerpt(quoted) : `message #${id}` }));
}

/** The start of a message's text on one line, for quotes. */
function excerpt(message) {
  if (message.deleted) return 'message deleted';
  // By code points, so that an emoji is never cut in half.
  const chars = Array.from(gist(message).replace(/\s+/g, ' ').trim());
  return chars.length > QUOTE_CHARS ? `${chars.slice(0, QUOTE_CHARS - 1).join('')}…` : chars.join('');
}

/** A message's files; a message cached before files existed has no such field. */
const filesOf = (message) => message.attachments ?? [];

/** What a message says in one line (chat list, quotes): its text, marked 📎 when it carries
 * files; with no text, what the files are ("📎 photo.png", "📎 3 files"). */
function gist(message) {
  const files = filesOf(message);
  if (!files.length) return message.text;
  if (message.text.trim()) return `📎 ${message.text}`;
  return files.length === 1 ? `📎 ${files[0].filename}` : `📎 ${files.length} files`;
}

/** The reactions under a message: each emoji with its count; ours are highlighted, and
 * clicking one toggles our own. */
function reactionsRow(chat, message) {
  const reactions = message.reactions ?? [];
  if (reactions.length === 0) return null;
  return el('div', { class: 'reactions' }, ...reactions.map((r) => {
    const mine = r.user_ids.includes(state.me.id);
    return el('button', {
      type: 'button', class: `reaction${mine ? ' mine' : ''}`, 'data-emoji': r.emoji,
      'aria-pressed': String(mine), title: r.user_ids.map((id) => senderName(chat, id)).join(', '),
      onclick: () => toggleReaction(chat, message.id, r.emoji),
    },
    el('span', { class: 'emoji', text: r.emoji }),
    el('span', { class: 'count', text: String(r.count) }));
  }));
}

/** The open menu of a message: quick reactions, reply, and for what we may change, edit and
 * delete (delete asks once more, in place). */
function actionBar(chat, message) {
  const mine = isMine(message);
  // The sender may delete; in a group, the owner may delete anyone's.
  const mayDelete = mine || (chat.kind === 'group' && chat.role === 'owner');
  const confirming = state.menu.confirmDelete;
  const action = (name, text, onclick, extra = '') => el('button', {
    type: 'button', class: `link small${extra}`, 'data-action': name, text, onclick,
  });
  return el('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': 'Message actions' },
    ...QUICK_EMOJI.map((emoji) => el('button', {
      type: 'button', class: `quick-emoji${hasReacted(message, emoji) ? ' mine' : ''}`,
      'data-emoji': emoji, 'aria-label': `React with ${emoji}`,
      'aria-pressed': String(hasReacted(message, emoji)), text: emoji,
      onclick: () => { closeMenu(); toggleReaction(chat, message.id, emoji); },
    })),
    action('reply', 'Reply', () => startCompose('reply', chat, message)),
    mine ? action('edit', 'Edit', () => startCompose('edit', chat, message)) : null,
    !mayDelete ? null : confirming
      ? action('confirm-delete', 'Delete for everyone?', () => { closeMenu(); deleteMessage(chat, message.id); }, ' danger')
      : action('delete', 'Delete', () => { state.menu.confirmDelete = true; renderMessages(); }));
}

/** What the composer is about to do besides a plain send: reply to or edit a message. */
function renderComposeContext() {
  const compose = state.compose;
  const chat = compose && state.chats.get(compose.chatId);
  const shown = Boolean(chat) && compose.chatId === state.openChatId;
  $('composer-context').hidden = !shown;
  $('send').textContent = shown && compose.mode === 'edit' ? 'Save' : 'Send';
  renderSendButton();
  if (!shown) return;
  const message = findMessage(chat, compose.id);
  let label = 'Edit message';
  if (compose.mode === 'reply') {
    if (!message) label = `Reply to message #${compose.id}`;
    else label = isMine(message) ? 'Reply to your message' : `Reply to ${senderName(chat, message.sender_id)}`;
  }
  $('context-label').textContent = label;
  $('context-text').textContent = message ? excerpt(message) : '';
}

function pendingRow(item) {
  const status = item.error ? 'failed' : 'sending';
  const chat = state.chats.get(item.chatId);
  const filesOnly = item.text === '' && item.files.length > 0;
  return el('li', { class: `msg own pending${item.error ? ' failed' : ''}${filesOnly ? ' files-only' : ''}`, 'data-key': item.key },
    chat && item.replyTo !== null ? quoteBlock(chat, item.replyTo) : null,
    attachmentsBlock(item.files, { pending: true }),
    filesOnly ? null : el('div', { class: 'text', text: item.text }),
    el('div', { class: 'meta small' },
      item.error
        ? el('span', { class: 'status', 'data-status': status, text: `Not sent: ${item.error}` })
        : el('span', { class: 'status', 'data-status': status, title: 'sending', text: '…' }),
      item.error ? el('button', {
        type: 'button', class: 'link small', text: 'Dismiss',
        onclick: () => { state.outbox.delete(item.key); renderMessages(); },
      }) : null));
}

// ---------------------------------------------------------------------------------------------
// Files: uploads from the composer, and the files of messages

let nextUploadKey = 0;

/** Takes files chosen with 📎 or dropped on the conversation: each becomes a chip above the
 * composer and starts uploading at once. The server's limits are checked here first, so a file
 * it would refuse is never announced. */
function addFiles(fileList) {
  const files = Array.from(fileList ?? []);
  if (!files.length) return;
  const problems = [];
  // A failed chip is never sent, so it takes no place.
  let room = MAX_FILES - state.uploads.filter((upload) => upload.status !== 'failed').length;
  let leftOut = 0;
  for (const file of files) {
    if (file.size > MAX_FILE_BYTES) {
      problems.push(`${file.name} is larger than ${humanSize(MAX_FILE_BYTES)}.`);
    } else if (file.size === 0) {
      problems.push(`${file.name} is empty.`);
    } else if (room <= 0) {
      leftOut += 1;
    } else {
      room -= 1;
      const upload = newUpload(file);
      state.uploads.push(upload);
      startUpload(upload);
    }
  }
  if (leftOut) {
    problems.push(`A message takes at most ${MAX_FILES} files: ${leftOut} left out.`);
  }
  showError('chat-error', problems.length ? problems.join(' ') : null);
  renderUploads();
}

function newUpload(file) {
  const type = file.type || 'application/octet-stream';
  return {
    key: ++nextUploadKey,
    file,
    type,
    /** A blob: URL of the local image for its chip (and then its thumbnail: see sentFile). */
    preview: PREVIEW_TYPES.has(type) ? URL.createObjectURL(file) : null,
    /** 'uploading', then 'done' or 'failed' (`error` says why). */
    status: 'uploading',
    error: null,
    /** Bytes sent so far. */
    loaded: 0,
    /** The server's id for it, from the announcement. */
    id: null,
    /** The file as a message will show it: the folder's upload link answers it, S3's does not. */
    out: null,
    xhr: null,
  };
}

/** Announces an upload, then PUTs its bytes. A chip removed meanwhile is forgotten: the server
 * prunes an upload that is never sent. */
async function startUpload(upload) {
  try {
    const ticket = await api('POST', '/chat/attachments', {
      filename: upload.file.name, content_type: upload.type, size: upload.file.size,
    });
    if (!state.uploads.includes(upload)) return;
    upload.id = ticket.id;
    upload.out = await putFile(upload, ticket.upload);
    upload.status = 'done';
  } catch (error) {
    if (!state.uploads.includes(upload)) return;
    upload.status = 'failed';
    upload.error = error.name === 'TimeoutError' ? 'The server took too long to answer.'
      : error.message;
  } finally {
    upload.xhr = null;
  }
  renderUploads();
}

/** PUTs the bytes to the upload link with exactly its headers and no token (the link is the
 * permission). Any 2xx is success; answers the file as the folder's link describes it, or null
 * (S3 answers nothing). XMLHttpRequest rather than fetch, for the upload's progress. */
function putFile(upload, link) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    upload.xhr = xhr;
    xhr.open(link.method ?? 'PUT', link.url);
    for (const [name, value] of Object.entries(link.headers ?? {})) xhr.setRequestHeader(name, value);
    xhr.timeout = UPLOAD_TIMEOUT_MS;
    xhr.upload.onprogress = (event) => {
      upload.loaded = event.loaded;
      renderProgress(upload);
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = null; // S3 answers nothing on success, XML on failure.
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data?.id === upload.id ? data : null);
      } else {
        reject(new ApiError(xhr.status, data?.detail ?? (xhr.statusText || `HTTP ${xhr.status}`),
          data?.code));
      }
    };
    xhr.onerror = () => reject(new Error('The upload failed: the connection was lost.'));
    xhr.ontimeout = () => reject(new Error('The upload took too long.'));
    xhr.onabort = () => reject(new DOMException('The upload was cancelled.', 'AbortError'));
    xhr.send(upload.file);
  });
}

/** A chip's × : the file is left out of the message (an upload on its way stops). */
function removeUpload(upload) {
  state.uploads = state.uploads.filter((u) => u !== upload);
  dropUpload(upload);
  showError('chat-error', null);
  renderUploads();
}

/** Every chip goes (sent, or signed out). */
function clearUploads() {
  const uploads = state.uploads;
  state.uploads = [];
  for (const upload of uploads) dropUpload(upload);
  renderUploads();
}

function dropUpload(upload) {
  upload.xhr?.abort();
  if (upload.preview) URL.revokeObjectURL(upload.preview);
  upload.preview = null;
}

/** A finished upload as its message will carry it, for the message pending until the server
 * has it. An image's local preview becomes its thumbnail, so the sender's own message shows it
 * without fetching it back (and the chip no longer owns it). */
function sentFile(upload) {
  const file = upload.out ?? {
    id: upload.id, filename: upload.file.name, content_type: upload.type, size: upload.file.size,
  };
  if (!upload.preview) return file;
  cacheThumbnail(upload.id, upload.preview);
  upload.preview = null;
  // Behind S3 the size of the image is not known before it is sent: a default box meanwhile.
  return file.thumbnail ? file : { ...file, thumbnail: `/chat/attachments/${upload.id}/thumbnail` };
}

function renderUploads() {
  $('uploads').replaceChildren(...state.uploads.map(uploadChip));
  $('uploads').hidden = state.uploads.length === 0;
  renderSendButton();
}

/** One chosen file: a preview (images) or an icon, its name, its size and progress, or why it
 * failed, and × to remove it. */
function uploadChip(upload) {
  const name = upload.file.name;
  const { status } = upload;
  return el('li', { class: `chip ${status}`, 'data-upload': upload.key, 'data-status': status },
    upload.preview
      ? el('img', {
        class: 'chip-preview', src: upload.preview, alt: '',
        // Not a picture after all (its type said so): its badge instead, and no thumbnail.
        onerror: () => {
          if (!upload.preview) return;
          URL.revokeObjectURL(upload.preview);
          upload.preview = null;
          renderUploads();
        },
      })
      : el('span', { class: 'file-icon', text: fileBadge(name), 'aria-hidden': 'true' }),
    el('span', { class: 'chip-body' },
      el('span', { class: 'chip-name', text: name, title: name }),
      status === 'failed'
        ? el('span', { class: 'chip-error small', text: upload.error })
        : el('span', { class: 'chip-size small', text: `${status === 'done' ? '✓ ' : ''}${humanSize(upload.file.size)}` }),
      // Indeterminate (no value) until the bytes start going.
      status === 'uploading' ? el('progress', {
        class: 'chip-progress', max: upload.file.size, value: upload.loaded || null,
        'aria-label': `Uploading ${name}`,
      }) : null),
    el('button', {
      type: 'button', class: 'chip-remove link', text: '×', title: 'Remove',
      'aria-label': `Remove ${name}`, onclick: () => removeUpload(upload),
    }));
}

/** Moves a chip's progress bar without redrawing the chips (progress events come often). */
function renderProgress(upload) {
  const bar = $('uploads').querySelector(`[data-upload="${upload.key}"] progress`);
  if (bar) bar.value = upload.loaded;
}

/** Send waits for an edit being saved, and for the uploads (an edit does not take files). */
function renderSendButton() {
  const editing = state.compose?.mode === 'edit' && state.compose.chatId === state.openChatId;
  const waiting = !editing && state.uploads.some((upload) => upload.status === 'uploading');
  $('send').disabled = state.saving || waiting;
  $('send').title = waiting ? 'Waiting for the files to upload' : '';
}

function humanSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1).replace(/\.0$/, '') : Math.round(value)} ${units[unit]}`;
}

/** What a file icon says: its extension ("PDF", "TXT"), or FILE. Text, not an emoji, so it
 * shows whatever fonts the system has. */
function fileBadge(filename) {
  const dot = filename.lastIndexOf('.');
  const extension = dot > 0 ? filename.slice(dot + 1) : '';
  return /^[a-z0-9]{1,4}$/i.test(extension) ? extension.toUpperCase() : 'FILE';
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** A line icon on a 24 px grid, drawn in the text's colour (style.css `.icon`), built as
 * elements from its path data. */
function icon(...paths) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  for (const d of paths) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

const DOWNLOAD_ICON = ['M12 4v11', 'M7 10l5 5 5-5', 'M5 20h14'];

/** Whether a drag carries files (not text or a link dragged about the page). */
const carriesFiles = (event) => Array.from(event.dataTransfer?.types ?? []).includes('Files');

/** Files dragged onto the open conversation are dropped there (it lights up meanwhile).
 * Anywhere else a dropped file does nothing, rather than the browser leaving the app for it. */
function watchDrops() {
  const zone = $('chat-view');
  // dragenter and dragleave fire for every child crossed: the zone is left when they even out.
  let depth = 0;
  const done = () => {
    depth = 0;
    zone.classList.remove('dragging');
  };
  zone.addEventListener('dragenter', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    zone.classList.add('dragging');
  });
  zone.addEventListener('dragover', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  zone.addEventListener('dragleave', (event) => {
    if (!carriesFiles(event)) return;
    depth -= 1;
    if (depth <= 0) done();
  });
  zone.addEventListener('drop', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    done();
    addFiles(event.dataTransfer.files);
    $('composer-text').focus({ preventScroll: true });
  });
  window.addEventListener('dragover', (event) => {
    if (!carriesFiles(event) || zone.contains(event.target)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'none';
  });
  window.addEventListener('drop', (event) => { if (carriesFiles(event)) event.preventDefault(); });
  // A drag that ends elsewhere (Esc, or dropped outside the window) leaves no highlight behind.
  window.addEventListener('dragend', done);
}

/** The files of a message: images as their thumbnails, anything else as a row to download
 * (not yet while the message is `pending`: nobody can have it before it is sent anyway). */
function attachmentsBlock(files, { pending = false } = {}) {
  if (!files.length) return null;
  return el('div', { class: 'attachments' }, ...files.map((file) => (file.thumbnail
    ? imageAttachment(file) : fileAttachment(file, pending))));
}

/** An image: its thumbnail in a box of its own proportions, sized before it loads so nothing
 * jumps; a click shows it whole. */
function imageAttachment(file) {
  const [width, height] = thumbBox(file);
  const img = el('img', {
    class: `thumb${file.width > 0 ? '' : ' unsized'}`, alt: file.filename,
    src: cachedThumbnail(file.id), 'data-attachment-id': file.id, 'data-thumbnail': file.thumbnail,
  });
  img.style.width = `${width}px`;
  img.style.height = `${height}px`;
  // No `src` yet: observeThumbnails() loads it once it is (nearly) on screen.
  return el('button', {
    type: 'button', class: 'attachment-image', title: file.filename,
    'aria-label': `Open ${file.filename}`, 'data-attachment-id': file.id,
    onclick: () => openLightbox(file),
  }, img);
}

/** An image's box: its own size, scaled down into THUMB_MAX_WIDTH × THUMB_MAX_HEIGHT. */
function thumbBox({ width, height }) {
  if (!(width > 0 && height > 0)) return [THUMB_MAX_WIDTH, Math.round(THUMB_MAX_WIDTH * 0.75)];
  const scale = Math.min(1, THUMB_MAX_WIDTH / width, THUMB_MAX_HEIGHT / height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

/** Any other file: an icon, its name and size, and a download button. */
function fileAttachment(file, pending) {
  return el('div', { class: 'attachment-file', 'data-attachment-id': file.id },
    el('span', { class: 'file-icon', text: fileBadge(file.filename), 'aria-hidden': 'true' }),
    el('span', { class: 'file-info' },
      el('span', { class: 'file-name', text: file.filename, title: file.filename }),
      el('span', { class: 'file-size small', text: humanSize(file.size) })),
    pending ? null : el('button', {
      type: 'button', class: 'file-download', title: `Download ${file.filename}`,
      'aria-label': `Download ${file.filename}`,
      onclick: (event) => downloadAttachment(file, event.currentTarget),
    }, icon(...DOWNLOAD_ICON)));
}

/** Thumbnails, fetched with the token and shown from blob: URLs. */
const thumbs = {
  /** Attachment id → blob: URL, least recently shown first (a Map keeps insertion order). */
  urls: new Map(),
  /** Attachment id → the fetch on its way. */
  loading: new Map(),
  /** Attachment id → when its fetch last failed. */
  failedAt: new Map(),
  /** Bumped on signing out: a fetch from before then is dropped. */
  generation: 0,
  observer: null,
};

function cachedThumbnail(id) {
  const url = thumbs.urls.get(id);
  if (url) {
    thumbs.urls.delete(id);
    thumbs.urls.set(id, url);
  }
  return url;
}

/** Keeps a thumbnail's URL; past THUMB_CACHE_SIZE the least recently shown is revoked (an
 * image showing it keeps its picture; the next redraw fetches it again). */
function cacheThumbnail(id, url) {
  const old = thumbs.urls.get(id);
  if (old && old !== url) URL.revokeObjectURL(old);
  thumbs.urls.delete(id);
  thumbs.urls.set(id, url);
  for (const [oldId, oldUrl] of thumbs.urls) {
    if (thumbs.urls.size <= THUMB_CACHE_SIZE) break;
    thumbs.urls.delete(oldId);
    URL.revokeObjectURL(oldUrl);
  }
}

/** Watches the thumbnails not loaded yet, to load each one as it nears the screen. Every
 * redraw makes new rows, so the watch starts over with them. */
function observeThumbnails() {
  thumbs.observer ??= new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      thumbs.observer.unobserve(entry.target);
      loadThumbnail(Number(entry.target.dataset.attachmentId), entry.target.dataset.thumbnail);
    }
  }, { root: $('messages'), rootMargin: '400px 0px' });
  thumbs.observer.disconnect();
  for (const img of $('message-list').querySelectorAll('img.thumb:not([src])')) {
    thumbs.observer.observe(img);
  }
}

/** Fetches a thumbnail once (however many images show it) and puts it in every image of it on
 * screen then: the one it was asked for may have been redrawn meanwhile. */
function loadThumbnail(id, path) {
  if (thumbs.loading.has(id) || !path) return;
  if (Date.now() - (thumbs.failedAt.get(id) ?? -Infinity) < THUMB_RETRY_MS) return;
  const { generation } = thumbs;
  const loading = fetchFile(path)
    .then((blob) => {
      if (generation !== thumbs.generation) return;
      const url = URL.createObjectURL(blob);
      cacheThumbnail(id, url);
      for (const img of thumbnailsOf(id)) {
        img.src = url;
        img.classList.remove('broken');
      }
    })
    .catch((error) => {
      if (generation !== thumbs.generation) return;
      thumbs.failedAt.set(id, Date.now());
      console.warn('thumbnail:', error.message);
      for (const img of thumbnailsOf(id)) img.classList.add('broken');
    })
    .finally(() => {
      if (thumbs.loading.get(id) === loading) thumbs.loading.delete(id);
    });
  thumbs.loading.set(id, loading);
}

const thumbnailsOf = (id) => document.querySelectorAll(`img.thumb[data-attachment-id="${id}"]`);

function forgetThumbnails() {
  thumbs.generation += 1;
  for (const url of thumbs.urls.values()) URL.revokeObjectURL(url);
  thumbs.urls.clear();
  thumbs.loading.clear();
  thumbs.failedAt.clear();
  thumbs.observer?.disconnect();
}

/** The image shown whole (a <dialog>): `file`, and the blob: URL of its bytes, revoked when it
 * closes (full images are not cached: they may be large). */
const lightbox = { file: null, url: null, opened: 0 };

async function openLightbox(file) {
  const dialog = $('lightbox');
  const opened = ++lightbox.opened;
  releaseLightbox();
  lightbox.file = file;
  const image = $('lightbox-image');
  image.alt = file.filename;
  // The thumbnail stands in while the whole image loads.
  const thumb = cachedThumbnail(file.id);
  if (thumb) image.src = thumb;
  else image.removeAttribute('src');
  $('lightbox-name').textContent = file.filename;
  $('lightbox-status').textContent = 'Loading…';
  if (!dialog.open) dialog.showModal();
  try {
    const blob = await fetchFile(`/chat/attachments/${file.id}`);
    if (opened !== lightbox.opened) return; // Closed, or another image opened meanwhile.
    lightbox.url = URL.createObjectURL(blob);
    image.src = lightbox.url;
    image.dataset.attachmentId = String(file.id);
    $('lightbox-status').textContent = '';
  } catch (error) {
    if (opened !== lightbox.opened) return;
    $('lightbox-status').textContent = `Could not load the image: ${error.message}`;
  }
}

function releaseLightbox() {
  if (lightbox.url) URL.revokeObjectURL(lightbox.url);
  lightbox.url = null;
  lightbox.file = null;
  $('lightbox-image').removeAttribute('src');
  delete $('lightbox-image').dataset.attachmentId;
}

function closeLightbox() {
  if ($('lightbox').open) $('lightbox').close(); // Its `close` event releases it.
}

/** Fetches a file with the token and hands it to the browser as a download by its name. */
async function downloadAttachment(file, button = null) {
  showError('chat-error', null);
  if (button) button.disabled = true;
  try {
    const url = URL.createObjectURL(await fetchFile(`/chat/attachments/${file.id}`));
    saveUrl(url, file.filename);
    // The download has the bytes once it starts, but revoking in the same task can cut it off.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    showError('chat-error', `Could not download ${file.filename}: ${error.message}`);
  } finally {
    if (button) button.disabled = false;
  }
}

/** A download of a blob: URL: a link with `download`, clicked (no navigation, so nothing the
 * page's policy would have to allow). */
function saveUrl(url, filename) {
  const link = el('a', { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------------------------------
// Views and user actions

function showAuth(message) {
  $('main-view').hidden = true;
  $('auth-view').hidden = false;
  showError('auth-error', message);
}

function showError(id, message) {
  $(id).textContent = message ?? '';
  $(id).hidden = !message;
}

let registering = false;
function setAuthMode(register) {
  registering = register;
  $('tab-login').setAttribute('aria-selected', String(!register));
  $('tab-register').setAttribute('aria-selected', String(register));
  $('name-field').hidden = !register;
  $('auth-name').required = register;
  $('auth-password').autocomplete = register ? 'new-password' : 'current-password';
  $('auth-submit').textContent = register ? 'Create account' : 'Log in';
  showError('auth-error', null);
}

async function onAuthSubmit(event) {
  event.preventDefault();
  const email = $('auth-email').value.trim();
  const password = $('auth-password').value;
  $('auth-submit').disabled = true;
  try {
    if (registering) {
      await api('POST', '/auth/register', { name: $('auth-name').value.trim(), email, password });
    }
    // The login route takes the OAuth2 form (username = email) or, as here, JSON.
    storeTokens(await api('POST', '/auth/login', { email, password }));
    $('auth-password').value = '';
    await start();
  } catch (error) {
    showError('auth-error', error.message);
  } finally {
    $('auth-submit').disabled = false;
  }
}

/** Signed in: who am I, my chats, then the live connection. */
async function start() {
  try {
    state.me = await api('GET', '/auth/me');
  } catch {
    forgetTokens();
    showAuth(null);
    return;
  }
  scheduleRefresh();
  $('me-name').textContent = state.me.name;
  $('me-id').textContent = String(state.me.id);
  $('auth-view').hidden = true;
  $('main-view').hidden = false;
  closeChatView();
  // The list first: its rev values are the cursors the first `resume` sends.
  await refreshChats();
  connectRelay();
}

function forgetTokens() {
  clearTimeout(refreshTimer);
  for (const key of [TOKEN_KEY, REFRESH_KEY, EXPIRES_KEY]) sessionStorage.removeItem(key);
}

/** Ends the session on the server (`everywhere`: every session of ours), then here. */
async function logOut(everywhere) {
  try {
    await request('POST', everywhere ? '/auth/logout-all' : '/auth/logout');
  } catch (error) {
    console.warn('logout:', error.message);
  }
  signOut(null);
}

function signOut(message) {
  forgetTokens();
  state.me = null;
  for (const item of state.outbox.values()) clearTimeout(item.timer);
  for (const chat of state.chats.values()) for (const t of chat.typing.values()) clearTimeout(t);
  state.chats.clear();
  state.outbox.clear();
  state.openChatId = null;
  state.draftRecipient = null;
  state.menu = null;
  state.compose = null;
  state.found = null;
  closeSearch();
  clearUploads();
  forgetThumbnails();
  closeLightbox();
  $('composer-text').value = '';
  clearTimeout(relay.reconnectTimer);
  const socket = relay.socket;
  Object.assign(relay, { socket: null, ready: false, failures: 0 });
  socket?.close(1000, 'signed out');
  $('chat-list').replaceChildren();
  $('account-panel').hidden = true;
  document.title = 'windi';
  showAuth(message);
}

/** Opens a chat; answers when its newest page of history is in (or failed, logged). */
function openChatView(chatId) {
  const chat = ensureChat(chatId);
  if (state.compose && state.compose.chatId !== chatId) endCompose();
  if (state.found?.chatId !== chatId) state.found = null;
  state.menu = null;
  showError('chat-error', null);
  state.openChatId = chatId;
  state.draftRecipient = null;
  showConversation();
  renderHeader();
  renderTyping(chat);
  renderMessages({ toBottom: true });
  renderChatList();
  const loaded = loadLatest(chat).catch((error) => console.warn('history:', error.message));
  $('composer-text').focus({ preventScroll: true });
  return loaded;
}

/** The private chat with `userId`: the existing one, or a draft that the first message creates. */
function openPrivateChat(userId) {
  for (const chat of state.chats.values()) {
    if (chat.kind === 'private' && chat.memberIds.includes(userId)
        && (userId !== state.me.id || chat.memberIds.length === 1)) {
      openChatView(chat.id);
      return;
    }
  }
  endCompose();
  state.openChatId = null;
  state.draftRecipient = userId;
  showConversation();
  renderHeader();
  $('typing').textContent = '';
  renderMessages({ toBottom: true });
  renderChatList();
  $('composer-text').focus({ preventScroll: true });
}

function showConversation() {
  document.body.classList.add('chat-open');
  $('no-chat-open').hidden = true;
  $('chat-view').hidden = false;
  renderSearchScope();
}

function closeChatView() {
  endCompose();
  state.menu = null;
  state.found = null;
  state.openChatId = null;
  state.draftRecipient = null;
  document.body.classList.remove('chat-open');
  $('no-chat-open').hidden = false;
  $('chat-view').hidden = true;
  renderSearchScope();
  renderChatList();
}

function onComposerSubmit(event) {
  event.preventDefault();
  const input = $('composer-text');
  const text = input.value.trim();
  const compose = state.compose;
  if (compose?.mode === 'edit') {
    // An edit changes the text only; files chosen meanwhile wait for the next message.
    if (text && !state.saving) submitEdit(compose, text);
    return;
  }
  // Send waits for the uploads (the button is disabled meanwhile; Enter lands here anyway):
  // sending without a file still on its way would quietly leave it out.
  if (state.uploads.some((upload) => upload.status === 'uploading')) {
    showError('chat-error', 'Wait for the files to finish uploading.');
    return;
  }
  const files = state.uploads.filter((upload) => upload.status === 'done');
  if (!text && !files.length) return;
  input.value = '';
  autosize(input);
  showError('chat-error', null);
  send(text, compose?.mode === 'reply' && compose.chatId === state.openChatId ? compose.id : null,
    files.map(sentFile));
  // Every chip goes: the finished ones are in the message, and a failed one (its reason shown
  // on it) was never going to be.
  clearUploads();
  endCompose();
}

/** Saves an edit. The composer stays in edit mode until the server took it, so a failure
 * (shown above the composer) loses nothing. */
async function submitEdit(compose, text) {
  const chat = state.chats.get(compose.chatId);
  const message = chat && findMessage(chat, compose.id);
  if (!message || message.deleted || message.text === text) {
    endCompose();
    return;
  }
  state.saving = true;
  renderSendButton();
  const saved = await editMessage(chat, compose.id, text);
  state.saving = false;
  renderSendButton();
  if (state.compose === compose && (saved || findMessage(chat, compose.id)?.deleted)) endCompose();
}

/** Puts the composer into reply or edit mode for `message`. An edit borrows the composer: the
 * draft that was in it comes back when the edit ends. */
function startCompose(mode, chat, message) {
  const input = $('composer-text');
  const draft = state.compose?.mode === 'edit' ? state.compose.draft : input.value;
  state.compose = { mode, chatId: chat.id, id: message.id, draft };
  state.menu = null;
  if (mode === 'edit') input.value = message.text;
  else input.value = draft;
  autosize(input);
  showError('chat-error', null);
  renderMessages();
  input.focus({ preventScroll: true });
}

/** Back to plain sending. */
function endCompose() {
  const compose = state.compose;
  if (!compose) return;
  state.compose = null;
  if (compose.mode === 'edit') {
    $('composer-text').value = compose.draft;
    autosize($('composer-text'));
  }
  renderComposeContext();
}

function toggleMenu(chat, id) {
  state.menu = state.menu?.id === id ? null : { chatId: chat.id, id, confirmDelete: false };
  renderMessages();
}

function closeMenu() {
  if (!state.menu) return;
  state.menu = null;
  renderMessages();
}

let lastTypingSent = { chatId: null, at: 0 };
function onComposerInput() {
  const input = $('composer-text');
  autosize(input);
  // Typing frames need a chat (a draft private chat does not exist until its first message),
  // and they announce a new message, not an edit.
  const chatId = state.openChatId;
  if (chatId === null || !input.value.trim() || state.compose?.mode === 'edit') return;
  const now = Date.now();
  if (lastTypingSent.chatId === chatId && now - lastTypingSent.at < TYPING_SEND_EVERY_MS) return;
  if (relaySend({ type: 'typing', chat_id: chatId })) lastTypingSent = { chatId, at: now };
}

function autosize(textarea) {
  textarea.style.height = 'auto';
  textarea.style.height = `${Math.min(textarea.scrollHeight, 160)}px`;
}

function togglePanel(show, hide) {
  $(hide).hidden = true;
  $(show).hidden = !$(show).hidden;
  showError('sidebar-error', null);
  if (!$(show).hidden) $(show).querySelector('input').focus();
}

/** "New chat": a user id opens the chat at once; anything else picks the first person found. */
async function onNewChat(event) {
  event.preventDefault();
  const query = $('new-chat-user').value.trim();
  const asId = Number(query);
  if (/^[0-9]+$/.test(query) && Number.isSafeInteger(asId) && asId > 0) {
    startChatWith(asId);
    return;
  }
  const found = await searchPeople(query);
  if (found.length) startChatWith(found[0].id);
}

function startChatWith(userId) {
  $('new-chat-form').hidden = true;
  $('new-chat-user').value = '';
  $('people-results').replaceChildren();
  openPrivateChat(userId);
}

let searchTimer = null;
let searchSeq = 0;
function onPeopleInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { searchPeople($('new-chat-user').value.trim()); },
    SEARCH_DEBOUNCE_MS);
}

/** Lists the people matching `query` under the search field; answers them. */
async function searchPeople(query) {
  const seq = ++searchSeq;
  showError('sidebar-error', null);
  if (query.length < 2) {
    $('people-results').replaceChildren();
    return [];
  }
  try {
    const found = await api('GET', `/users/search?q=${encodeURIComponent(query)}&limit=10`);
    if (seq !== searchSeq) return found;
    $('people-results').replaceChildren(...found.map((person) => el('li', {},
      el('button', {
        type: 'button', class: 'person', onclick: () => startChatWith(person.id),
      }, person.name, el('span', { class: 'muted' }, ` #${person.id}`)))));
    if (!found.length) showError('sidebar-error', 'Nobody found.');
    return found;
  } catch (error) {
    showError('sidebar-error', error.message);
    return [];
  }
}

function showAccount() {
  $('account-panel').hidden = !$('account-panel').hidden;
  $('profile-name').value = state.me?.name ?? '';
  showError('account-status', null);
}

async function onProfileSubmit(event) {
  event.preventDefault();
  try {
    state.me = await api('PATCH', '/auth/me', { name: $('profile-name').value.trim() });
    $('me-name').textContent = state.me.name;
    $('profile-name').value = state.me.name;
    showError('account-status', 'Name saved.');
  } catch (error) {
    showError('account-status', error.message);
  }
}

async function onPasswordSubmit(event) {
  event.preventDefault();
  try {
    await request('POST', '/auth/password', {
      current_password: $('password-current').value,
      new_password: $('password-new').value,
    });
    $('password-form').reset();
    showError('account-status', 'Password changed; your other devices are logged out.');
  } catch (error) {
    // 401 here is the wrong current password, not an ended session.
    showError('account-status', error.status === 401 ? 'The current password is wrong.' : error.message);
  }
}

async function onNewGroup(event) {
  event.preventDefault();
  const ids = $('new-group-members').value.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (ids.some((id) => !Number.isSafeInteger(id) || id < 1)) {
    showError('sidebar-error', 'Member ids are numbers, separated by commas.');
    return;
  }
  try {
    const group = await api('POST', '/chat/group', {
      name: $('new-group-name').value.trim(), participant_ids: ids,
    });
    $('new-group-form').hidden = true;
    $('new-group-form').reset();
    // Its `chat` frame is on the way; the list makes sure it is there right now.
    await refreshChats();
    ensureChat(group.chat_id);
    openChatView(group.chat_id);
  } catch (error) {
    showError('sidebar-error', error.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Message search: the box above the chat list

const finder = {
  /** What the hits shown answer: `{q, chatId}` (chatId null: every chat), or null. */
  shown: null,
  hits: [],
  /** The `before` of the next (older) page, or null on the last one. */
  next: null,
  /** The search on its way, aborted when a newer one (or closing) overtakes it. */
  controller: null,
  /** The debounce of typing, or a retry after a 429. */
  timer: null,
  /** Counts the hits opened: a jump overtaken by a newer one stops before it scrolls. */
  jumps: 0,
};

function onSearchInput() {
  clearTimeout(finder.timer);
  if (!$('search-input').value.trim()) {
    closeSearch({ clearBox: false });
    return;
  }
  finder.timer = setTimeout(() => runSearch(), MESSAGE_SEARCH_DEBOUNCE_MS);
}

/** The chat "This chat only" names, or null for every chat. */
const searchScope = () => ($('search-this-chat').checked ? state.openChatId : null);

/** Searches for what the box says (`more`: the next page of the hits shown). Whatever is on its
 * way for an older query is aborted, and an answer that comes anyway is dropped. */
async function runSearch({ more: wantMore = false, auto = 0 } = {}) {
  clearTimeout(finder.timer);
  const q = $('search-input').value.trim();
  if (!q) {
    closeSearch({ clearBox: false });
    return;
  }
  // The next page of what is shown; if the box says something else by now, that instead.
  const more = wantMore && finder.shown?.q === q && finder.next !== null;
  const query = more ? finder.shown : { q, chatId: searchScope() };
  finder.controller?.abort();
  const controller = new AbortController();
  finder.controller = controller;
  let path = `/chat/search?q=${encodeURIComponent(query.q)}&limit=${SEARCH_PAGE_SIZE}`;
  if (query.chatId !== null) path += `&chat_id=${query.chatId}`;
  if (more) path += `&before=${finder.next}`;
  $('sidebar').classList.add('searching');
  $('search-results').hidden = false;
  $('search-results').setAttribute('aria-busy', 'true');
  $('search-more').disabled = true;
  setSearchStatus('Searching…');
  try {
    const page = await api('GET', path, undefined, { signal: controller.signal });
    if (finder.controller !== controller) return; // Overtaken while the answer was read.
    finder.controller = null;
    finder.shown = query;
    finder.hits = more ? [...finder.hits, ...page.hits] : page.hits;
    finder.next = page.next ?? null;
    renderSearch();
    if (!more) $('search-results').scrollTop = 0;
    // The server bounds each page's work: a page it stopped short of full says where to go on
    // (`next`). Read on while less than a page is shown, up to SEARCH_AUTO_PAGES requests.
    if (finder.next !== null && finder.hits.length < SEARCH_PAGE_SIZE && auto < SEARCH_AUTO_PAGES) {
      runSearch({ more: true, auto: auto + 1 });
    }
  } catch (error) {
    if (finder.controller !== controller) return; // Overtaken by a newer search, or closed.
    finder.controller = null;
    if (error.status === 429) {
      // Too many searches: ask again when the server says, for what the box says then.
      setSearchStatus('Searching too fast; trying again in a moment…');
      finder.timer = setTimeout(() => runSearch({ more }), (error.retryAfter ?? 1) * 1000);
      return;
    }
    $('search-results').setAttribute('aria-busy', 'false');
    $('search-more').disabled = false;
    if (!more) {
      // The hits shown answer another query: they would pass for this one's.
      Object.assign(finder, { shown: null, hits: [], next: null });
      $('search-hits').replaceChildren();
      $('search-more').hidden = true;
      delete $('search-results').dataset.q;
      delete $('search-results').dataset.scope;
    }
    // 422 names what is wrong with the query (`q: must contain a word to find …`).
    setSearchStatus(error.name === 'TimeoutError' ? 'The search took too long; try again.'
      : error.message, true);
  }
}

function setSearchStatus(text, isError = false) {
  $('search-status').textContent = text;
  $('search-status').classList.toggle('error', isError);
}

function renderSearch() {
  const { shown, hits, next } = finder;
  if (!shown) return;
  $('search-hits').replaceChildren(...hits.map(searchHitRow));
  $('search-more').hidden = next === null;
  $('search-more').disabled = false;
  $('search-results').setAttribute('aria-busy', 'false');
  // What the hits answer, to tell them from an older answer's (the e2e test waits on these).
  $('search-results').dataset.q = shown.q;
  $('search-results').dataset.scope = shown.chatId === null ? 'all' : String(shown.chatId);
  const where = shown.chatId === null ? '' : ' in this chat';
  const count = `${hits.length}${next === null ? '' : '+'}`;
  const none = next === null ? `No messages found${where}.`
    : `No messages found among the newest${where}; “More results” looks further back.`;
  setSearchStatus(hits.length === 0 ? none
    : `${count} message${hits.length === 1 ? '' : 's'} found${where}`);
}

/** One hit: the chat, who wrote it, when, and the matching part with the matches marked. */
function searchHitRow(hit) {
  const { chat_id: chatId, message } = hit;
  const chat = state.chats.get(chatId);
  let sender = message.sender_id === state.me.id ? 'You' : `#${message.sender_id}`;
  if (chat) sender = senderName(chat, message.sender_id);
  return el('li', {},
    el('button', {
      type: 'button', class: 'hit', 'data-chat-id': chatId, 'data-message-id': message.id,
      'aria-current': state.found?.id === message.id ? 'true' : null,
      onclick: () => openHit(hit),
    },
    el('span', { class: 'row' },
      el('span', { class: 'chat-name', text: chat ? chatTitle(chat) : `Chat ${chatId}` }),
      el('time', { class: 'small muted', dateTime: message.timestamp, text: shortTime(message.timestamp) })),
    el('span', { class: 'hit-sender small', text: sender }),
    el('span', { class: 'hit-text small' }, ...highlightNodes(hit.highlight))));
}

const HTML_ENTITIES = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#39;': "'" };

/** A hit's highlight as nodes: the server's HTML is escaped text with `<mark>…</mark>` around
 * each match and nothing else, so it is split on those tags and the five entities decoded, and
 * the text goes in as text. Safe even if it were not what the server promises: any other markup
 * would show as text, never run. */
function highlightNodes(html) {
  const nodes = [];
  let marked = false;
  for (const part of html.split(/(<\/?mark>)/)) {
    if (part === '<mark>') marked = true;
    else if (part === '</mark>') marked = false;
    else if (part) {
      const text = part.replace(/&(?:amp|lt|gt|quot|#39);/g, (entity) => HTML_ENTITIES[entity]);
      nodes.push(marked ? el('mark', { text }) : document.createTextNode(text));
    }
  }
  return nodes;
}

/** Opens a hit's chat and shows its message there, outlined. History pages back to it when it
 * is older than anything loaded. */
async function openHit(hit) {
  const jump = ++finder.jumps;
  const { chat_id: chatId, message } = hit;
  const chat = ensureChat(chatId);
  // The server has this message, so the chat's history reaches at least its seq (a summary
  // may lag behind, e.g. a chat the list does not know yet).
  if (message.seq > chat.lastSeq) chat.lastSeq = message.seq;
  if (state.openChatId !== chatId) {
    await openChatView(chatId);
  } else if (!chat.seqById.has(message.id) && message.seq >= oldestSeq(chat)) {
    await loadLatest(chat).catch((error) => console.warn('history:', error.message));
  }
  if (jump !== finder.jumps || state.openChatId !== chatId) return; // Overtaken, or moved on.
  state.found = { chatId, id: message.id };
  renderMessages();
  for (const button of $('search-hits').querySelectorAll('.hit')) {
    if (Number(button.dataset.messageId) === message.id) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
  }
  await revealMessage(chat, message.id, message.seq);
}

/** "This chat only" needs an open chat. */
function renderSearchScope() {
  $('search-this-chat').disabled = state.openChatId === null;
}

/** Esc, or an emptied box: the chat list again. */
function closeSearch({ clearBox = true } = {}) {
  clearTimeout(finder.timer);
  const controller = finder.controller;
  finder.controller = null;
  controller?.abort();
  finder.jumps += 1;
  Object.assign(finder, { shown: null, hits: [], next: null });
  if (clearBox) $('search-input').value = '';
  $('search-hits').replaceChildren();
  $('search-more').hidden = true;
  $('search-results').hidden = true;
  $('search-results').setAttribute('aria-busy', 'false');
  delete $('search-results').dataset.q;
  delete $('search-results').dataset.scope;
  $('sidebar').classList.remove('searching');
  if (state.found) {
    state.found = null;
    renderMessages();
  }
}

function init() {
  $('tab-login').addEventListener('click', () => setAuthMode(false));
  $('tab-register').addEventListener('click', () => setAuthMode(true));
  $('auth-form').addEventListener('submit', onAuthSubmit);
  $('logout').addEventListener('click', () => logOut(false));
  $('logout-all').addEventListener('click', () => logOut(true));
  $('show-account').addEventListener('click', showAccount);
  $('profile-form').addEventListener('submit', onProfileSubmit);
  $('password-form').addEventListener('submit', onPasswordSubmit);
  $('new-chat-user').addEventListener('input', onPeopleInput);
  $('show-new-chat').addEventListener('click', () => togglePanel('new-chat-form', 'new-group-form'));
  $('show-new-group').addEventListener('click', () => togglePanel('new-group-form', 'new-chat-form'));
  $('new-chat-form').addEventListener('submit', onNewChat);
  $('new-group-form').addEventListener('submit', onNewGroup);
  $('search-input').addEventListener('input', onSearchInput);
  $('search-input').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.preventDefault();
      closeSearch();
    } else if (event.key === 'Enter' && !event.isComposing) {
      event.preventDefault();
      runSearch(); // At once, without waiting for the debounce.
    }
  });
  $('search-results').addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return;
    closeSearch();
    $('search-input').focus();
  });
  $('search-this-chat').addEventListener('change', () => {
    if (!$('search-input').value.trim()) return;
    runSearch();
    $('search-input').focus();
  });
  $('search-more').addEventListener('click', () => runSearch({ more: true }));
  $('back').addEventListener('click', closeChatView);
  $('composer').addEventListener('submit', onComposerSubmit);
  $('composer-text').addEventListener('input', onComposerInput);
  $('composer-text').addEventListener('keydown', (event) => {
    // Enter sends; Shift+Enter is a new line.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      onComposerSubmit(event);
    } else if (event.key === 'Escape' && state.compose) {
      endCompose();
    }
  });
  $('context-cancel').addEventListener('click', () => {
    endCompose();
    $('composer-text').focus({ preventScroll: true });
  });
  $('attach').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (event) => {
    addFiles(event.target.files);
    event.target.value = ''; // So that choosing the same file again is a change again.
    $('composer-text').focus({ preventScroll: true });
  });
  watchDrops();
  const box = $('lightbox');
  box.addEventListener('close', () => {
    lightbox.opened += 1; // A load still on its way is dropped.
    releaseLightbox();
  });
  // A click on the image or beside it (the dialog's own box is the backdrop) closes it.
  box.addEventListener('click', (event) => {
    if (event.target === box || event.target === $('lightbox-image')) box.close();
  });
  $('lightbox-close').addEventListener('click', () => box.close());
  $('lightbox-download').addEventListener('click', () => {
    if (lightbox.url) saveUrl(lightbox.url, lightbox.file.filename);
    else if (lightbox.file) downloadAttachment(lightbox.file);
  });
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeMenu(); });
  $('load-older').addEventListener('click', () => { const c = openChat(); if (c) loadOlder(c); });
  $('messages').addEventListener('scroll', () => {
    const chat = openChat();
    if (!chat) return;
    if ($('messages').scrollTop < 80) loadOlder(chat);
    markShownAsRead();
  });
  document.addEventListener('visibilitychange', markShownAsRead);
  // Back online: try the relay now rather than at the end of the backoff.
  window.addEventListener('online', () => {
    if (state.me && !relay.socket) {
      relay.failures = 0;
      connectRelay();
    }
  });
  setAuthMode(false);
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else showAuth(null);
}

init();
