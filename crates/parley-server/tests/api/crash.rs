//! Nothing acknowledged is lost: the server process is aborted (like `kill -9`) right after a
//! commit, right after publishing, and right after acknowledging; it restarts on the same data;
//! clients reconnect, resume from their last seq and resend what was not acknowledged, with the
//! same client ids. Then the full history is checked: every acknowledged message is there exactly
//! once, in the order sent, no sequence number is missing or doubled, and each side saw each event
//! once after de-duplicating by seq.

use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

struct Node {
    child: KillOnDrop,
    base: String,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment for `parley` processes of this test: its data directory and, on PostgreSQL,
/// a database of its own.
fn env(cmd: &mut Command, dir: &std::path::Path, database_url: Option<&str>) {
    cmd.env("PARLEY_DATA_DIR", dir)
        .env_remove("PARLEY_MASTER_KEY_FILE");
    match database_url {
        Some(url) => cmd.env("PARLEY_DATABASE_URL", url),
        None => cmd.env_remove("PARLEY_DATABASE_URL"),
    };
}

/// Start a node on `port` and wait for its own "listening" log line. Another test may have taken
/// the port meanwhile: then the node exits and the next free port is tried, so a node's address
/// can change across restarts (clients follow `node.base`).
async fn start(
    dir: &std::path::Path,
    database_url: Option<&str>,
    port: u16,
    fault: Option<&str>,
) -> Node {
    use std::io::{BufRead, BufReader};
    let mut port = port;
    for _ in 0..20 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        env(&mut cmd, dir, database_url);
        cmd.env("PARLEY_LOG", "info")
            .env("PARLEY_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match fault {
            Some(f) => cmd.env("PARLEY_FAULT", f),
            None => cmd.env_remove("PARLEY_FAULT"),
        };
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let want = format!("listening on http://127.0.0.1:{port}");
        let listening = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let ok = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains(&want));
            // Keep draining, so the node never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            ok
        })
        .await
        .unwrap();
        if listening {
            return Node {
                child: KillOnDrop(child),
                base: format!("http://127.0.0.1:{port}"),
                port,
            };
        }
        let _ = child.wait();
        port = free_port();
    }
    panic!("no node could start");
}

/// A socket client that records what it saw and re-sends until acknowledged.
struct Side {
    conv: String,
    last_seq: i64,
    seen: BTreeMap<i64, Value>,
    acked: HashMap<String, i64>,
}

impl Side {
    fn new(conv: &str) -> Side {
        Side {
            conv: conv.into(),
            last_seq: 0,
            seen: BTreeMap::new(),
            acked: HashMap::new(),
        }
    }

    fn apply(&mut self, e: &Value) {
        let seq = e["seq"].as_i64().unwrap();
        // Applied once per seq; a repeat must be identical.
        if let Some(prev) = self.seen.get(&seq) {
            assert_eq!(
                prev["body"], e["body"],
                "seq {seq} delivered twice with different content"
            );
        } else {
            self.seen.insert(seq, e.clone());
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// Connect, resume, and send `messages` (id, body) one by one until each is acknowledged or
    /// the node dies. Returns false if the connection broke.
    async fn run(&mut self, ws: &mut Ws, messages: &[(String, String)]) -> bool {
        ws.send(json!({ "type": "resume", "conversation_id": self.conv, "since": self.last_seq }))
            .await;
        let r = ws.until("resumed").await;
        if r["type"] == "closed" {
            return false;
        }
        for e in r["events"].as_array().unwrap() {
            self.apply(e);
        }
        for (id, body) in messages {
            if self.acked.contains_key(id) {
                continue;
            }
            ws.send(json!({ "type": "send", "conversation_id": self.conv, "client_msg_id": id, "body": body })).await;
            loop {
                let f = ws.next().await;
                match f["type"].as_str().unwrap() {
                    "closed" => return false,
                    "event" => self.apply(&f),
                    "ack" if f["client_msg_id"] == id.as_str() => {
                        self.acked.insert(id.clone(), f["seq"].as_i64().unwrap());
                        break;
                    }
                    "nack" => panic!("unexpected nack {f}"),
                    _ => {}
                }
            }
        }
        true
    }
}

async fn ws_to(base: &str, port: u16, ticket: &str) -> Option<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", base.parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(req).await.ok()?;
    let mut ws = Ws::from_stream(stream);
    ws.send(json!({ "type": "hello", "ticket": ticket })).await;
    (ws.next().await["type"] == "ready").then_some(ws)
}

/// Fresh tickets and sockets for the visitor and the agent; None if the node is (going) down.
async fn connect_both(
    node: &Node,
    http: &reqwest::Client,
    vtoken: &str,
    agent: &Client,
) -> Option<(Ws, Ws)> {
    let vt: Value = http
        .post(format!("{}/api/widget/ticket", node.base))
        .bearer_auth(vtoken)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let csrf = agent.csrf.lock().unwrap().clone()?;
    let at = agent
        .http
        .post(format!("{}/api/console/ticket", node.base))
        .header("x-csrf-token", csrf)
        .send()
        .await
        .ok()?;
    let at: Value = at.json().await.ok()?;
    let vws = ws_to(&node.base, node.port, vt["ticket"].as_str()?).await?;
    let aws = ws_to(&node.base, node.port, at["ticket"].as_str()?).await?;
    Some((vws, aws))
}

crate::both!(acknowledged_messages_survive_kill_9_at_every_step);
async fn acknowledged_messages_survive_kill_9_at_every_step(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pg = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(PgDatabase::create().await),
    };
    let url = pg.as_ref().map(|p| p.url.clone());
    let url = url.as_deref();

    // Set up a tenant, an online agent and an assigned chat on a clean node.
    let mut node = start(dir.path(), url, port, None).await;
    let mut create = Command::new(env!("CARGO_BIN_EXE_parley"));
    create.args([
        "tenant",
        "create",
        "--name",
        "Acme",
        "--admin-email",
        "admin@acme.test",
        "--json",
    ]);
    env(&mut create, dir.path(), url);
    let out = create.output().unwrap();
    let tenant: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = Client::new(node.base.clone());
    admin
        .first_sign_in(
            "acme",
            "admin@acme.test",
            tenant["one_time_password"].as_str().unwrap(),
        )
        .await;
    let dept = value_str(
        &admin
            .post("/api/departments", json!({ "name": "Sales" }))
            .await
            .body["id"],
    );
    let r = admin.post("/api/users", json!({ "email": "a@acme.test", "display_name": "A", "role": "agent", "department_ids": [dept] })).await;
    let agent = Client::new(node.base.clone());
    agent
        .first_sign_in(
            "acme",
            "a@acme.test",
            r.body["one_time_password"].as_str().unwrap(),
        )
        .await;
    agent
        .send(
            "PUT",
            "/api/console/status",
            Some(json!({ "status": "online" })),
        )
        .await;
    let http = reqwest::Client::new();
    let session: Value = http
        .post(format!("{}/api/widget/session", node.base))
        .json(&json!({ "site_key": tenant["site_key"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vtoken = value_str(&session["visitor_token"]);
    let conv: Value = http
        .post(format!("{}/api/widget/conversations", node.base))
        .bearer_auth(&vtoken)
        .json(&json!({ "department_id": dept, "name": "V" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = value_str(&conv["id"]);
    let r = agent
        .post(
            &format!("/api/console/conversations/{conv}/accept"),
            json!(null),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{:?}", r.body);

    let visitor_msgs: Vec<(String, String)> = (0..30)
        .map(|i| (format!("v{i}"), format!("visitor message {i}")))
        .collect();
    let agent_msgs: Vec<(String, String)> = (0..30)
        .map(|i| (format!("a{i}"), format!("agent message {i}")))
        .collect();
    let mut visitor = Side::new(&conv);
    let mut agent_side = Side::new(&conv);
    let mut crashes = 0;

    // Each phase runs with one crash point armed; the visitor sends 10 messages per phase and the
    // agent 10, interleaved by running both concurrently.
    for (phase, fault) in ["after_commit:4", "after_publish:6", "after_ack:5"]
        .iter()
        .enumerate()
    {
        node.child.0.kill().ok();
        node.child.0.wait().ok();
        node = start(dir.path(), url, node.port, Some(fault)).await;
        let range = phase * 10..phase * 10 + 10;
        // Run until the phase is done or the armed crash kills the node mid-way.
        if let Some((mut vws, mut aws)) = connect_both(&node, &http, &vtoken, &agent).await {
            tokio::join!(
                visitor.run(&mut vws, &visitor_msgs[range.clone()]),
                agent_side.run(&mut aws, &agent_msgs[range.clone()])
            );
        }
        // Did the armed fault fire? Then the process is gone: restart clean and finish the phase.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if node.child.0.try_wait().unwrap().is_some() {
            crashes += 1;
            node = start(dir.path(), url, node.port, None).await;
            let (mut vws, mut aws) = connect_both(&node, &http, &vtoken, &agent)
                .await
                .expect("clean node accepts sockets");
            let (v_ok, a_ok) = tokio::join!(
                visitor.run(&mut vws, &visitor_msgs[range.clone()]),
                agent_side.run(&mut aws, &agent_msgs[range.clone()])
            );
            assert!(v_ok && a_ok, "clean node must finish the phase");
        }
    }
    assert_eq!(crashes, 3, "every armed crash point fired");

    // Final catch-up for both sides, then check the whole history.
    let (mut vws, mut aws) = connect_both(&node, &http, &vtoken, &agent)
        .await
        .expect("sockets");
    assert!(visitor.run(&mut vws, &[]).await);
    assert!(agent_side.run(&mut aws, &[]).await);

    let history: Value = agent
        .http
        .get(format!("{}/api/conversations/{conv}", node.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = history["events"].as_array().unwrap().clone();
    let seqs: Vec<i64> = history.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless, no doubles"
    );
    let mut by_client: HashMap<String, Vec<i64>> = HashMap::new();
    for e in history.iter().filter(|e| e["kind"] == "message") {
        by_client
            .entry(value_str(&e["client_msg_id"]))
            .or_default()
            .push(e["seq"].as_i64().unwrap());
    }
    for (id, body) in visitor_msgs.iter().chain(agent_msgs.iter()) {
        let stored = by_client.get(id).unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(stored.len(), 1, "{id} stored {} times", stored.len());
        let e = history.iter().find(|e| e["seq"] == stored[0]).unwrap();
        assert_eq!(e["body"], body.as_str());
        // Every ack the client got names the stored seq.
        let acked = visitor
            .acked
            .get(id)
            .or_else(|| agent_side.acked.get(id))
            .unwrap();
        assert_eq!(*acked, stored[0], "{id}: ack seq = stored seq");
    }
    // Each side's own messages are stored in the order it sent them.
    for (side, prefix) in [(&visitor_msgs, "v"), (&agent_msgs, "a")] {
        let order: Vec<i64> = side.iter().map(|(id, _)| by_client[id][0]).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{prefix}: order kept");
    }
    // Both sides ended up with exactly the stored history.
    for side in [&visitor, &agent_side] {
        assert_eq!(side.seen.keys().copied().collect::<Vec<_>>(), seqs);
    }
    node.child.0.kill().ok();
    node.child.0.wait().ok();
    drop(node);
    if let Some(pg) = pg {
        pg.drop().await;
    }
}
