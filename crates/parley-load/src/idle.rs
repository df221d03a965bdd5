//! The idle scenario: N widget visitors with their socket open and nothing to say. Reports the
//! server's memory per connection, its CPU while they idle, how many sessions (ticket, socket,
//! hello, ready) it establishes per second, and its CPU per session.

use crate::target::{self, Bench, Server, ServerArgs, open_socket};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct IdleArgs {
    /// Connections to open. Each needs a file descriptor in the server and in this process.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Sessions opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to hold them idle while the server's CPU is measured.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: IdleArgs) -> Result<(), String> {
    let n = args.connections.max(1);
    let server = Server::spawn(&args.server)?;
    let bench = std::sync::Arc::new(Bench::setup(&server).await?);
    eprintln!("parley at {} ({n} idle visitors)", server.base);
    // Visitors (tokens) first: creating a visitor is a stored write, not part of a session.
    let tokens = target::for_each_bounded(n, args.concurrency, |i| {
        let bench = bench.clone();
        async move { bench.visitor(i).await }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.usage();
    let start = Instant::now();
    // A session: a ticket over HTTP, then the socket, hello and ready.
    let sockets = target::for_each_bounded(n, args.concurrency, |i| {
        let (bench, token) = (bench.clone(), tokens[i].clone());
        async move {
            let ticket = bench.visitor_ticket(i, &token).await?;
            open_socket(&bench.ws_url, &ticket).await
        }
    })
    .await?;
    let connect_secs = start.elapsed().as_secs_f64();
    let connected = server.usage();
    // Let allocations settle, then measure memory and CPU while nothing happens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = server.usage();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let held = server.usage();
    let rss_per_conn_kib = (settled.rss_kib as f64 - before.rss_kib as f64) / n as f64;
    let sessions_per_sec = n as f64 / connect_secs;
    let cpu_ms_per_session = (connected.cpu_secs - before.cpu_secs) * 1000.0 / n as f64;
    let idle_cpu_percent = (held.cpu_secs - settled.cpu_secs) * 100.0 / args.hold_secs as f64;
    eprintln!(
        "{n} idle connections: {rss_per_conn_kib:.1} KiB of server memory each (RSS {} -> {} KiB)",
        before.rss_kib, settled.rss_kib
    );
    eprintln!(
        "sessions established: {sessions_per_sec:.0}/s ({connect_secs:.2} s for {n}), server CPU {cpu_ms_per_session:.3} ms per session"
    );
    eprintln!(
        "idle server CPU: {idle_cpu_percent:.2}% of a core over {} s",
        args.hold_secs
    );
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("command: {command}");
    if args.json {
        println!(
            "{}",
            json!({ "scenario": "idle", "target": "parley-sqlite", "connections": n,
                    "rss_per_connection_kib": rss_per_conn_kib, "rss_before_kib": before.rss_kib,
                    "rss_after_kib": settled.rss_kib, "sessions_per_sec": sessions_per_sec,
                    "cpu_ms_per_session": cpu_ms_per_session, "idle_cpu_percent": idle_cpu_percent,
                    "command": command })
        );
    }
    drop(sockets);
    Ok(())
}
