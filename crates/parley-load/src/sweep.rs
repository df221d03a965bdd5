//! The sweep scenario: P visitor/agent pairs in conversation, each step at a fixed offered rate
//! (open loop: sends go out on schedule whether or not earlier ones were answered). For every
//! message it records the ack latency (sent -> durably acknowledged, at the visitor) and the
//! delivery latency (sent -> received by the agent).

use crate::stats::{Latency, summarize};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Offered rates, messages per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    rates: Vec<u64>,
    /// Visitors in conversation. Parley lets one socket send at most 20 frames a second, so use
    /// at least a tenth of the highest rate (real visitors send far less than one a second).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Visitors each agent serves at once (the agents' capacity).
    #[arg(long, default_value_t = 10)]
    visitors_per_agent: usize,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// The `parley` binary to spawn [default: next to this one].
    #[arg(long)]
    parley: Option<std::path::PathBuf>,
    /// Pin the spawned server to this CPU (with taskset).
    #[arg(long)]
    server_cpu: Option<u32>,
    /// Drive a relay at this WebSocket URL instead of spawning Parley.
    #[arg(long)]
    relay: Option<String>,
    /// Print one JSON object (and the human summary on stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub offered_per_sec: u64,
    pub seconds: f64,
    pub sent: usize,
    pub acked: usize,
    pub delivered: usize,
    pub achieved_per_sec: f64,
    pub ack: Latency,
    pub delivery: Latency,
}

#[derive(Default)]
struct Shared {
    sent: HashMap<String, Instant>,
    ack_us: Vec<u64>,
    delivery_us: Vec<u64>,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct Pair {
    visitor_tx: mpsc::UnboundedSender<Message>,
    conversation: String,
}

/// A spawned Parley that is stopped when dropped.
struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(args: &SweepArgs) -> Result<Server, String> {
    let bin = match &args.parley {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("parley"),
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = match args.server_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("PARLEY_DATA_DIR", dir.path())
        .env_remove("PARLEY_DATABASE_URL")
        .env_remove("PARLEY_MASTER_KEY_FILE")
        .env("PARLEY_LOG", "info,parley_server::http::security=warn")
        .env("PARLEY_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let base = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .ok_or("the server did not start")?;
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Server {
        child,
        base,
        dir,
        bin,
    })
}

async fn http_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = client.request(method, &url);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{url}: {status} {v}"));
    }
    Ok(v)
}

/// A signed-in console user: (http client with the cookie, CSRF token).
async fn sign_in(
    base: &str,
    workspace: &str,
    email: &str,
    one_time: &str,
) -> Result<(reqwest::Client, String), String> {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .map_err(|e| e.to_string())?;
    let r = http_json(
        &c,
        reqwest::Method::POST,
        format!("{base}/api/auth/sign-in"),
        None,
        Some(json!({ "workspace": workspace, "email": email, "password": one_time })),
    )
    .await?;
    let csrf = r["csrf_token"].as_str().unwrap_or_default().to_owned();
    let pw = "Load-Test-Password-2026!";
    http_json(
        &c,
        reqwest::Method::POST,
        format!("{base}/api/auth/password"),
        Some(&csrf),
        Some(json!({ "current_password": one_time, "new_password": pw })),
    )
    .await?;
    Ok((c, csrf))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How many sockets share one source address (Parley allows 200 per client IP; the generator
/// spreads its sockets over 127.0.0.0/8 as several real clients would come from several hosts).
const SOCKETS_PER_SOURCE: usize = 150;
static SOCKETS_OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn open_socket(url: &str, origin: &str, ticket: &str) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("origin", origin.parse().map_err(|_| "bad origin")?);
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    let server: std::net::SocketAddr = host
        .parse()
        .map_err(|_| format!("{url}: give the server as IP:port"))?;
    let n = SOCKETS_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / SOCKETS_PER_SOURCE;
    let source = std::net::Ipv4Addr::new(127, 0, (1 + n / 250) as u8, (2 + n % 250) as u8);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    ws.send(Message::text(
        json!({ "type": "hello", "ticket": ticket }).to_string(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => Ok(ws),
        other => Err(format!("no ready frame: {other:?}")),
    }
}

/// Split a socket: a writer task fed by a channel, and a reader that calls `on_frame`.
fn run_socket(ws: Ws, shared: SharedState, role: &'static str) -> mpsc::UnboundedSender<Message> {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(Message::Text(t))) = stream.next().await {
            let now = Instant::now();
            let Ok(f) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            let kind = f["type"].as_str().unwrap_or_default();
            let id = f["client_msg_id"].as_str().unwrap_or_default();
            let is_ack = role == "visitor" && kind == "ack";
            let is_delivery = role == "agent" && kind == "event" && f["kind"] == "message";
            if is_ack || is_delivery {
                let mut s = lock(&shared);
                if let Some(at) = s.sent.get(id).copied() {
                    let us = now.duration_since(at).as_micros() as u64;
                    if is_ack {
                        s.ack_us.push(us)
                    } else {
                        s.delivery_us.push(us)
                    }
                }
            }
        }
    });
    tx
}

async fn setup_parley(
    server: &Server,
    pairs: usize,
    per_agent: usize,
    shared: &SharedState,
) -> Result<Vec<Pair>, String> {
    let base = &server.base;
    let out = Command::new(&server.bin)
        .args([
            "tenant",
            "create",
            "--name",
            "Bench",
            "--admin-email",
            "admin@bench.test",
            "--json",
        ])
        .env("PARLEY_DATA_DIR", server.dir.path())
        .env_remove("PARLEY_DATABASE_URL")
        .env_remove("PARLEY_MASTER_KEY_FILE")
        .env("PARLEY_LOG", "warn")
        .output()
        .map_err(|e| e.to_string())?;
    let tenant: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "tenant create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let otp = tenant["one_time_password"].as_str().unwrap_or_default();
    let (admin, csrf) = sign_in(base, "bench", "admin@bench.test", otp).await?;
    let post = reqwest::Method::POST;
    let dept = http_json(
        &admin,
        post.clone(),
        format!("{base}/api/departments"),
        Some(&csrf),
        Some(json!({ "name": "Load" })),
    )
    .await?;
    let dept = dept["id"].as_str().unwrap_or_default().to_owned();
    let routing = json!({ "routing_mode": "assign" });
    http_json(
        &admin,
        reqwest::Method::PATCH,
        format!("{base}/api/departments/{dept}"),
        Some(&csrf),
        Some(routing),
    )
    .await?;
    let ws_url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let per_agent = per_agent.max(1);
    let mut result = vec![];
    for i in 0..pairs {
        if i % per_agent == 0 {
            let email = format!("agent{i}@bench.test");
            let user = json!({ "email": email, "display_name": format!("Agent {i}"), "role": "agent", "department_ids": [dept], "capacity": per_agent });
            let created = http_json(
                &admin,
                post.clone(),
                format!("{base}/api/users"),
                Some(&csrf),
                Some(user),
            )
            .await?;
            let (agent, a_csrf) = sign_in(
                base,
                "bench",
                &email,
                created["one_time_password"].as_str().unwrap_or_default(),
            )
            .await?;
            let online = json!({ "status": "online" });
            http_json(
                &agent,
                reqwest::Method::PUT,
                format!("{base}/api/console/status"),
                Some(&a_csrf),
                Some(online),
            )
            .await?;
            let ticket = http_json(
                &agent,
                post.clone(),
                format!("{base}/api/console/ticket"),
                Some(&a_csrf),
                None,
            )
            .await?;
            let agent_ws =
                open_socket(&ws_url, base, ticket["ticket"].as_str().unwrap_or_default()).await?;
            run_socket(agent_ws, shared.clone(), "agent");
        }
        let v = reqwest::Client::new();
        let session = json!({ "site_key": tenant["site_key"] });
        let session = http_json(
            &v,
            post.clone(),
            format!("{base}/api/widget/session"),
            None,
            Some(session),
        )
        .await?;
        let token = session["visitor_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let start = json!({ "department_id": dept, "name": format!("Visitor {i}") });
        let conv = v
            .post(format!("{base}/api/widget/conversations"))
            .bearer_auth(&token)
            .json(&start)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let conv: Value = conv.json().await.map_err(|e| e.to_string())?;
        let conversation = conv["id"]
            .as_str()
            .ok_or(format!("start chat failed: {conv}"))?
            .to_owned();
        let vt = v
            .post(format!("{base}/api/widget/ticket"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let vt: Value = vt.json().await.map_err(|e| e.to_string())?;
        let mut visitor_ws =
            open_socket(&ws_url, base, vt["ticket"].as_str().unwrap_or_default()).await?;
        let resume = json!({ "type": "resume", "conversation_id": conversation, "since": 0 });
        visitor_ws
            .send(Message::text(resume.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        result.push(Pair {
            visitor_tx: run_socket(visitor_ws, shared.clone(), "visitor"),
            conversation,
        });
    }
    Ok(result)
}

async fn setup_relay(url: &str, pairs: usize, shared: &SharedState) -> Result<Vec<Pair>, String> {
    let origin = url.replacen("ws://", "http://", 1);
    let mut result = vec![];
    for i in 0..pairs {
        let agent = open_socket(url, &origin, &format!("relay:{i}:agent")).await?;
        let visitor = open_socket(url, &origin, &format!("relay:{i}:visitor")).await?;
        run_socket(agent, shared.clone(), "agent");
        result.push(Pair {
            visitor_tx: run_socket(visitor, shared.clone(), "visitor"),
            conversation: format!("relay-{i}"),
        });
    }
    Ok(result)
}

async fn run_step(pairs: &[Pair], shared: &SharedState, rate: u64, secs: u64, step: usize) -> Step {
    {
        let mut s = lock(shared);
        s.sent.clear();
        s.ack_us.clear();
        s.delivery_us.clear();
    }
    let start = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let pair = &pairs[(sent as usize) % pairs.len()];
            let id = format!("s{step}-{sent}");
            lock(shared).sent.insert(id.clone(), Instant::now());
            let frame = json!({ "type": "send", "conversation_id": pair.conversation, "client_msg_id": id, "body": format!("load message {sent}") });
            let _ = pair.visitor_tx.send(Message::text(frame.to_string()));
            sent += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the last answers arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let done = {
            let s = lock(shared);
            s.ack_us.len() as u64 >= total && s.delivery_us.len() as u64 >= total
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = lock(shared);
    let acked = s.ack_us.len();
    Step {
        offered_per_sec: rate,
        seconds,
        sent: sent as usize,
        acked,
        delivered: s.delivery_us.len(),
        achieved_per_sec: acked as f64 / seconds,
        ack: summarize(s.ack_us.clone()),
        delivery: summarize(s.delivery_us.clone()),
    }
}

/// The highest offered rate with p99 ack under 20 ms and no shortfall.
pub fn knee(steps: &[Step]) -> Option<u64> {
    steps
        .iter()
        .filter(|s| {
            s.ack.p99_ms < 20.0
                && s.acked == s.sent
                && s.achieved_per_sec >= 0.95 * s.offered_per_sec as f64
        })
        .map(|s| s.offered_per_sec)
        .max()
}

pub async fn run(args: SweepArgs) -> Result<(), String> {
    if args.pairs == 0 || args.rates.is_empty() {
        return Err("give at least one pair and one rate".into());
    }
    let shared: SharedState = Arc::default();
    let server;
    let (target, pairs) = match &args.relay {
        Some(url) => (
            "relay".to_owned(),
            setup_relay(url, args.pairs, &shared).await?,
        ),
        None => {
            server = spawn_server(&args)?;
            eprintln!("parley at {} ({} pairs)", server.base, args.pairs);
            (
                "parley-sqlite".to_owned(),
                setup_parley(&server, args.pairs, args.visitors_per_agent, &shared).await?,
            )
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut steps = vec![];
    eprintln!(
        "{:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8}",
        "offered/s", "achieved", "acked", "ack p50", "p99", "p99.9", "max", "dlv p50", "dlv p99"
    );
    for (i, rate) in args.rates.iter().enumerate() {
        let s = run_step(&pairs, &shared, *rate, args.step_secs, i).await;
        eprintln!(
            "{:>9} {:>9.0} {:>9} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2}",
            s.offered_per_sec,
            s.achieved_per_sec,
            s.acked,
            s.ack.p50_ms,
            s.ack.p99_ms,
            s.ack.p999_ms,
            s.ack.max_ms,
            s.delivery.p50_ms,
            s.delivery.p99_ms
        );
        steps.push(s);
    }
    let knee = knee(&steps);
    let command: Vec<String> = std::env::args().collect();
    eprintln!(
        "knee (p99 ack < 20 ms, no shortfall): {}",
        knee.map_or("none".into(), |k| format!("{k}/s"))
    );
    eprintln!("command: {}", command.join(" "));
    if args.json {
        println!(
            "{}",
            json!({ "scenario": "sweep", "target": target, "pairs": args.pairs, "steps": steps, "knee_per_sec": knee, "command": command.join(" ") })
        );
    }
    Ok(())
}
