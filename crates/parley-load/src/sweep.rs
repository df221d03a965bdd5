//! Conversations under load. Three scenarios share the set-up (P visitor/agent pairs in
//! conversation, each on its own socket) and the measurement (for every message, the ack latency
//! from send to durable acknowledgement at the sender, and the delivery latency from send to
//! arrival at the other side):
//!
//! - **sweep**: open loop at fixed offered rates (sends go out on schedule whether or not earlier
//!   ones were answered); the knee is the highest rate with p99 ack < 20 ms and no shortfall.
//! - **fan-out**: the same, with agents serving 5 to 20 visitors each, answering every few messages
//!   and fetching transcripts while they do.
//! - **saturation**: closed loop, every visitor keeps one message in flight; the achieved rate is
//!   the highest sustained durable rate.

use crate::stats::{Latency, summarize};
use crate::target::{self, Bench, Server, ServerArgs, Usage, lock, open_socket, run_socket};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// Visitors in conversation. Parley lets one socket send at most 20 frames a second, so use
    /// at least a tenth of the highest rate (real visitors send far less than one a second).
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// Visitors each agent serves at once (the agents' capacity).
    #[arg(long, default_value_t = 10)]
    pub visitors_per_agent: usize,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Drive a relay at this WebSocket URL instead of spawning Parley.
    #[arg(long)]
    pub relay: Option<String>,
    /// Drive an XMPP server at this WebSocket URL instead (the ejabberd peer, e.g.
    /// ws://127.0.0.1:5280/xmpp-websocket); users are registered through --xmpp-api.
    #[arg(long, requires = "xmpp_api")]
    pub xmpp: Option<String>,
    /// The XMPP server's HTTP API, e.g. http://127.0.0.1:5280/api.
    #[arg(long)]
    pub xmpp_api: Option<String>,
    /// The XMPP domain.
    #[arg(long, default_value = "localhost")]
    pub xmpp_domain: String,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Offered rates, messages per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Parley only: chats started and ended per second during each step, beside the pairs'
    /// messages. Each is a new widget visitor who starts a chat (assigned at once to an agent
    /// kept for them) and ends it a second later: the starts, assignments and ends are the state
    /// changes that real traffic mixes with its messages, and the pairs' chats never make.
    #[arg(long, default_value_t = 0)]
    churn: u64,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    /// Visitor messages per second (agents' answers come on top).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Agents answer one visitor message in this many.
    #[arg(long, default_value_t = 4)]
    answer_every: u64,
    /// Each agent fetches a transcript this often (milliseconds).
    #[arg(long, default_value_t = 1000)]
    transcript_every_ms: u64,
    /// Visitors per agent to try, comma-separated (each a separate step with fresh agents).
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    per_agent: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SaturationArgs {
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Serialize, Clone)]
pub struct Step {
    pub offered_per_sec: u64,
    pub seconds: f64,
    pub sent: usize,
    pub acked: usize,
    pub delivered: usize,
    pub achieved_per_sec: f64,
    pub ack: Latency,
    pub delivery: Latency,
    /// Server CPU seconds per thousand acknowledged messages (Parley only).
    pub server_cpu_ms_per_msg: Option<f64>,
    /// Bytes the server wrote to storage per acknowledged message (Parley only).
    pub server_bytes_written_per_msg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Latency>,
    /// The chats started and ended during the step (`--churn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churned>,
}

/// What `--churn` did in a step: chats started (and assigned), ended, and failed.
#[derive(Serialize, Clone, Copy, Default, Debug)]
pub struct Churned {
    pub started: usize,
    /// Of those, assigned to an agent as they started (the rest waited in the queue).
    pub assigned: usize,
    pub ended: usize,
    pub failed: usize,
    /// From the request that starts a chat to its answer (the chat stored and routed).
    pub start_p99_ms: f64,
}

#[derive(Default)]
struct Recorder {
    sent: HashMap<String, Instant>,
    ack_us: Vec<u64>,
    delivery_us: Vec<u64>,
    transcript_us: Vec<u64>,
}

type Shared = Arc<Mutex<Recorder>>;

impl Recorder {
    fn clear(&mut self) {
        self.sent.clear();
        self.ack_us.clear();
        self.delivery_us.clear();
        self.transcript_us.clear();
    }
}

/// Who reads a frame: acks count at the sender, message events at the other side.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Visitor,
    Agent,
}

/// Record the latencies a frame closes. Returns the conversation of a message that arrived from
/// the other side (agents answer some of them).
fn observe(shared: &Shared, role: Role, f: &Value, at: Instant) -> Option<String> {
    let kind = f["type"].as_str().unwrap_or_default();
    let id = f["client_msg_id"].as_str().unwrap_or_default();
    let mine = if role == Role::Visitor {
        "visitor"
    } else {
        "agent"
    };
    let is_ack = kind == "ack";
    let is_delivery = kind == "event" && f["kind"] == "message" && f["author"] != mine;
    if is_ack || is_delivery {
        let mut s = lock(shared);
        if let Some(sent) = s.sent.get(id).copied() {
            let us = at.duration_since(sent).as_micros() as u64;
            if is_ack {
                s.ack_us.push(us)
            } else {
                s.delivery_us.push(us)
            }
        }
    }
    is_delivery
        .then(|| f["conversation_id"].as_str().map(str::to_owned))
        .flatten()
}

struct Pair {
    visitor: mpsc::UnboundedSender<Message>,
    /// Parley's conversation id, or the agent's JID for XMPP.
    conversation: String,
    /// Stream-management counters of the visitor's XMPP socket.
    xmpp: Option<crate::xmpp::Shared>,
    /// Acks of this visitor's messages (for the closed loop).
    acks: Option<mpsc::UnboundedReceiver<()>>,
}

/// How agents behave beyond receiving.
#[derive(Clone, Default)]
struct AgentPlay {
    answer_every: u64,
    transcript_every: Option<Duration>,
    /// Set when the step is over: transcript fetching stops and the agents' sockets close.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Everything set up for a run against Parley: keep it alive while the run lasts.
struct Parley {
    server: Server,
    bench: Arc<Bench>,
}

async fn start_parley(args: &ServerArgs) -> Result<Parley, String> {
    let server = Server::spawn(args)?;
    let bench = Arc::new(Bench::setup(&server).await?);
    Ok(Parley { server, bench })
}

/// `pairs` visitors in conversation with agents serving `per_agent` each.
async fn parley_pairs(
    p: &Parley,
    pairs: usize,
    per_agent: usize,
    shared: &Shared,
    play: AgentPlay,
    agent_base: usize,
) -> Result<Vec<Pair>, String> {
    let bench = &p.bench;
    let per_agent = per_agent.clamp(1, 50);
    let agents = pairs.div_ceil(per_agent);
    // Agents first (online, sockets open), so each chat is assigned as it starts.
    let consoles =
        target::for_each_bounded(agents, 2, |i| bench.agent(agent_base + i, per_agent)).await?;
    for console in consoles {
        let ticket = bench.agent_ticket(&console).await?;
        let ws = open_socket(&bench.ws_url, &ticket).await?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (shared2, seen2, answer_every) = (shared.clone(), seen.clone(), play.answer_every);
        let answers: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (tx, _) = {
            let tx_slot: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>> = Arc::default();
            let slot = tx_slot.clone();
            let r = run_socket(ws, move |f, at| {
                let Some(conv) = observe(&shared2, Role::Agent, &f, at) else {
                    return;
                };
                let mut s = lock(&seen2);
                if !s.contains(&conv) {
                    s.push(conv.clone());
                }
                drop(s);
                if answer_every == 0 {
                    return;
                }
                let n = answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n % answer_every == answer_every - 1
                    && let Some(tx) = lock(&slot).as_ref()
                {
                    let id = format!("a{n:010}-{conv}");
                    lock(&shared2).sent.insert(id.clone(), Instant::now());
                    let frame = json!({ "type": "send", "conversation_id": conv, "client_msg_id": id, "body": "an answer" });
                    let _ = tx.send(Message::text(frame.to_string()));
                }
            });
            *lock(&tx_slot) = Some(r.0.clone());
            target::keep_alive(&r.0);
            r
        };
        if let Some(every) = play.transcript_every {
            let (bench, shared, seen, stop) = (
                bench.clone(),
                shared.clone(),
                seen.clone(),
                play.stop.clone(),
            );
            tokio::spawn(async move {
                let _keep = tx;
                let mut tick = tokio::time::interval(every);
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let conv = {
                        let s = lock(&seen);
                        if s.is_empty() {
                            continue;
                        }
                        s[n % s.len()].clone()
                    };
                    n += 1;
                    let t0 = Instant::now();
                    if bench.transcript(&console, &conv).await.is_ok() {
                        lock(&shared)
                            .transcript_us
                            .push(t0.elapsed().as_micros() as u64);
                    }
                }
            });
        } else {
            // The socket lives as long as its writer channel; keep it open for the run.
            std::mem::forget(tx);
        }
    }
    target::for_each_bounded(pairs, 32, |i| {
        let (bench, shared) = (bench.clone(), shared.clone());
        async move {
            let token = bench.visitor(i).await?;
            let conversation = bench.start_chat(i, &token).await?;
            let ticket = bench.visitor_ticket(i, &token).await?;
            let ws = open_socket(&bench.ws_url, &ticket).await?;
            let (ack_tx, acks) = mpsc::unbounded_channel();
            let (visitor, _) = run_socket(ws, move |f, at| {
                if f["type"] == "ack" {
                    let _ = ack_tx.send(());
                }
                observe(&shared, Role::Visitor, &f, at);
            });
            target::keep_alive(&visitor);
            let resume = json!({ "type": "resume", "conversation_id": conversation, "since": 0 });
            visitor
                .send(Message::text(resume.to_string()))
                .map_err(|e| e.to_string())?;
            Ok(Pair {
                visitor,
                conversation,
                xmpp: None,
                acks: Some(acks),
            })
        }
    })
    .await
}

/// Record what an XMPP frame closes, and answer the server's ack requests.
fn observe_xmpp(
    shared: &Shared,
    counters: &crate::xmpp::Shared,
    tx: &Mutex<Option<mpsc::UnboundedSender<Message>>>,
    frame: &str,
    at: Instant,
) {
    let (acked, delivered, answer) = crate::xmpp::incoming(counters, frame);
    if let Some(a) = answer
        && let Some(tx) = lock(tx).as_ref()
    {
        let _ = tx.send(Message::text(a));
    }
    if acked.is_empty() && delivered.is_none() {
        return;
    }
    let mut s = lock(shared);
    for id in acked {
        if let Some(sent) = s.sent.get(&id).copied() {
            s.ack_us.push(at.duration_since(sent).as_micros() as u64);
        }
    }
    if let Some(id) = delivered
        && let Some(sent) = s.sent.get(&id).copied()
    {
        s.delivery_us
            .push(at.duration_since(sent).as_micros() as u64);
    }
}

/// An XMPP socket, signed in, with its counters and its writer.
async fn xmpp_socket(
    url: &str,
    domain: &str,
    user: &str,
    shared: &Shared,
) -> Result<(mpsc::UnboundedSender<Message>, crate::xmpp::Shared), String> {
    let ws = crate::xmpp::login(url, domain, user).await?;
    let counters = crate::xmpp::Shared::default();
    let slot: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>> = Arc::default();
    let (s, c, sl) = (shared.clone(), counters.clone(), slot.clone());
    let (tx, _) = target::run_socket_raw(ws, move |f, at| observe_xmpp(&s, &c, &sl, f, at));
    *lock(&slot) = Some(tx.clone());
    Ok((tx, counters))
}

async fn xmpp_pairs(
    url: &str,
    api: &str,
    domain: &str,
    pairs: usize,
    shared: &Shared,
) -> Result<Vec<Pair>, String> {
    target::for_each_bounded(pairs, 16, |i| {
        let shared = shared.clone();
        async move {
            let (visitor, agent) = (format!("v{i}"), format!("a{i}"));
            crate::xmpp::register(api, domain, &visitor).await?;
            crate::xmpp::register(api, domain, &agent).await?;
            let (agent_tx, _) = xmpp_socket(url, domain, &agent, &shared).await?;
            std::mem::forget(agent_tx);
            let (visitor_tx, counters) = xmpp_socket(url, domain, &visitor, &shared).await?;
            Ok(Pair {
                visitor: visitor_tx,
                conversation: format!("{agent}@{domain}"),
                xmpp: Some(counters),
                acks: None,
            })
        }
    })
    .await
}

async fn relay_pairs(url: &str, pairs: usize, shared: &Shared) -> Result<Vec<Pair>, String> {
    let mut result = vec![];
    for i in 0..pairs {
        let agent = open_socket(url, &format!("relay:{i}:agent")).await?;
        let visitor = open_socket(url, &format!("relay:{i}:visitor")).await?;
        let s = shared.clone();
        let (agent_tx, _) = run_socket(agent, move |f, at| {
            observe(&s, Role::Agent, &f, at);
        });
        std::mem::forget(agent_tx);
        let s = shared.clone();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (visitor, _) = run_socket(visitor, move |f, at| {
            if f["type"] == "ack" {
                let _ = ack_tx.send(());
            }
            observe(&s, Role::Visitor, &f, at);
        });
        result.push(Pair {
            visitor,
            conversation: format!("relay-{i}"),
            xmpp: None,
            acks: Some(acks),
        });
    }
    Ok(result)
}

fn send(shared: &Shared, pair: &Pair, id: String, n: u64) {
    lock(shared).sent.insert(id.clone(), Instant::now());
    if let Some(c) = &pair.xmpp {
        for f in crate::xmpp::message(c, &pair.conversation, &id, &format!("load message {n}")) {
            let _ = pair.visitor.send(Message::text(f));
        }
        return;
    }
    let frame = json!({ "type": "send", "conversation_id": pair.conversation, "client_msg_id": id, "body": format!("load message {n}") });
    let _ = pair.visitor.send(Message::text(frame.to_string()));
}

/// Wait (at most 5 s) until every message sent has been acked and delivered.
async fn drain(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let done = {
            let s = lock(shared);
            s.ack_us.len() >= s.sent.len() && s.delivery_us.len() >= s.sent.len()
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finish(
    shared: &Shared,
    offered: u64,
    seconds: f64,
    before: Option<Usage>,
    after: Option<Usage>,
) -> Step {
    let s = lock(shared);
    let acked = s.ack_us.len();
    let per_msg = |f: &dyn Fn(&Usage) -> f64| match (before, after) {
        (Some(b), Some(a)) if acked > 0 => Some((f(&a) - f(&b)) / acked as f64),
        _ => None,
    };
    Step {
        offered_per_sec: offered,
        seconds,
        sent: s.sent.len(),
        acked,
        delivered: s.delivery_us.len(),
        achieved_per_sec: acked as f64 / seconds,
        ack: summarize(s.ack_us.clone()),
        delivery: summarize(s.delivery_us.clone()),
        server_cpu_ms_per_msg: per_msg(&|u| u.cpu_secs * 1000.0),
        server_bytes_written_per_msg: per_msg(&|u| u.write_bytes as f64),
        transcript: (!s.transcript_us.is_empty()).then(|| summarize(s.transcript_us.clone())),
        churn: None,
    }
}

/// Agent numbers for `--churn`'s agents, apart from the pairs' agents.
const CHURN_AGENTS_FROM: usize = 100_000;
/// Visitor numbers for `--churn`'s visitors, apart from the pairs' visitors.
const CHURN_VISITORS_FROM: usize = 1_000_000;
/// How many chats each of `--churn`'s agents takes at once.
const CHURN_CAPACITY: usize = 20;

/// `--churn`'s agents: online, console open, with room for twice the chats a second brings
/// (each lives about a second). Their console sockets stay open for the run.
async fn churn_agents(bench: &Arc<Bench>, per_sec: u64) -> Result<(), String> {
    let agents = (per_sec as usize * 2).div_ceil(CHURN_CAPACITY).max(1);
    for i in 0..agents {
        let console = bench.agent(CHURN_AGENTS_FROM + i, CHURN_CAPACITY).await?;
        let ticket = bench.agent_ticket(&console).await?;
        let ws = open_socket(&bench.ws_url, &ticket).await?;
        let (tx, _) = run_socket(ws, |_, _| {});
        target::keep_alive(&tx);
        std::mem::forget(tx);
    }
    Ok(())
}

/// Start `per_sec` chats a second for `secs` seconds, each ended a second after it started;
/// the counts once every one has ended (or failed).
async fn churn(bench: Arc<Bench>, per_sec: u64, secs: u64, first: usize) -> Churned {
    let start = Instant::now();
    let mut chats = tokio::task::JoinSet::new();
    for k in 0..per_sec * secs {
        let due = start + Duration::from_secs_f64(k as f64 / per_sec as f64);
        tokio::time::sleep_until(due.into()).await;
        let (bench, i) = (bench.clone(), first + k as usize);
        chats.spawn(async move {
            let token = bench.visitor(i).await?;
            let t0 = Instant::now();
            let (conversation, status) = bench.start_chat_view(i, &token).await?;
            let started = (t0.elapsed(), status == "assigned");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let path = format!("/api/widget/conversations/{conversation}/end");
            bench
                .visitor_request(
                    i,
                    reqwest::Method::POST,
                    &path,
                    target::Auth::Bearer(&token),
                    None,
                )
                .await?;
            Ok::<_, String>(started)
        });
    }
    let mut counts = Churned::default();
    let mut starts = vec![];
    while let Some(done) = chats.join_next().await {
        match done {
            Ok(Ok((started, assigned))) => {
                counts.started += 1;
                counts.assigned += usize::from(assigned);
                counts.ended += 1;
                starts.push(started.as_micros() as u64);
            }
            Ok(Err(e)) => {
                if counts.failed == 0 {
                    eprintln!("a churn chat failed: {e}");
                }
                counts.failed += 1;
            }
            Err(_) => counts.failed += 1,
        }
    }
    counts.start_p99_ms = summarize(starts).p99_ms;
    counts
}

async fn open_loop_step(
    pairs: &[Pair],
    shared: &Shared,
    rate: u64,
    secs: u64,
    step: usize,
    server: Option<&Server>,
) -> Step {
    lock(shared).clear();
    let before = server.map(Server::usage);
    let start = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            send(
                shared,
                &pairs[(sent as usize) % pairs.len()],
                format!("s{step}-{sent:010}"),
                sent,
            );
            sent += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drain(shared).await;
    finish(shared, rate, seconds, before, server.map(Server::usage))
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

fn header() {
    eprintln!(
        "{:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>7}",
        "offered/s",
        "achieved",
        "acked",
        "ack p50",
        "p99",
        "p99.9",
        "max",
        "dlv p50",
        "dlv p99",
        "cpu ms"
    );
}

fn print_step(s: &Step) {
    eprintln!(
        "{:>9} {:>9.0} {:>9} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} | {:>7}",
        s.offered_per_sec,
        s.achieved_per_sec,
        s.acked,
        s.ack.p50_ms,
        s.ack.p99_ms,
        s.ack.p999_ms,
        s.ack.max_ms,
        s.delivery.p50_ms,
        s.delivery.p99_ms,
        s.server_cpu_ms_per_msg
            .map_or("-".into(), |c| format!("{c:.3}"))
    );
    if let Some(c) = &s.churn {
        eprintln!(
            "{:>9}  churn: {} chats started ({} assigned at once) and ended, {} failed, start p99 {:.1} ms",
            "", c.started, c.assigned, c.failed, c.start_p99_ms
        );
    }
}

fn command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Start Parley (or use the relay) and set up the pairs.
async fn prepare(
    load: &LoadArgs,
    shared: &Shared,
) -> Result<(String, Option<Parley>, Vec<Pair>), String> {
    if load.pairs == 0 {
        return Err("give at least one pair".into());
    }
    if let (Some(url), Some(api)) = (&load.xmpp, &load.xmpp_api) {
        let pairs = xmpp_pairs(url, api, &load.xmpp_domain, load.pairs, shared).await?;
        return Ok(("ejabberd".into(), None, pairs));
    }
    match &load.relay {
        Some(url) => Ok((
            "relay".into(),
            None,
            relay_pairs(url, load.pairs, shared).await?,
        )),
        None => {
            let p = start_parley(&load.server).await?;
            eprintln!("parley at {} ({} pairs)", p.server.base, load.pairs);
            let pairs = parley_pairs(
                &p,
                load.pairs,
                load.visitors_per_agent,
                shared,
                AgentPlay::default(),
                0,
            )
            .await?;
            Ok(("parley-sqlite".into(), Some(p), pairs))
        }
    }
}

pub async fn run(args: SweepArgs) -> Result<(), String> {
    if args.rates.is_empty() {
        return Err("give at least one rate".into());
    }
    if args.churn > 0 && (args.load.relay.is_some() || args.load.xmpp.is_some()) {
        return Err("--churn drives Parley's chats: leave out --relay and --xmpp".into());
    }
    let shared: Shared = Arc::default();
    let (target, parley, pairs) = prepare(&args.load, &shared).await?;
    // After the pairs, whose agents are then full: every churn chat goes to the churn agents.
    let churn_bench = match &parley {
        Some(p) if args.churn > 0 => {
            churn_agents(&p.bench, args.churn).await?;
            eprintln!("churn: {} chats a second started and ended", args.churn);
            Some(p.bench.clone())
        }
        _ => None,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    header();
    let mut steps = vec![];
    for (i, rate) in args.rates.iter().enumerate() {
        let server = parley.as_ref().map(|p| &p.server);
        let churning = churn_bench.clone().map(|bench| {
            let first = CHURN_VISITORS_FROM + i * (args.churn * args.step_secs) as usize;
            tokio::spawn(churn(bench, args.churn, args.step_secs, first))
        });
        let mut s = open_loop_step(&pairs, &shared, *rate, args.step_secs, i, server).await;
        if let Some(c) = churning {
            s.churn = c.await.ok();
        }
        print_step(&s);
        steps.push(s);
    }
    let knee = knee(&steps);
    eprintln!(
        "knee (p99 ack < 20 ms, no shortfall): {}",
        knee.map_or("none".into(), |k| format!("{k}/s"))
    );
    eprintln!("command: {}", command());
    if args.load.json {
        println!(
            "{}",
            json!({ "scenario": "sweep", "target": target, "pairs": args.load.pairs, "steps": steps,
                    "knee_per_sec": knee, "command": command() })
        );
    }
    Ok(())
}

pub async fn saturation(args: SaturationArgs) -> Result<(), String> {
    if args.load.xmpp.is_some() {
        return Err(
            "saturation runs against Parley or the relay (use sweep for the XMPP peer)".into(),
        );
    }
    let shared: Shared = Arc::default();
    let (target, parley, mut pairs) = prepare(&args.load, &shared).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock(&shared).clear();
    let server = parley.as_ref().map(|p| &p.server);
    let before = server.map(Server::usage);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.secs);
    // One message in flight per visitor; a visitor sends at most 19 a second (Parley allows 20
    // frames a second per socket), so the generator's ceiling is 19 x pairs.
    let gap = Duration::from_millis(53);
    let mut tasks = vec![];
    let count = pairs.len().max(1);
    for (i, pair) in pairs.iter_mut().enumerate() {
        let mut acks = pair.acks.take().ok_or("acks taken")?;
        let (shared, tx, conversation) = (
            shared.clone(),
            pair.visitor.clone(),
            pair.conversation.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let pair = Pair {
                visitor: tx,
                conversation,
                xmpp: None,
                acks: None,
            };
            let mut n = 0u64;
            // Spread the first sends over one gap, or every visitor would send in step.
            tokio::time::sleep(gap * i as u32 / count as u32).await;
            while Instant::now() < end {
                let t0 = tokio::time::Instant::now();
                send(&shared, &pair, format!("c{n:010}-{i}"), n);
                n += 1;
                if tokio::time::timeout(Duration::from_secs(10), acks.recv())
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    break;
                }
                tokio::time::sleep_until(t0 + gap).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    drain(&shared).await;
    let ceiling = 19 * pairs.len() as u64;
    let step = finish(&shared, ceiling, seconds, before, server.map(Server::usage));
    header();
    print_step(&step);
    let bound = step.achieved_per_sec > 0.9 * ceiling as f64;
    eprintln!(
        "saturation: {:.0} durably acknowledged messages/s{}",
        step.achieved_per_sec,
        if bound {
            " (at the generator's ceiling: add pairs)"
        } else {
            ""
        }
    );
    eprintln!("command: {}", command());
    if args.load.json {
        println!(
            "{}",
            json!({ "scenario": "saturation", "target": target, "pairs": args.load.pairs, "step": step,
                    "saturation_per_sec": step.achieved_per_sec, "generator_bound": bound, "command": command() })
        );
    }
    Ok(())
}

pub async fn fanout(args: FanoutArgs) -> Result<(), String> {
    let shared: Shared = Arc::default();
    let mut steps = vec![];
    let p = start_parley(&args.server).await?;
    eprintln!("parley at {}", p.server.base);
    let mut agent_base = 0;
    header();
    for (i, per_agent) in args.per_agent.iter().enumerate() {
        let play = AgentPlay {
            answer_every: args.answer_every.max(1),
            transcript_every: Some(Duration::from_millis(args.transcript_every_ms.max(50))),
            stop: Arc::default(),
        };
        let stop = play.stop.clone();
        let pairs = parley_pairs(&p, args.pairs, *per_agent, &shared, play, agent_base).await?;
        agent_base += args.pairs.div_ceil(*per_agent);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = open_loop_step(
            &pairs,
            &shared,
            args.rate,
            args.step_secs,
            i,
            Some(&p.server),
        )
        .await;
        print_step(&s);
        if let Some(t) = &s.transcript {
            eprintln!(
                "  {per_agent} visitors per agent: transcript fetch p50 {:.2} ms, p99 {:.2} ms ({} fetches)",
                t.p50_ms, t.p99_ms, t.count
            );
        }
        steps.push(json!({ "visitors_per_agent": per_agent, "step": s }));
        // End these chats' load: the next step brings fresh agents and visitors.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(pairs);
    }
    eprintln!("command: {}", command());
    if args.json {
        println!(
            "{}",
            json!({ "scenario": "fanout", "target": "parley-sqlite", "pairs": args.pairs, "rate": args.rate,
                    "answer_every": args.answer_every, "steps": steps, "command": command() })
        );
    }
    Ok(())
}
