//! A real WebSocket client for the relay tests (tokio-tungstenite over TCP).

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the relay sent, as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Frame(Value),
    /// A close frame with its code.
    Closed(u16),
    /// The connection ended without a close frame.
    Ended,
    /// Nothing arrived in time.
    Silent,
}

#[derive(Debug)]
pub struct WsClient {
    stream: Stream,
    /// Frames read while looking for another kind, kept for later calls.
    pending: VecDeque<Value>,
}

impl WsClient {
    /// Connects with `?token=` and waits for the `ready` frame; panics if refused.
    pub async fn connect(relay: SocketAddr, token: &str) -> Self {
        let mut client = Self::try_connect(relay, Some(token), None).await.unwrap();
        client.expect("ready", Duration::from_secs(10)).await;
        client
    }

    /// Connects with the token in an `Authorization` header and optionally an `Origin`;
    /// answers the HTTP status of a refusal.
    pub async fn try_connect(
        relay: SocketAddr,
        query_token: Option<&str>,
        headers: Option<Vec<(&'static str, String)>>,
    ) -> Result<Self, u16> {
        let url = match query_token {
            Some(token) => format!("ws://{relay}/ws?token={token}"),
            None => format!("ws://{relay}/ws"),
        };
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers.unwrap_or_default() {
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(&value).unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Self {
                stream,
                pending: VecDeque::new(),
            }),
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// A client whose socket has a tiny receive buffer, so a relay writing to it blocks soon.
    pub async fn connect_with_small_buffer(relay: SocketAddr, token: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(relay).await.unwrap();
        let url = format!("ws://{relay}/ws?token={token}");
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        let mut client = Self {
            stream,
            pending: VecDeque::new(),
        };
        client.expect("ready", Duration::from_secs(10)).await;
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next frame (pings are answered and skipped), a close, or silence after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Received {
        if let Some(frame) = self.pending.pop_front() {
            return Received::Frame(frame);
        }
        self.read(wait).await
    }

    async fn read(&mut self, wait: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Received::Silent,
                Ok(None) | Ok(Some(Err(_))) => return Received::Ended,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Received::Frame(serde_json::from_str(&text).unwrap());
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Received::Closed(frame.map_or(1005, |f| f.code.into()));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame of this `type`; frames of other types stay queued for later calls.
    /// Panics after `wait`.
    pub async fn expect(&mut self, kind: &str, wait: Duration) -> Value {
        if let Some(i) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Received::Frame(frame) if frame["type"] == kind => return frame,
                Received::Frame(frame) => self.pending.push_back(frame),
                other => panic!(
                    "expected a {kind} frame, got {other:?} (queued: {:?})",
                    self.pending
                ),
            }
        }
    }

    /// `count` message frames, skipping frames of other types; panics on a close or after
    /// `wait`.
    pub async fn messages(&mut self, count: usize, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Received::Frame(frame) if frame["type"] == "message" => out.push(frame),
                Received::Frame(_) => {}
                other => panic!("after {} of {count} messages: {other:?}", out.len()),
            }
        }
        out
    }

    /// Asserts that no frame of this `type` arrives within `wait` (others are skipped).
    pub async fn none_within(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Received::Frame(frame) if frame["type"] == kind => panic!("unexpected: {frame}"),
                Received::Frame(_) => continue,
                Received::Silent => return,
                // A closed connection receives nothing, which proves nothing.
                other => panic!("the connection ended while waiting for silence: {other:?}"),
            }
        }
    }

    /// Asserts that no message frame arrives within `wait` (other frames are skipped).
    pub async fn no_message_within(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Received::Frame(frame) if frame["type"] == "message" => {
                    panic!("unexpected message: {frame}")
                }
                Received::Frame(_) => continue,
                Received::Silent => return,
                other => panic!("the connection ended while waiting for silence: {other:?}"),
            }
        }
    }

    /// The next `count` frames whose type is one of `kinds`, skipping others; panics on a close
    /// or after `wait`.
    pub async fn frames(&mut self, kinds: &[&str], count: usize, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Received::Frame(frame) if kinds.iter().any(|k| frame["type"] == *k) => {
                    out.push(frame)
                }
                Received::Frame(_) => {}
                other => panic!(
                    "after {} of {count} {kinds:?} frames: {other:?} (got {out:?})",
                    out.len()
                ),
            }
        }
        out
    }

    /// Reads until the connection closes; answers the close code (or 1006 if it just ended).
    pub async fn close_code(&mut self, wait: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Received::Closed(code) => return code,
                Received::Ended => return 1006,
                Received::Silent => panic!("still open after {wait:?}"),
                Received::Frame(_) => continue,
            }
        }
    }
}

/// The seqs of message frames, for order assertions.
pub fn seqs(frames: &[Value]) -> Vec<i64> {
    frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect()
}
