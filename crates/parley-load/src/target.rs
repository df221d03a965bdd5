//! The Parley under test and its users, reached only through its public interfaces: the `parley`
//! CLI to create the tenant (as an operator would), HTTP for sign-in, sessions and tickets, and
//! one WebSocket per visitor and per agent, as the widget and the console use them.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Lock a mutex; a panic elsewhere while it was held leaves the data as it was, which is fine
/// for counters and samples.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the server comes from and where it runs.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The `parley` binary to spawn [default: next to this one].
    #[arg(long)]
    pub parley: Option<PathBuf>,
    /// Pin the spawned server to this CPU (with taskset).
    #[arg(long)]
    pub server_cpu: Option<u32>,
    /// Append the spawned server's log to this file (it is thrown away otherwise).
    #[arg(long)]
    pub server_log: Option<PathBuf>,
    /// The spawned server's log filter (`PARLEY_LOG`); `info,parley_store=debug` adds a line for
    /// each merge of SQLite's arrivals file, with how long it held the database's write lock;
    /// `warn,sqlx::query=debug` logs every SQL statement. The line that says where the server
    /// listens is kept whatever the filter.
    #[arg(long, default_value = "info,parley_server::http::security=warn")]
    pub server_log_filter: String,
}

/// A spawned Parley on SQLite in a private data directory; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    bin: PathBuf,
    args: ServerArgs,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    pub fn spawn(args: &ServerArgs) -> Result<Self, String> {
        let bin = match &args.parley {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("parley"),
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (child, addr) = start(&bin, dir.path(), args, "127.0.0.1:0")?;
        Ok(Server {
            child: Some(child),
            base: format!("http://{addr}"),
            addr,
            dir,
            bin,
            args: args.clone(),
        })
    }

    /// The server's process id (taskset execs it, so this is Parley itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data and the same address.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let listen = self.addr.to_string();
        // The old socket may linger for a moment.
        let mut last = String::new();
        for _ in 0..50 {
            match start(&self.bin, self.dir.path(), &self.args, &listen) {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(last)
    }

    /// Run a `parley` CLI command against this server's data.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("PARLEY_DATA_DIR", self.dir.path())
            .env_remove("PARLEY_DATABASE_URL")
            .env_remove("PARLEY_MASTER_KEY_FILE")
            .env("PARLEY_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&out.stdout).map_err(|_| {
            format!(
                "parley {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Memory, CPU time and bytes written so far.
    pub fn usage(&self) -> Usage {
        self.pid().map(Usage::of).unwrap_or_default()
    }
}

fn start(
    bin: &Path,
    dir: &Path,
    args: &ServerArgs,
    listen: &str,
) -> Result<(Child, SocketAddr), String> {
    let mut log = match &args.server_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut cmd = match args.server_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["serve", "--listen", listen])
        .env("PARLEY_DATA_DIR", dir)
        .env_remove("PARLEY_DATABASE_URL")
        .env_remove("PARLEY_MASTER_KEY_FILE")
        // The generator finds the server's address in its "listening on" line (target `parley`).
        .env(
            "PARLEY_LOG",
            format!("{},parley=info", args.server_log_filter),
        )
        .env("PARLEY_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut keep = move |line: &str| {
        if let Some(f) = log.as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
    };
    let addr = lines.by_ref().map_while(Result::ok).find_map(|l| {
        keep(&l);
        l.split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.trim_start_matches("http://").parse::<SocketAddr>().ok())
    });
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the server did not start on {listen}"));
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| keep(&l)));
    Ok((child, addr))
}

/// A process's resident memory, CPU time and storage writes, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub cpu_secs: f64,
    pub write_bytes: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = read("stat");
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th; Linux counts them in ticks of 1/100 s.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|t| t.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        Usage {
            rss_kib: field(&read("status"), "VmRSS:"),
            cpu_secs: ticks as f64 / 100.0,
            write_bytes: field(&read("io"), "write_bytes:"),
        }
    }
}

pub async fn http_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: Auth<'_>,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = client.request(method, &url);
    match auth {
        Auth::None => {}
        Auth::Csrf(c) => req = req.header("x-csrf-token", c),
        Auth::Bearer(t) => req = req.bearer_auth(t),
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

#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Csrf(&'a str),
    Bearer(&'a str),
}

/// How many connections share one source address. Parley allows 200 sockets per client IP;
/// the generator spreads its connections over 127.0.0.0/8 as real clients come from many hosts.
const PER_SOURCE: usize = 150;
/// Visitor HTTP requests in flight at once (see `Bench::visitor_request`).
const VISITOR_HTTP_IN_FLIGHT: usize = 512;
static SOCKETS_OPENED: AtomicUsize = AtomicUsize::new(0);

fn source(n: usize) -> Ipv4Addr {
    let n = n / PER_SOURCE;
    Ipv4Addr::new(127, 0, (1 + n / 250) as u8, (2 + n % 250) as u8)
}

/// A signed-in console user.
pub struct Console {
    pub http: reqwest::Client,
    pub csrf: String,
}

async fn sign_in(base: &str, email: &str, one_time: &str) -> Result<Console, String> {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .map_err(|e| e.to_string())?;
    let post = reqwest::Method::POST;
    let r = http_json(
        &http,
        post.clone(),
        format!("{base}/api/auth/sign-in"),
        Auth::None,
        Some(json!({ "workspace": "bench", "email": email, "password": one_time })),
    )
    .await?;
    let csrf = r["csrf_token"].as_str().unwrap_or_default().to_owned();
    http_json(
        &http,
        post,
        format!("{base}/api/auth/password"),
        Auth::Csrf(&csrf),
        Some(json!({ "current_password": one_time, "new_password": "Load-Test-Password-2026!" })),
    )
    .await?;
    Ok(Console { http, csrf })
}

/// The tenant every scenario uses: one department whose chats are assigned straight away.
pub struct Bench {
    pub base: String,
    pub ws_url: String,
    pub site_key: String,
    pub department: String,
    admin: Console,
    /// HTTP clients for visitors, one per source address.
    visitor_http: Vec<reqwest::Client>,
    visitor_slots: tokio::sync::Semaphore,
}

impl Bench {
    pub async fn setup(server: &Server) -> Result<Bench, String> {
        let base = server.base.clone();
        let tenant = server.cli(&[
            "tenant",
            "create",
            "--name",
            "Bench",
            "--admin-email",
            "admin@bench.test",
            "--json",
        ])?;
        let otp = tenant["one_time_password"].as_str().unwrap_or_default();
        let admin = sign_in(&base, "admin@bench.test", otp).await?;
        let dept = http_json(
            &admin.http,
            reqwest::Method::POST,
            format!("{base}/api/departments"),
            Auth::Csrf(&admin.csrf),
            Some(json!({ "name": "Load" })),
        )
        .await?;
        let department = dept["id"].as_str().unwrap_or_default().to_owned();
        http_json(
            &admin.http,
            reqwest::Method::PATCH,
            format!("{base}/api/departments/{department}"),
            Auth::Csrf(&admin.csrf),
            Some(json!({ "routing_mode": "assign" })),
        )
        .await?;
        let mut visitor_http = vec![];
        for i in 0..64 {
            visitor_http.push(
                reqwest::Client::builder()
                    .local_address(IpAddr::V4(source(i * PER_SOURCE)))
                    .pool_max_idle_per_host(64)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(Bench {
            ws_url: format!("{}/ws", base.replacen("http://", "ws://", 1)),
            base,
            site_key: tenant["site_key"].as_str().unwrap_or_default().to_owned(),
            department,
            admin,
            visitor_http,
            visitor_slots: tokio::sync::Semaphore::new(VISITOR_HTTP_IN_FLIGHT),
        })
    }

    /// A new agent of the department, signed in and online, who takes `capacity` chats at once.
    pub async fn agent(&self, i: usize, capacity: usize) -> Result<Console, String> {
        let email = format!("agent{i}@bench.test");
        let user = json!({ "email": email, "display_name": format!("Agent {i}"), "role": "agent",
                           "department_ids": [self.department], "capacity": capacity });
        let created = http_json(
            &self.admin.http,
            reqwest::Method::POST,
            format!("{}/api/users", self.base),
            Auth::Csrf(&self.admin.csrf),
            Some(user),
        )
        .await?;
        let agent = sign_in(
            &self.base,
            &email,
            created["one_time_password"].as_str().unwrap_or_default(),
        )
        .await?;
        http_json(
            &agent.http,
            reqwest::Method::PUT,
            format!("{}/api/console/status", self.base),
            Auth::Csrf(&agent.csrf),
            Some(json!({ "status": "online" })),
        )
        .await?;
        Ok(agent)
    }

    pub async fn agent_ticket(&self, agent: &Console) -> Result<String, String> {
        let t = http_json(
            &agent.http,
            reqwest::Method::POST,
            format!("{}/api/console/ticket", self.base),
            Auth::Csrf(&agent.csrf),
            None,
        )
        .await?;
        Ok(t["ticket"].as_str().unwrap_or_default().to_owned())
    }

    /// A transcript as the console shows it (conversation with all its events).
    pub async fn transcript(&self, agent: &Console, conversation: &str) -> Result<Value, String> {
        http_json(
            &agent.http,
            reqwest::Method::GET,
            format!("{}/api/conversations/{conversation}", self.base),
            Auth::None,
            None,
        )
        .await
    }

    /// A visitor's HTTP request, from that visitor's source address. At most
    /// `VISITOR_HTTP_IN_FLIGHT` run at once: ten thousand reconnecting visitors asking for
    /// tickets together would otherwise hold ten thousand extra sockets in this one process (as
    /// many as their WebSockets), past its open-files limit.
    pub async fn visitor_request(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let _slot = self
            .visitor_slots
            .acquire()
            .await
            .map_err(|e| e.to_string())?;
        let client = &self.visitor_http[(i / PER_SOURCE) % self.visitor_http.len()];
        http_json(client, method, format!("{}{path}", self.base), auth, body).await
    }

    /// A new widget visitor: their token.
    pub async fn visitor(&self, i: usize) -> Result<String, String> {
        let s = self
            .visitor_request(
                i,
                reqwest::Method::POST,
                "/api/widget/session",
                Auth::None,
                Some(json!({ "site_key": self.site_key })),
            )
            .await?;
        s["visitor_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no visitor token: {s}"))
    }

    pub async fn start_chat(&self, i: usize, token: &str) -> Result<String, String> {
        Ok(self.start_chat_view(i, token).await?.0)
    }

    /// Start a chat: its id and its status once the department has routed it.
    pub async fn start_chat_view(&self, i: usize, token: &str) -> Result<(String, String), String> {
        let c = self
            .visitor_request(
                i,
                reqwest::Method::POST,
                "/api/widget/conversations",
                Auth::Bearer(token),
                Some(json!({ "department_id": self.department, "name": format!("Visitor {i}") })),
            )
            .await?;
        match (c["id"].as_str(), c["status"].as_str()) {
            (Some(id), Some(status)) => Ok((id.to_owned(), status.to_owned())),
            _ => Err(format!("start chat failed: {c}")),
        }
    }

    pub async fn visitor_ticket(&self, i: usize, token: &str) -> Result<String, String> {
        let t = self
            .visitor_request(
                i,
                reqwest::Method::POST,
                "/api/widget/ticket",
                Auth::Bearer(token),
                None,
            )
            .await?;
        Ok(t["ticket"].as_str().unwrap_or_default().to_owned())
    }

    /// Every stored event of a conversation, as the visitor may see them.
    pub async fn visitor_history(
        &self,
        i: usize,
        token: &str,
        conversation: &str,
    ) -> Result<Vec<Value>, String> {
        let v = self
            .visitor_request(
                i,
                reqwest::Method::GET,
                &format!("/api/widget/conversations/{conversation}/events?since=0"),
                Auth::Bearer(token),
                None,
            )
            .await?;
        Ok(v["events"].as_array().cloned().unwrap_or_default())
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a WebSocket from the next source address (as a page on the server's origin would),
/// asking for `protocol` if given.
pub async fn connect_ws(url: &str, protocol: Option<&str>) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    let origin = format!("http://{host}");
    req.headers_mut()
        .insert("origin", origin.parse().map_err(|_| "bad origin")?);
    if let Some(p) = protocol {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            p.parse().map_err(|_| "bad protocol")?,
        );
    }
    let server: SocketAddr = host
        .parse()
        .map_err(|_| format!("{url}: give the server as IP:port"))?;
    let from = source(SOCKETS_OPENED.fetch_add(1, Ordering::Relaxed));
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((from, 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    // Frames go out as they are written (an XMPP message and its ack request are two frames).
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    config.read_buffer_size = 4 * 1024;
    config.write_buffer_size = 0;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        req,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|e| format!("{url}: {e}"))?;
    Ok(ws)
}

/// Open a Parley socket and say hello; returns once `ready` came back.
pub async fn open_socket(url: &str, ticket: &str) -> Result<Ws, String> {
    let mut ws = connect_ws(url, None).await?;
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

/// Run a socket: a writer task fed by the returned channel, and a reader task that hands each
/// parsed frame with its arrival time to `on_frame`. Both end when the socket closes or the
/// channel's senders are gone.
pub fn run_socket(
    ws: Ws,
    mut on_frame: impl FnMut(Value, Instant) + Send + 'static,
) -> (mpsc::UnboundedSender<Message>, tokio::task::JoinHandle<()>) {
    run_socket_raw(ws, move |t, at| {
        if let Ok(f) = serde_json::from_str::<Value>(t) {
            on_frame(f, at);
        }
    })
}

/// Ping every 20 s, as the widget and the console do (Parley closes a socket that is silent for
/// 75 s), for as long as the socket's writer is there.
pub fn keep_alive(tx: &mpsc::UnboundedSender<Message>) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(20));
        tick.tick().await;
        loop {
            tick.tick().await;
            if tx.send(Message::text(r#"{"type":"ping"}"#)).is_err() || tx.is_closed() {
                break;
            }
        }
    });
}

/// A task that writes what the returned sender gets to `sink`, in order, until either side ends;
/// then it closes the sink.
pub fn spawn_writer<S>(mut sink: S) -> (mpsc::UnboundedSender<Message>, tokio::task::JoinHandle<()>)
where
    S: futures_util::Sink<Message> + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, writer)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `run_socket` for frames that are not JSON (XMPP): each text frame as it came.
pub fn run_socket_raw(
    ws: Ws,
    mut on_frame: impl FnMut(&str, Instant) + Send + 'static,
) -> (mpsc::UnboundedSender<Message>, tokio::task::JoinHandle<()>) {
    let (sink, mut stream) = ws.split();
    let (tx, writer) = spawn_writer(sink);
    let reader = tokio::spawn(async move {
        // The writer goes with the reader, also when the reader is aborted: a writer left
        // waiting for the server's answer to its close frame would keep the socket open.
        let _writer = AbortOnDrop(writer);
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            on_frame(t.as_str(), Instant::now());
        }
    });
    (tx, reader)
}

/// Run `f` for each index with at most `width` at a time; the first error stops the rest.
pub async fn for_each_bounded<T, F, Fut>(n: usize, width: usize, f: F) -> Result<Vec<T>, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    use futures_util::stream::{self, StreamExt as _};
    let mut out: Vec<(usize, T)> = stream::iter(0..n)
        .map(|i| {
            let fut = f(i);
            async move { fut.await.map(|t| (i, t)) }
        })
        .buffer_unordered(width)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}
