// windi's browser client: plain JavaScript, no build step, no dependencies.
//
// It uses only the public HTTP API and the WebSocket relay protocol (both described in
// README.md), so it is also the worked example for anyone writing a client. What every client
// has to get right, and where this file does it:
//
//  * Order by `seq`, never by time. Each chat keeps `lastSeq`, the highest seq this client has
//    accounted for (from a chat summary or a delivered message). After every (re)connect it
//    sends `resume` with those, and the relay replays what came after, in order, with no gap,
//    then goes on live. A message whose seq is already here is a duplicate and is ignored.
//    → onReady(), onMessage()
//  * Every send carries a `dedup_key`, made once per message. A retry (after a timeout or a
//    dropped connection, over the relay or over HTTP) reuses it, so the server stores the
//    message once however often it is sent. → send(), transmit(), sendOverHttp()
//  * Read marks go out with `PATCH /chat/message/{id}/read` for the newest message on screen
//    (it marks everything before it too); other members' marks come in as `read` frames.
//    → markShownAsRead(), onRead()
//  * Typing goes out as a `typing` frame at most every couple of seconds while the user
//    types, and shows for a few seconds after each one that comes in. → onComposerInput()

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

const TOKEN_KEY = 'windi.token';

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
};

/** A chat as this client tracks it. `summary` is a ChatSummary from the API or a `chat` frame. */
function newChat(summary) {
  const chat = {
    id: summary.id,
    kind: 'private',
    name: null,
    memberIds: [],
    /** Resume cursor: every message up to this seq is accounted for. */
    lastSeq: summary.last_seq ?? 0,
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
    /** For a private chat: how far the other member has read (from `read` frames). */
    otherReadSeq: 0,
    /** user id → timer clearing their "typing" line. */
    typing: new Map(),
    loadingOlder: false,
    marking: false,
  };
  applySummary(chat, summary);
  return chat;
}

/** Takes what a fresher summary says about a chat we know. It never moves `lastSeq`: messages
 * up to the summary's seq may still be on their way to us over the relay. */
function applySummary(chat, s) {
  chat.kind = s.kind;
  chat.name = s.name;
  chat.memberIds = s.member_ids;
  // Display names, by user id (members who join later show as #id until the next refresh).
  chat.names = new Map((s.members ?? []).map((m) => [m.id, m.name]));
  // Its unread count, unless we already know more (live messages, or our own newer marker).
  if (s.last_seq >= chat.countedSeq && s.last_read_seq >= chat.myReadSeq) {
    chat.unread = s.unread_count;
    chat.countedSeq = s.last_seq;
  }
  chat.myReadSeq = Math.max(chat.myReadSeq, s.last_read_seq);
  if (s.last_message && (!chat.lastMessage || s.last_message.seq >= chat.lastMessage.seq)) {
    chat.lastMessage = s.last_message;
  }
  const when = Date.parse(chat.lastMessage ? chat.lastMessage.timestamp : s.created_at);
  if (when > chat.activity) chat.activity = when;
}

/** The chat with this id; one we have not heard of yet (its `chat` frame is still to come, or
 * our list is stale) starts empty, with cursor 0, and the chat list fills it in. */
function ensureChat(chatId) {
  let chat = state.chats.get(chatId);
  if (!chat) {
    chat = newChat({
      id: chatId, kind: 'private', name: null, member_ids: [], last_seq: 0, last_read_seq: 0,
      unread_count: 0, last_message: null, created_at: new Date().toISOString(),
    });
    state.chats.set(chatId, chat);
    refreshChats();
  }
  return chat;
}

const isMine = (message) => message.sender_id === state.me.id;
const openChat = () => state.chats.get(state.openChatId) ?? null;

// ---------------------------------------------------------------------------------------------
// HTTP API

class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

/** One JSON request to the API with our token. Errors are `{detail, code}` JSON; a 401 on a
 * signed-in call means the token expired, so we sign out. */
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    if (response.status === 401 && token && state.me) {
      signOut('Your session has ended. Please log in again.');
    }
    throw new ApiError(response.status, data?.detail ?? response.statusText, data?.code);
  }
  return data;
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
    // The relay listens on its own port of this host; windi tells us which.
    clientConfig ??= await api('GET', '/client-config.json');
  } catch {
    scheduleReconnect();
    return;
  }
  if (!state.me || relay.socket) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const token = encodeURIComponent(sessionStorage.getItem(TOKEN_KEY) ?? '');
  // Browsers cannot set headers on a WebSocket, so the token goes in the query.
  const socket = new WebSocket(
    `${scheme}://${location.hostname}:${clientConfig.relay_port}/ws?token=${token}`,
  );
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

function onFrame(frame) {
  switch (frame.type) {
    case 'ready': return onReady();
    case 'message': return onMessage(frame.message);
    case 'read': return onRead(frame);
    case 'chat': return onChatFrame(frame.chat);
    case 'chat_removed': return onChatRemoved(frame.chat_id);
    case 'member': return onMember(frame);
    case 'typing': return onTyping(frame);
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
  // Resume first: "I have everything up to lastSeq in each chat". Whatever was committed while
  // we were away is replayed in seq order before anything live.
  const chats = {};
  for (const chat of state.chats.values()) chats[String(chat.id)] = chat.lastSeq;
  relaySend({ type: 'resume', chats });
  // Sends that were never confirmed go again, with the same dedup keys.
  for (const item of state.outbox.values()) if (!item.error) transmit(item);
  // Chats created since our list was fetched (e.g. while we were away) are subscribed by the
  // relay but unknown here: the list tells us about them.
  refreshChats();
}

// ---------------------------------------------------------------------------------------------
// Incoming events

/** A message from the relay (or an ack, or HTTP): keep it once, by seq. */
function onMessage(message) {
  const chat = ensureChat(message.chat_id);
  storeMessage(chat, message);
  if (message.seq > chat.lastSeq) chat.lastSeq = message.seq;
  if (message.seq > chat.countedSeq) {
    chat.countedSeq = message.seq;
    if (!isMine(message) && message.seq > chat.myReadSeq) chat.unread += 1;
  }
  if (!chat.lastMessage || message.seq >= chat.lastMessage.seq) chat.lastMessage = message;
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

/** Adds a message to what can be shown (not to the resume cursor). */
function storeMessage(chat, message) {
  const known = chat.messages.get(message.seq);
  const copy = { ...message };
  // A read mark may have overtaken the message (or an older copy already says read).
  if (known?.read || (chat.kind === 'private' && isMine(copy) && copy.seq <= chat.otherReadSeq)) {
    copy.read = true;
  }
  chat.messages.set(copy.seq, copy);
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

function onChatFrame(summary) {
  const known = state.chats.get(summary.id);
  if (known) applySummary(known, summary);
  else state.chats.set(summary.id, newChat(summary));
  // The private chat we were drafting now exists.
  if (state.draftRecipient !== null && state.draftRecipient !== state.me.id
      && summary.kind === 'private' && summary.member_ids.includes(state.draftRecipient)) {
    openChatView(summary.id);
  }
  renderChatList();
  if (summary.id === state.openChatId) renderHeader();
}

function onChatRemoved(chatId) {
  state.chats.delete(chatId);
  if (state.openChatId === chatId) closeChatView();
  renderChatList();
}

function onMember({ chat_id: chatId, user_id: userId, change }) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  const others = chat.memberIds.filter((id) => id !== userId);
  chat.memberIds = change === 'joined' ? [...others, userId] : others;
  if (chatId === state.openChatId) renderHeader();
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
  // Shown at once; the `message` frame with the same seq follows and moves the cursor. (The
  // ack does not move it: an older message of someone else may still be on its way.)
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

/** Queues a message for the open chat (or the drafted private chat) and sends it. */
function send(text) {
  const item = {
    key: newDedupKey(),
    chatId: state.openChatId,
    recipientId: state.openChatId === null ? state.draftRecipient : null,
    text,
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

/** The page before the oldest message we have (scrolling back). */
async function loadOlder(chat) {
  const oldest = oldestSeq(chat);
  if (chat.loadingOlder || oldest <= 1) return;
  chat.loadingOlder = true;
  try {
    const page = await api('GET',
      `/chat/history/${chat.id}?before_seq=${oldest}&limit=${PAGE_SIZE}`);
    for (const message of page) storeMessage(chat, message);
    if (chat.id === state.openChatId) renderMessages({ keepBottomDistance: true });
  } catch (error) {
    console.warn('history:', error.message);
  } finally {
    chat.loadingOlder = false;
  }
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
  let newest = null;
  let unseen = false;
  for (const message of chat.messages.values()) {
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

/** Unread = messages of others after our marker. Exact when we hold them all; otherwise the
 * server counts. */
function recountUnread(chat) {
  let count = 0;
  for (let seq = chat.myReadSeq + 1; seq <= chat.countedSeq; seq += 1) {
    const message = chat.messages.get(seq);
    if (!message) {
      refreshChats();
      return;
    }
    if (!isMine(message)) count += 1;
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
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'title') {
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
    else if (last) preview = `${isMine(last) ? (last.read ? '✓✓ ' : '✓ ') : ''}${last.text}`;
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

  if (stick) box.scrollTop = box.scrollHeight;
  else if (keepBottomDistance) box.scrollTop = box.scrollHeight - fromBottom;
  else box.scrollTop = scrollTop;
}

function messageRow(chat, message) {
  const mine = isMine(message);
  const status = message.read ? 'read' : 'sent';
  return el('li', {
    class: `msg ${mine ? 'own' : 'theirs'}`, 'data-seq': message.seq, 'data-id': message.id,
  },
  !mine && chat.kind === 'group' ? el('div', { class: 'sender small', text: senderName(chat, message.sender_id) }) : null,
  el('div', { class: 'text', text: message.text }),
  el('div', { class: 'meta small' },
    el('time', { dateTime: message.timestamp, text: new Date(message.timestamp)
      .toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) }),
    mine ? el('span', {
      class: 'status', 'data-status': status, title: status,
      'aria-label': status, text: message.read ? '✓✓' : '✓',
    }) : null));
}

function pendingRow(item) {
  const status = item.error ? 'failed' : 'sending';
  return el('li', { class: `msg own pending${item.error ? ' failed' : ''}`, 'data-key': item.key },
    el('div', { class: 'text', text: item.text }),
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
    const { access_token: token } = await api('POST', '/auth/login', { email, password });
    sessionStorage.setItem(TOKEN_KEY, token);
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
    sessionStorage.removeItem(TOKEN_KEY);
    showAuth(null);
    return;
  }
  $('me-name').textContent = state.me.name;
  $('me-id').textContent = String(state.me.id);
  $('auth-view').hidden = true;
  $('main-view').hidden = false;
  closeChatView();
  // The list first: its last_seq values are the cursors the first `resume` sends.
  await refreshChats();
  connectRelay();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  for (const item of state.outbox.values()) clearTimeout(item.timer);
  for (const chat of state.chats.values()) for (const t of chat.typing.values()) clearTimeout(t);
  state.chats.clear();
  state.outbox.clear();
  state.openChatId = null;
  state.draftRecipient = null;
  clearTimeout(relay.reconnectTimer);
  const socket = relay.socket;
  Object.assign(relay, { socket: null, ready: false, failures: 0 });
  socket?.close(1000, 'signed out');
  $('chat-list').replaceChildren();
  document.title = 'windi';
  showAuth(message);
}

function openChatView(chatId) {
  const chat = ensureChat(chatId);
  state.openChatId = chatId;
  state.draftRecipient = null;
  showConversation();
  renderHeader();
  renderTyping(chat);
  renderMessages({ toBottom: true });
  renderChatList();
  loadLatest(chat).catch((error) => console.warn('history:', error.message));
  $('composer-text').focus({ preventScroll: true });
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
}

function closeChatView() {
  state.openChatId = null;
  state.draftRecipient = null;
  document.body.classList.remove('chat-open');
  $('no-chat-open').hidden = false;
  $('chat-view').hidden = true;
  renderChatList();
}

function onComposerSubmit(event) {
  event.preventDefault();
  const input = $('composer-text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  autosize(input);
  send(text);
}

let lastTypingSent = { chatId: null, at: 0 };
function onComposerInput() {
  const input = $('composer-text');
  autosize(input);
  // Typing frames need a chat; a draft private chat does not exist until its first message.
  const chatId = state.openChatId;
  if (chatId === null || !input.value.trim()) return;
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

async function onNewChat(event) {
  event.preventDefault();
  const userId = Number($('new-chat-user').value);
  if (!Number.isSafeInteger(userId) || userId < 1) return;
  $('new-chat-form').hidden = true;
  $('new-chat-user').value = '';
  openPrivateChat(userId);
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

function init() {
  $('tab-login').addEventListener('click', () => setAuthMode(false));
  $('tab-register').addEventListener('click', () => setAuthMode(true));
  $('auth-form').addEventListener('submit', onAuthSubmit);
  $('logout').addEventListener('click', () => signOut(null));
  $('show-new-chat').addEventListener('click', () => togglePanel('new-chat-form', 'new-group-form'));
  $('show-new-group').addEventListener('click', () => togglePanel('new-group-form', 'new-chat-form'));
  $('new-chat-form').addEventListener('submit', onNewChat);
  $('new-group-form').addEventListener('submit', onNewGroup);
  $('back').addEventListener('click', closeChatView);
  $('composer').addEventListener('submit', onComposerSubmit);
  $('composer-text').addEventListener('input', onComposerInput);
  $('composer-text').addEventListener('keydown', (event) => {
    // Enter sends; Shift+Enter is a new line.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      onComposerSubmit(event);
    }
  });
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
