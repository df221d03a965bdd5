//! Losing the connection, and the server: the reconnect storm and the crash scenarios. Both use
//! a visitor client that behaves as the widget does (it keeps what it has seen by sequence
//! number, resumes after the last one, and resends what was never acknowledged under the same
//! `client_msg_id`) and a history checker that compares what every client was told with what the
//! server stored:
//!
//! - every acknowledged message is stored, exactly once, under the sequence number of its ack;
//! - every conversation's log is gapless (1..n);
//! - no client missed an event up to the last one it saw (live or on resume).

use crate::target::{self, Bench, Server, ServerArgs, lock, open_socket, run_socket};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct StormArgs {
    /// Connected visitors, each in a conversation.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// The reconnects are spread over this many milliseconds (as clients' back-off jitter would).
    #[arg(long, default_value_t = 2000)]
    jitter_ms: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CrashArgs {
    /// Visitors sending.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Messages per second, all visitors together.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of load; the server is killed half-way.
    #[arg(long, default_value_t = 6)]
    secs: u64,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Seen {
    /// seq -> client_msg_id, of every event this client received (live or on resume).
    events: BTreeMap<i64, Option<String>>,
    /// client_msg_id -> seq, of every acknowledged message.
    acked: HashMap<String, i64>,
    /// Sent and not yet acknowledged: client_msg_id -> body.
    pending: BTreeMap<String, String>,
    /// Acks that said the message was already stored (a resend after a lost ack).
    duplicates: usize,
    resumed: bool,
}

impl Seen {
    fn last_seq(&self) -> i64 {
        self.events.keys().next_back().copied().unwrap_or(0)
    }
}

struct Client {
    i: usize,
    token: String,
    conversation: String,
    seen: Mutex<Seen>,
    tx: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    changed: Notify,
}

impl Client {
    fn on_frame(&self, f: &Value) {
        let mut s = lock(&self.seen);
        let record = |s: &mut Seen, e: &Value| {
            if let Some(seq) = e["seq"].as_i64() {
                s.events
                    .insert(seq, e["client_msg_id"].as_str().map(str::to_owned));
            }
        };
        match f["type"].as_str() {
            Some("resumed") => {
                for e in f["events"].as_array().into_iter().flatten() {
                    record(&mut s, e);
                }
                s.resumed = true;
            }
            Some("event") => record(&mut s, f),
            Some("ack") => {
                if let (Some(id), Some(seq)) = (f["client_msg_id"].as_str(), f["seq"].as_i64()) {
                    s.pending.remove(id);
                    s.acked.insert(id.to_owned(), seq);
                    if f["duplicate"] == true {
                        s.duplicates += 1;
                    }
                }
            }
            _ => return,
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A ticket, the socket, and a resume after the last event seen; then resend whatever was
    /// never acknowledged. Returns once the server has answered the resume.
    async fn connect(self: &Arc<Self>, bench: &Bench) -> Result<(), String> {
        let ticket = bench.visitor_ticket(self.i, &self.token).await?;
        let ws = open_socket(&bench.ws_url, &ticket).await?;
        lock(&self.seen).resumed = false;
        let me = self.clone();
        let (tx, reader) = run_socket(ws, move |f, _| me.on_frame(&f));
        let since = lock(&self.seen).last_seq();
        let resume =
            json!({ "type": "resume", "conversation_id": self.conversation, "since": since });
        tx.send(Message::text(resume.to_string()))
            .map_err(|e| e.to_string())?;
        crate::target::keep_alive(&tx);
        *lock(&self.tx) = Some(tx);
        *lock(&self.reader) = Some(reader);
        self.wait(|s| s.resumed, Duration::from_secs(30)).await?;
        let pending: Vec<(String, String)> = lock(&self.seen)
            .pending
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, body) in pending {
            self.frame(&id, &body);
        }
        Ok(())
    }

    fn frame(&self, id: &str, body: &str) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let f = json!({ "type": "send", "conversation_id": self.conversation, "client_msg_id": id, "body": body });
            let _ = tx.send(Message::text(f.to_string()));
        }
    }

    /// Send over the socket (or keep it for after the reconnect if there is none).
    fn send(&self, id: String) {
        let body = format!("message {id}");
        lock(&self.seen).pending.insert(id.clone(), body.clone());
        self.frame(&id, &body);
    }

    /// Drop the connection without a goodbye.
    fn drop_connection(&self) {
        lock(&self.tx).take();
        if let Some(r) = lock(&self.reader).take() {
            r.abort();
        }
    }

    fn connected(&self) -> bool {
        lock(&self.reader)
            .as_ref()
            .is_some_and(|r| !r.is_finished())
    }

    async fn wait(&self, done: impl Fn(&Seen) -> bool, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&lock(&self.seen)) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("visitor {}: timed out", self.i));
            }
        }
    }
}

/// `n` visitors in conversation, with agents online (50 chats each) so that chats can start.
async fn new_clients(
    bench: &Arc<Bench>,
    n: usize,
    width: usize,
) -> Result<Vec<Arc<Client>>, String> {
    let t = Instant::now();
    target::for_each_bounded(n.div_ceil(50), 2, |i| bench.agent(i, 50)).await?;
    eprintln!(
        "{} agents online in {:.1} s",
        n.div_ceil(50),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let clients = target::for_each_bounded(n, width, |i| {
        let bench = bench.clone();
        async move {
            let token = bench.visitor(i).await?;
            let conversation = bench.start_chat(i, &token).await?;
            let c = Arc::new(Client {
                i,
                token,
                conversation,
                seen: Mutex::default(),
                tx: Mutex::default(),
                reader: Mutex::default(),
                changed: Notify::new(),
            });
            c.connect(&bench).await?;
            Ok(c)
        }
    })
    .await?;
    eprintln!(
        "{n} visitors in chats and connected in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(clients)
}

/// What the history check found.
#[derive(Debug, Default, serde::Serialize)]
struct Verdict {
    conversations: usize,
    acknowledged: usize,
    /// Acknowledged but not stored, or stored under another seq.
    lost: usize,
    /// A client_msg_id stored more than once.
    duplicated: usize,
    /// Stored seqs missing from 1..n.
    log_gaps: usize,
    /// Stored events up to a client's last seen seq that the client never received.
    missed_by_clients: usize,
    /// Sent but never acknowledged by the end.
    unacknowledged: usize,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.lost + self.duplicated + self.log_gaps + self.missed_by_clients + self.unacknowledged
            == 0
    }
}

async fn check(bench: &Arc<Bench>, clients: &[Arc<Client>]) -> Result<Verdict, String> {
    let histories = target::for_each_bounded(clients.len(), 32, |i| {
        let (bench, c) = (bench.clone(), clients[i].clone());
        async move { bench.visitor_history(c.i, &c.token, &c.conversation).await }
    })
    .await?;
    let mut v = Verdict {
        conversations: clients.len(),
        ..Verdict::default()
    };
    for (c, stored) in clients.iter().zip(histories) {
        let s = lock(&c.seen);
        v.acknowledged += s.acked.len();
        v.unacknowledged += s.pending.len();
        let seqs: Vec<i64> = stored.iter().filter_map(|e| e["seq"].as_i64()).collect();
        v.log_gaps += seqs
            .iter()
            .enumerate()
            .filter(|(k, seq)| **seq != *k as i64 + 1)
            .count();
        let mut by_id: HashMap<&str, Vec<i64>> = HashMap::new();
        for e in &stored {
            if let (Some(id), Some(seq)) = (e["client_msg_id"].as_str(), e["seq"].as_i64()) {
                by_id.entry(id).or_default().push(seq);
            }
        }
        v.duplicated += by_id.values().filter(|s| s.len() > 1).count();
        v.lost += s
            .acked
            .iter()
            .filter(|(id, seq)| by_id.get(id.as_str()) != Some(&vec![**seq]))
            .count();
        let last = s.last_seq();
        v.missed_by_clients += seqs
            .iter()
            .filter(|seq| **seq <= last && !s.events.contains_key(seq))
            .count();
    }
    Ok(v)
}

fn report(v: &Verdict) {
    eprintln!(
        "history check over {} conversations: {} acknowledged messages, lost {}, duplicated {}, log gaps {}, missed by clients {}, never acknowledged {} -> {}",
        v.conversations,
        v.acknowledged,
        v.lost,
        v.duplicated,
        v.log_gaps,
        v.missed_by_clients,
        v.unacknowledged,
        if v.clean() { "OK" } else { "FAILED" }
    );
}

fn command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Every client sends one message over its socket and waits for the ack.
async fn one_round(clients: &[Arc<Client>], tag: &str) -> Result<(), String> {
    for c in clients {
        c.send(format!("{tag}{}", c.i));
    }
    for c in clients {
        c.wait(|s| s.pending.is_empty(), Duration::from_secs(60))
            .await?;
    }
    Ok(())
}

pub async fn storm(args: StormArgs) -> Result<(), String> {
    let n = args.clients.max(1);
    let server = Server::spawn(&args.server)?;
    let bench = Arc::new(Bench::setup(&server).await?);
    eprintln!("parley at {} ({n} visitors)", server.base);
    let clients = new_clients(&bench, n, args.concurrency).await?;
    one_round(&clients, "before-").await?;
    // Everyone drops at once; while they are away, each writes once more (from another tab, or
    // the HTTP fallback), and that must reach them on resume.
    for c in &clients {
        c.drop_connection();
    }
    target::for_each_bounded(n, args.concurrency, |i| {
        let (bench, c) = (bench.clone(), clients[i].clone());
        async move {
            let id = format!("away-{}", c.i);
            let r = bench
                .visitor_request(
                    c.i,
                    reqwest::Method::POST,
                    &format!("/api/widget/conversations/{}/messages", c.conversation),
                    target::Auth::Bearer(&c.token),
                    Some(json!({ "client_msg_id": id, "body": "written while away" })),
                )
                .await?;
            let seq = r["seq"].as_i64().ok_or("no seq")?;
            lock(&c.seen).acked.insert(id, seq);
            Ok(())
        }
    })
    .await?;
    // The storm: all reconnect within the jitter window, at once.
    let start = Instant::now();
    let mut tasks = vec![];
    for (k, c) in clients.iter().enumerate() {
        let (bench, c) = (bench.clone(), c.clone());
        let delay = Duration::from_millis(args.jitter_ms * k as u64 / n as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut tries = 0;
            loop {
                tries += 1;
                match c.connect(&bench).await {
                    Ok(()) => return Ok((start.elapsed(), tries)),
                    Err(e) if tries >= 20 => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
    }
    let mut times = vec![];
    let mut retries = 0;
    for t in tasks {
        let (at, tries): (Duration, u32) = t.await.map_err(|e| e.to_string())??;
        times.push(at.as_micros() as u64);
        retries += tries - 1;
    }
    let all_resumed = start.elapsed().as_secs_f64();
    let resume = crate::stats::summarize(times);
    eprintln!(
        "{n} visitors dropped and reconnected (spread over {} ms): all resumed in {all_resumed:.2} s; per visitor p50 {:.0} ms, p99 {:.0} ms after the storm began; {retries} retries",
        args.jitter_ms, resume.p50_ms, resume.p99_ms
    );
    one_round(&clients, "after-").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = json!({ "scenario": "storm", "target": "parley-sqlite", "clients": n, "jitter_ms": args.jitter_ms,
                         "all_resumed_secs": all_resumed, "resume": resume, "retries": retries });
    finish(&bench, &clients, args.json.then_some(result)).await
}

/// The history check, its report and the command; with `json`, that result with the check's
/// verdict added is printed. Fails when the check does.
async fn finish(
    bench: &Arc<Bench>,
    clients: &[Arc<Client>],
    json: Option<Value>,
) -> Result<(), String> {
    let verdict = check(bench, clients).await?;
    report(&verdict);
    eprintln!("command: {}", command());
    if let Some(mut result) = json {
        result["history"] = json!(verdict);
        result["ok"] = json!(verdict.clean());
        result["command"] = json!(command());
        println!("{result}");
    }
    if verdict.clean() {
        Ok(())
    } else {
        Err("the history check failed".into())
    }
}

pub async fn crash(args: CrashArgs) -> Result<(), String> {
    let n = args.clients.max(1);
    let mut server = Server::spawn(&args.server)?;
    let bench = Arc::new(Bench::setup(&server).await?);
    eprintln!("parley at {} ({n} visitors)", server.base);
    let clients = new_clients(&bench, n, 32).await?;
    // Reconnect whoever lost their socket, as the widget does, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let (clients, bench, stop) = (clients.clone(), bench.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for c in clients.iter().filter(|c| !c.connected()) {
                    c.drop_connection();
                    let (c, bench) = (c.clone(), bench.clone());
                    tokio::spawn(async move {
                        let _ = c.connect(&bench).await;
                    });
                }
            }
        })
    };
    let total = args.rate * args.secs;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut killed_at = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        if killed_at.is_none() && start.elapsed().as_secs_f64() >= args.secs as f64 / 2.0 {
            eprintln!("kill -9 the server after {sent} sends; restarting it");
            let t = Instant::now();
            server.kill();
            server.restart()?;
            eprintln!("restarted in {:.2} s", t.elapsed().as_secs_f64());
            killed_at = Some(t);
        }
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            clients[(sent as usize) % n].send(format!("m{sent}"));
            sent += 1;
        }
    }
    // Wait for every message to be acknowledged (resent after the reconnect where needed).
    let mut recovered = true;
    for c in &clients {
        if c.wait(|s| s.pending.is_empty(), Duration::from_secs(30))
            .await
            .is_err()
        {
            recovered = false;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = keeper.await;
    let since_kill = killed_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let duplicates: usize = clients.iter().map(|c| lock(&c.seen).duplicates).sum();
    eprintln!(
        "{sent} messages sent at {}/s; all acknowledged: {recovered} ({since_kill:.1} s after the kill); {duplicates} resends found already stored (their ack was lost with the server)",
        args.rate
    );
    let result = json!({ "scenario": "crash", "target": "parley-sqlite", "clients": n, "rate": args.rate,
                         "sent": sent, "resends_already_stored": duplicates });
    finish(&bench, &clients, args.json.then_some(result)).await
}
