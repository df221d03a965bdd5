//! The yardstick: a WebSocket relay that speaks the same frames as Parley for a chat (hello,
//! send -> ack to the sender and event to the peer) with no storage, authentication or
//! encryption. Whatever Parley does beyond this is the cost of its guarantees.
//! Tickets are `relay:<pair>:<visitor|agent>`.

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

pub async fn serve(listen: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!(
        "relay listening on ws://{}/ws",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let peers: Peers = Arc::default();
    let seq = Arc::new(AtomicI64::new(0));
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let (peers, seq) = (peers.clone(), seq.clone());
        tokio::spawn(async move {
            let mut config = WebSocketConfig::default();
            config.read_buffer_size = 4 * 1024;
            config.write_buffer_size = 4 * 1024;
            config.max_message_size = Some(16 * 1024);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            let (sink, mut stream) = ws.split();
            let (tx, writer) = crate::target::spawn_writer(sink);
            let mut me: Option<String> = None;
            let mut peer_key: Option<String> = None;
            while let Some(Ok(Message::Text(t))) = stream.next().await {
                let Ok(f) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                match f["type"].as_str() {
                    Some("hello") => {
                        let ticket = f["ticket"].as_str().unwrap_or_default();
                        let parts: Vec<&str> = ticket.split(':').collect();
                        if let [_, pair, role] = parts[..] {
                            let other = if role == "visitor" {
                                "agent"
                            } else {
                                "visitor"
                            };
                            me = Some(format!("{pair}:{role}"));
                            peer_key = Some(format!("{pair}:{other}"));
                            crate::target::lock(&peers)
                                .insert(format!("{pair}:{role}"), tx.clone());
                            let _ = tx.send(Message::text(json!({ "type": "ready" }).to_string()));
                        }
                    }
                    Some("send") => {
                        let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                        let _ = tx.send(Message::text(
                            json!({ "type": "ack", "client_msg_id": f["client_msg_id"], "seq": n, "duplicate": false }).to_string(),
                        ));
                        if let Some(p) = peer_key
                            .as_ref()
                            .and_then(|k| crate::target::lock(&peers).get(k).cloned())
                        {
                            let _ = p.send(Message::text(
                                json!({ "type": "event", "kind": "message", "seq": n, "client_msg_id": f["client_msg_id"], "body": f["body"] })
                                    .to_string(),
                            ));
                        }
                    }
                    Some("ping") => {
                        let _ = tx.send(Message::text(json!({ "type": "pong" }).to_string()));
                    }
                    _ => {}
                }
            }
            if let Some(me) = me {
                crate::target::lock(&peers).remove(&me);
            }
            writer.abort();
        });
    }
}
