//! The peer: XMPP over WebSocket (RFC 7395) against ejabberd, so the same sweep can be run
//! against an established chat server. Each visitor/agent pair is two XMPP users; a visitor's
//! message is acknowledged by stream management (XEP-0198: `<r/>` after each message, the
//! server's `<a h='n'/>` covers every stanza up to n), which with the message archive (MAM) on
//! SQLite stands in for Parley's "stored before acknowledged". Users are registered through
//! ejabberd's HTTP API (see bench/peers/ejabberd/).

use crate::target::{Ws, lock};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message;

pub const PASSWORD: &str = "load-test-password";

/// Register `user@domain` through ejabberd's HTTP API (`api` is its base URL, e.g.
/// http://127.0.0.1:5280/api). An existing user is fine.
pub async fn register(api: &str, domain: &str, user: &str) -> Result<(), String> {
    let res = reqwest::Client::new()
        .post(format!("{api}/register"))
        .json(&serde_json::json!({ "user": user, "host": domain, "password": PASSWORD }))
        .send()
        .await
        .map_err(|e| format!("{api}/register: {e}"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if status.is_success() || body.contains("already registered") {
        Ok(())
    } else {
        Err(format!("{api}/register {user}: {status} {body}"))
    }
}

/// The value of attribute `name` in the first tag of `xml` (no entity decoding: our values
/// carry none).
pub fn attr<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let tag_end = xml.find('>').unwrap_or(xml.len());
    let tag = &xml[..tag_end];
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(i) = tag.find(&key) {
            let rest = &tag[i + key.len()..];
            return rest.find(quote).map(|j| &rest[..j]);
        }
    }
    None
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// Read frames until one starts with `prefix` (after the `<`), skipping the rest.
async fn expect(ws: &mut Ws, prefixes: &[&str]) -> Result<String, String> {
    for _ in 0..20 {
        let t = next_text(ws).await?;
        let bare = t.trim_start().trim_start_matches('<');
        if prefixes.iter().any(|p| bare.starts_with(p)) {
            return Ok(t);
        }
        if bare.starts_with("failure")
            || bare.starts_with("stream:error")
            || bare.starts_with("close")
        {
            return Err(format!("the server refused: {t}"));
        }
    }
    Err(format!("no {prefixes:?} from the server"))
}

async fn say(ws: &mut Ws, xml: String) -> Result<(), String> {
    ws.send(Message::text(xml)).await.map_err(|e| e.to_string())
}

fn open(domain: &str) -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>")
}

/// Sign in (SASL PLAIN), bind a resource, enable stream management and send initial presence.
pub async fn login(url: &str, domain: &str, user: &str) -> Result<Ws, String> {
    use base64::Engine;
    let mut ws = crate::target::connect_ws(url, Some("xmpp")).await?;
    say(&mut ws, open(domain)).await?;
    expect(&mut ws, &["stream:features", "features"]).await?;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{PASSWORD}"));
    say(
        &mut ws,
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"),
    )
    .await?;
    expect(&mut ws, &["success"]).await?;
    say(&mut ws, open(domain)).await?;
    expect(&mut ws, &["stream:features", "features"]).await?;
    say(
        &mut ws,
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>load</resource></bind></iq>".into(),
    )
    .await?;
    expect(&mut ws, &["iq"]).await?;
    say(&mut ws, "<enable xmlns='urn:xmpp:sm:3'/>".into()).await?;
    expect(&mut ws, &["enabled"]).await?;
    say(&mut ws, "<presence/>".into()).await?;
    Ok(ws)
}

/// Stream-management bookkeeping of one socket: stanzas sent (to map the server's `<a h/>` to
/// messages) and received (to answer the server's `<r/>`).
#[derive(Default)]
pub struct Counters {
    /// Stanza numbers of messages not yet acknowledged, with their ids.
    pub unacked: VecDeque<(u64, String)>,
    pub sent: u64,
    pub received: u64,
}

pub type Shared = Arc<Mutex<Counters>>;

/// The frames for one chat message and the ack request after it; records its stanza number.
/// Our presence was stanza 1.
pub fn message(c: &Shared, to: &str, id: &str, body: &str) -> [String; 2] {
    let mut c = lock(c);
    if c.sent == 0 {
        c.sent = 1;
    }
    c.sent += 1;
    let n = c.sent;
    c.unacked.push_back((n, id.to_owned()));
    [
        format!("<message to='{to}' id='{id}' type='chat'><body>{body}</body></message>"),
        "<r xmlns='urn:xmpp:sm:3'/>".into(),
    ]
}

/// What an incoming frame means for the load: the ids it acknowledges (an `<a h/>`), the id of a
/// message delivered, and the answer owed to an `<r/>`.
pub fn incoming(c: &Shared, frame: &str) -> (Vec<String>, Option<String>, Option<String>) {
    let bare = frame.trim_start().trim_start_matches('<');
    let mut c = lock(c);
    if bare.starts_with("a ") || bare.starts_with("a/") {
        let h: u64 = attr(frame, "h").and_then(|h| h.parse().ok()).unwrap_or(0);
        let mut acked = vec![];
        while c.unacked.front().is_some_and(|(n, _)| *n <= h) {
            if let Some((_, id)) = c.unacked.pop_front() {
                acked.push(id);
            }
        }
        return (acked, None, None);
    }
    if bare.starts_with("r ") || bare.starts_with("r/") {
        return (
            vec![],
            None,
            Some(format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", c.received)),
        );
    }
    if bare.starts_with("message") || bare.starts_with("presence") || bare.starts_with("iq") {
        c.received += 1;
        if bare.starts_with("message") && frame.contains("<body>") {
            return (vec![], attr(frame, "id").map(str::to_owned), None);
        }
    }
    (vec![], None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_cover_every_stanza_up_to_h() {
        let c = Shared::default();
        message(&c, "a@x", "m1", "hi");
        message(&c, "a@x", "m2", "hi");
        message(&c, "a@x", "m3", "hi");
        // Presence was 1, so the messages are 2, 3 and 4.
        let (acked, _, _) = incoming(&c, "<a xmlns='urn:xmpp:sm:3' h='3'/>");
        assert_eq!(acked, vec!["m1", "m2"]);
        let (acked, _, _) = incoming(&c, "<a xmlns='urn:xmpp:sm:3' h='4'/>");
        assert_eq!(acked, vec!["m3"]);
        let (_, id, _) = incoming(
            &c,
            "<message from='v@x/load' to='a@x' id=\"m9\" type='chat'><body>hi</body></message>",
        );
        assert_eq!(id.as_deref(), Some("m9"));
        let (_, _, answer) = incoming(&c, "<r xmlns='urn:xmpp:sm:3'/>");
        assert_eq!(answer.as_deref(), Some("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    }
}
