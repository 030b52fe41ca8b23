// The page: sign up or log in (a session cookie, never a password in a URL), post, follow,
// and three live lists over server-sent events. EventSource reconnects by itself and sends
// the last id it got (Last-Event-ID), so the server sends what was missed: each item once.
"use strict";

const $ = (id) => document.getElementById(id);
const streams = {};
const seen = { posts: new Set(), events: new Set(), firehose: new Set() };

function showError(message) {
  $("error").textContent = message || "";
}

async function call(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function basic(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return "Basic " + btoa(String.fromCharCode(...bytes));
}

function setStatus() {
  const states = Object.values(streams).map((s) => s.readyState);
  const status = $("status");
  if (!states.length) {
    status.textContent = "offline";
    status.className = "";
  } else if (states.every((s) => s === EventSource.OPEN)) {
    status.textContent = "live";
    status.className = "live";
  } else {
    status.textContent = "reconnecting…";
    status.className = "reconnecting";
  }
}

function describe(feed, name, item) {
  if (feed !== "events") {
    return { text: item.content, meta: `${item.author} in ${item.source}` };
  }
  if (name === "follow_request") {
    return { text: `${item.jid} asks to follow ${item.node}`, meta: "follow request" };
  }
  if (name === "subscription") {
    return { text: `${item.jid}: ${item.change} on ${item.node}`, meta: item.affiliation };
  }
  if (name === "post_updated") {
    return { text: item.post.content, meta: `edited in ${item.post.source}` };
  }
  if (name === "post_deleted") {
    return { text: `post ${item.id} deleted`, meta: item.source };
  }
  return { text: JSON.stringify(item), meta: name };
}

function show(feed, event) {
  if (seen[feed].has(event.lastEventId)) return; // never twice, whatever happens
  seen[feed].add(event.lastEventId);
  const item = JSON.parse(event.data);
  const { text, meta } = describe(feed, event.type, item);
  const li = document.createElement("li");
  li.dataset.cursor = event.lastEventId;
  li.className = "item";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const small = document.createElement("div");
  small.className = "meta";
  small.textContent = meta;
  li.append(body, small);
  $(feed).prepend(li);
}

function open(feed, path, names) {
  const source = new EventSource(path);
  for (const name of names) source.addEventListener(name, (e) => show(feed, e));
  source.addEventListener("reset", (e) => showError(`${feed}: the server reset the stream`));
  source.onopen = setStatus;
  source.onerror = setStatus;
  streams[feed] = source;
}

const EVENT_NAMES = ["follow_request", "subscription", "post_updated", "post_deleted"];

function start(username) {
  $("who").textContent = username;
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  open("posts", "/api/notifications/posts", ["post"]);
  open("events", "/api/notifications/events", EVENT_NAMES);
  open("firehose", "/api/firehose", ["post"]);
  setStatus();
  setInterval(setStatus, 500);
}

async function logIn(username, password) {
  const account = await call("POST", "/api/session", undefined, {
    Authorization: basic(username, password),
  });
  start(account.username);
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError();
  try {
    await logIn($("username").value.trim(), $("password").value);
  } catch (err) {
    showError(err.message);
  }
});

$("signup-button").addEventListener("click", async () => {
  showError();
  const username = $("username").value.trim();
  const password = $("password").value;
  try {
    await call("POST", "/api/account", { username, password });
    await logIn(username, password);
  } catch (err) {
    showError(err.message);
  }
});

$("post-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError();
  try {
    const me = $("who").textContent;
    await call("POST", `/api/${encodeURIComponent(me)}/content/posts`, {
      content: $("post-content").value,
    });
    $("post-content").value = "";
  } catch (err) {
    showError(err.message);
  }
});

$("follow-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError();
  try {
    const channel = $("follow-channel").value.trim();
    await call("POST", "/api/subscribed", { [`${channel}/posts`]: "publisher" });
    $("follow-channel").value = "";
  } catch (err) {
    showError(err.message);
  }
});

$("logout").addEventListener("click", async () => {
  for (const source of Object.values(streams)) source.close();
  try {
    await call("DELETE", "/api/session");
  } finally {
    location.reload();
  }
});

// Already logged in (the cookie)? Then go straight to the feeds.
call("GET", "/api/session")
  .then((account) => account && account.username && start(account.username))
  .catch(() => {});
