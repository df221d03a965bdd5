//! The real-time gateway: one WebSocket per console or widget. See docs/PROTOCOL.md.
//!
//! A socket is a task: it checks the Origin at the handshake, waits (10 s at most) for a `hello`
//! frame carrying a short-lived ticket, then relays frames both ways. Incoming frames are capped
//! at 16 KiB and rate-limited; outgoing frames wait in a bounded queue, and a socket that cannot
//! keep up is cut off (it reconnects and resumes from the store). Each IP may hold a bounded number
//! of sockets; the registration guard frees its place when the task ends.

use super::error::ApiError;
use super::extract::ClientIp;
use super::{AppState, security};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use parley_app::{
    App, AppError, ChatActor, Frame, Session, Subscriber, TicketSubject, Topic, Visitor,
};
use parley_core::{ConversationId, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const MAX_FRAME_BYTES: usize = 16 * 1024;
const OUTGOING_QUEUE: usize = 256;
/// Frames waiting for a socket that go out in one write.
const WRITE_AT_ONCE: usize = 64;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A socket that sends nothing (not even a ping) for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How often a console socket re-checks that its session still exists.
const SESSION_RECHECK: Duration = Duration::from_secs(30);
/// Incoming frames allowed per second per socket.
const FRAMES_PER_SECOND: u32 = 20;
pub const MAX_SOCKETS_PER_IP: usize = 200;
/// How often a visitor socket's activity is written down as their heartbeat.
const ALIVE_EVERY: Duration = Duration::from_secs(5);

/// Open sockets per client IP.
#[derive(Debug, Default)]
pub struct SocketLimits {
    per_ip: Mutex<HashMap<String, usize>>,
}

/// Holds one place for an IP until dropped.
pub struct SocketPlace {
    limits: Arc<SocketLimits>,
    ip: String,
}

impl SocketLimits {
    pub fn acquire(self: &Arc<Self>, ip: &str) -> Option<SocketPlace> {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip.to_owned()).or_default();
        if *n >= MAX_SOCKETS_PER_IP {
            return None;
        }
        *n += 1;
        Some(SocketPlace {
            limits: self.clone(),
            ip: ip.to_owned(),
        })
    }
}

impl Drop for SocketPlace {
    fn drop(&mut self) {
        let mut m = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

pub async fn upgrade(
    State(s): State<AppState>,
    headers: HeaderMap,
    ip: ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    // Sockets come only from Parley's own pages (the console, and the widget's iframe).
    if headers.get(axum::http::header::ORIGIN).is_none()
        || security::check_origin(&headers, &s.settings).is_err()
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "sockets are accepted from Parley's own pages only",
        )
        .into_response();
    }
    let Some(place) = s.sockets.acquire(ip.as_deref().unwrap_or("unknown")) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sockets",
            "too many open connections from this address",
        )
        .into_response();
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            run(s.app.clone(), socket).await;
            drop(place);
        })
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Hello {
        ticket: String,
    },
    Ping,
    Send {
        conversation_id: String,
        client_msg_id: String,
        body: String,
    },
    Typing {
        conversation_id: String,
        on: bool,
    },
    Resume {
        conversation_id: String,
        since: i64,
    },
}

enum Who {
    Agent(Box<Session>),
    Visitor(Visitor),
}

impl Who {
    fn actor(&self) -> ChatActor<'_> {
        match self {
            Who::Agent(s) => ChatActor::Agent(s),
            Who::Visitor(v) => ChatActor::Visitor(*v),
        }
    }
    fn tenant(&self) -> TenantId {
        match self {
            Who::Agent(s) => s.actor.tenant,
            Who::Visitor(v) => v.tenant,
        }
    }
}

fn text(v: Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn error_frame(code: &str, message: &str) -> Message {
    text(json!({ "type": "error", "code": code, "message": message }))
}

fn app_error_code(e: &AppError) -> (&'static str, String) {
    let api = ApiError::from(match e {
        AppError::Invalid(d) => AppError::Invalid(d.clone()),
        AppError::NotFound => AppError::NotFound,
        AppError::Forbidden(p) => AppError::Forbidden(*p),
        AppError::Unauthenticated => AppError::Unauthenticated,
        AppError::PasswordChangeRequired => AppError::PasswordChangeRequired,
        _ => AppError::Internal(e.to_string()),
    });
    (api.code, api.message)
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

async fn hello(app: &App, socket: &mut WebSocket) -> Option<Who> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, socket.recv())
        .await
        .ok()??
        .ok()?;
    let Message::Text(t) = first else { return None };
    let Ok(ClientFrame::Hello { ticket }) = serde_json::from_str::<ClientFrame>(&t) else {
        return None;
    };
    let ticket = app.verify_ticket(&ticket).ok()?;
    match ticket.subject {
        TicketSubject::Agent { session_hash } => {
            let session = app.authenticate_hash(session_hash).await.ok()?;
            (session.actor.tenant == ticket.tenant && !session.must_change_password)
                .then(|| Who::Agent(Box::new(session)))
        }
        TicketSubject::Visitor { visitor } => Some(Who::Visitor(Visitor {
            tenant: ticket.tenant,
            id: visitor,
        })),
    }
}

async fn run(app: App, mut socket: WebSocket) {
    let Some(who) = hello(&app, &mut socket).await else {
        close(&mut socket, 4401, "hello with a valid ticket expected").await;
        return;
    };
    let (sub, mut rx) = app.hub.new_subscriber(OUTGOING_QUEUE);
    let tenant = who.tenant();
    if let Who::Agent(s) = &who {
        app.hub.subscribe(Topic::Agent(tenant, s.actor.user), &sub);
        for d in &s.actor.departments {
            app.hub.subscribe(Topic::Department(tenant, *d), &sub);
        }
        if let Ok(chats) = app.store.conversations_of_agent(tenant, s.actor.user).await {
            for c in chats {
                app.hub.subscribe(Topic::Conversation(tenant, c.id), &sub);
            }
        }
    }
    let ready = match &who {
        Who::Agent(s) => json!({ "type": "ready", "role": "agent", "user_id": s.actor.user }),
        Who::Visitor(v) => json!({ "type": "ready", "role": "visitor", "visitor_id": v.id }),
    };
    if socket.send(text(ready)).await.is_err() {
        app.hub.unsubscribe_all(sub.id);
        return;
    }
    let mut window_start = tokio::time::Instant::now();
    let mut frames_in_window = 0u32;
    let mut last_heard = tokio::time::Instant::now();
    let mut last_alive = last_heard - ALIVE_EVERY;
    // The conversations this visitor socket resumed: their liveness follows this socket.
    let mut watched: Vec<ConversationId> = vec![];
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.tick().await;
    // One timer for silence, moved on only when it fires (a frame just notes the time; a timer
    // made per frame cost every frame a trip through the timer wheel).
    let silence = tokio::time::sleep_until(last_heard + IDLE_TIMEOUT);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                last_heard = tokio::time::Instant::now();
                let raw = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Binary(_) => {
                        if socket.send(error_frame("bad_frame", "frames are JSON text")).await.is_err() { break }
                        continue;
                    }
                };
                if last_heard.duration_since(window_start) >= Duration::from_secs(1) {
                    window_start = last_heard;
                    frames_in_window = 0;
                }
                frames_in_window += 1;
                if frames_in_window > FRAMES_PER_SECOND {
                    if socket.send(error_frame("rate_limited", "slow down: too many frames per second")).await.is_err() { break }
                    continue;
                }
                let frame = serde_json::from_str::<ClientFrame>(&raw).ok();
                if let Who::Visitor(_) = &who
                    && let Some(ClientFrame::Resume { conversation_id, .. }) = &frame
                    && let Ok(c) = conversation_id.parse::<ConversationId>()
                    && !watched.contains(&c)
                    && watched.len() < 8
                {
                    watched.push(c);
                    last_alive = last_heard - ALIVE_EVERY;
                }
                let reply = handle(&app, &who, &sub, frame).await;
                // A visitor's frames are their heartbeat (written at most every few seconds).
                if let Who::Visitor(v) = &who
                    && last_heard.duration_since(last_alive) >= ALIVE_EVERY
                {
                    last_alive = last_heard;
                    for c in watched.iter() {
                        match app.visitor_alive(*v, *c).await {
                            Ok(()) | Err(AppError::NotFound) => {}
                            Err(e) => tracing::warn!(error = %e, "recording a visitor heartbeat failed"),
                        }
                    }
                }
                let is_ack = reply.as_ref().is_some_and(|m| matches!(m, Message::Text(t) if t.contains("\"type\":\"ack\"")));
                // The live frames already waiting go out in the same write: after a send, that is
                // the sender's own event, published before the append was answered.
                if let Some(reply) = reply
                    && (socket.feed(reply).await.is_err()
                        || !feed_waiting(&app, &who, &sub, &mut socket, &mut rx, 1).await
                        || socket.flush().await.is_err())
                {
                    break;
                }
                if is_ack {
                    parley_app::fault::point("after_ack");
                }
            }
            outgoing = rx.recv() => {
                let Some(frame) = outgoing else { break };
                // Whatever else is waiting goes out with it, in one write.
                if !feed_live(&app, &who, &sub, &mut socket, frame).await
                    || !feed_waiting(&app, &who, &sub, &mut socket, &mut rx, 1).await
                    || socket.flush().await.is_err()
                {
                    break;
                }
            }
            _ = sub.kill.notified() => {
                close(&mut socket, 4408, "too slow: reconnect and resume").await;
                break;
            }
            _ = recheck.tick() => {
                if let Who::Agent(s) = &who
                    && app.authenticate_hash(s.token_hash.clone()).await.is_err()
                {
                    close(&mut socket, 4401, "session ended").await;
                    break;
                }
            }
            _ = &mut silence => {
                if last_heard.elapsed() < IDLE_TIMEOUT {
                    silence.as_mut().reset(last_heard + IDLE_TIMEOUT);
                    continue;
                }
                close(&mut socket, 4000, "no heartbeat").await;
                break;
            }
        }
    }
    app.hub.unsubscribe_all(sub.id);
}

/// Queue a live frame on the socket (unflushed). A console follows the chats it is given.
async fn feed_live(
    app: &App,
    who: &Who,
    sub: &Subscriber,
    socket: &mut WebSocket,
    frame: Frame,
) -> bool {
    if let Who::Agent(_) = who
        && frame.contains("\"type\":\"chat_assigned\"")
        && let Ok(v) = serde_json::from_str::<Value>(&frame)
        && v["type"] == "chat_assigned"
        && let Some(id) = v["conversation"]["id"]
            .as_str()
            .and_then(|s| s.parse::<ConversationId>().ok())
    {
        app.hub
            .subscribe(Topic::Conversation(who.tenant(), id), sub);
    }
    socket
        .feed(Message::Text(Utf8Bytes::from(frame.to_string())))
        .await
        .is_ok()
}

/// Queue the live frames waiting for this socket, up to `WRITE_AT_ONCE` frames in all counting
/// the `fed` ones already queued, so that one flush writes them together.
async fn feed_waiting(
    app: &App,
    who: &Who,
    sub: &Subscriber,
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<Frame>,
    mut fed: usize,
) -> bool {
    while fed < WRITE_AT_ONCE {
        let Ok(frame) = rx.try_recv() else {
            return true;
        };
        if !feed_live(app, who, sub, socket, frame).await {
            return false;
        }
        fed += 1;
    }
    true
}

async fn handle(
    app: &App,
    who: &Who,
    sub: &Subscriber,
    frame: Option<ClientFrame>,
) -> Option<Message> {
    let frame = match frame {
        Some(f) => f,
        None => {
            return Some(error_frame(
                "bad_frame",
                "unknown or malformed frame; see docs/PROTOCOL.md",
            ));
        }
    };
    let conv = |id: &str| id.parse::<ConversationId>().ok();
    match frame {
        ClientFrame::Hello { .. } => Some(error_frame("bad_frame", "already said hello")),
        ClientFrame::Ping => Some(text(json!({ "type": "pong" }))),
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
        } => {
            let Some(c) = conv(&conversation_id) else {
                return Some(text(
                    json!({ "type": "nack", "client_msg_id": client_msg_id, "code": "not_found", "message": "no such conversation" }),
                ));
            };
            match app
                .send_message(who.actor(), c, &client_msg_id, &body)
                .await
            {
                Ok(a) => Some(text(
                    json!({ "type": "ack", "conversation_id": c, "client_msg_id": client_msg_id, "seq": a.seq, "duplicate": a.duplicate }),
                )),
                Err(e) => {
                    let (code, message) = app_error_code(&e);
                    Some(text(
                        json!({ "type": "nack", "conversation_id": c, "client_msg_id": client_msg_id, "code": code, "message": message }),
                    ))
                }
            }
        }
        ClientFrame::Typing {
            conversation_id,
            on,
        } => {
            let c = conv(&conversation_id)?;
            app.typing(who.actor(), c, on).await.err().map(|e| {
                let (code, message) = app_error_code(&e);
                error_frame(code, &message)
            })
        }
        ClientFrame::Resume {
            conversation_id,
            since,
        } => {
            let Some(c) = conv(&conversation_id) else {
                return Some(error_frame("not_found", "no such conversation"));
            };
            // Listen first, then replay: an event in between arrives twice and the client drops
            // the copy by its seq; none is missed.
            if let Err(e) = app.events_since(who.actor(), c, i64::MAX).await {
                let (code, message) = app_error_code(&e);
                return Some(error_frame(code, &message));
            }
            app.hub.subscribe(Topic::Conversation(who.tenant(), c), sub);
            match app.events_since(who.actor(), c, since).await {
                Ok(events) => {
                    if let Who::Visitor(v) = who
                        && let Err(e) = app.resend_queue_place(v.tenant, c).await
                    {
                        tracing::warn!(error = %e, "asking for a queue place failed");
                    }
                    let last = events.last().map_or(since, |e| e.seq);
                    Some(text(
                        json!({ "type": "resumed", "conversation_id": c, "events": events, "last_seq": last }),
                    ))
                }
                Err(e) => {
                    let (code, message) = app_error_code(&e);
                    Some(error_frame(code, &message))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_per_ip_are_capped_and_places_come_back() {
        let limits = Arc::new(SocketLimits::default());
        let mut held: Vec<SocketPlace> = (0..MAX_SOCKETS_PER_IP)
            .map(|_| limits.acquire("10.0.0.1").unwrap())
            .collect();
        assert!(limits.acquire("10.0.0.1").is_none(), "the cap holds");
        assert!(
            limits.acquire("10.0.0.2").is_some(),
            "other addresses are not affected"
        );
        held.pop();
        assert!(
            limits.acquire("10.0.0.1").is_some(),
            "a closed socket frees its place"
        );
        drop(held);
        assert!(
            limits.per_ip.lock().unwrap().get("10.0.0.1").is_none(),
            "no entry left behind"
        );
    }
}
