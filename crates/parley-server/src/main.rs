//! `parley`: one binary for the whole installation. `parley --help` lists the verbs.

use clap::{Parser, Subcommand};
use parley_server::config::{Config, Overrides};
use parley_server::http::{self, AppState, HttpSettings};
use parley_server::{startup, telemetry};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "parley", version, about = "Parley: secure live chat for websites", long_about = None)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: widget, console, admin panel, REST API. Creates the data directory, the
    /// master key file and the schema on first start.
    Serve {
        /// Address to listen on. Plain HTTP is served on loopback only; elsewhere put a TLS proxy
        /// in front and set --public-url https://…
        #[arg(long, env = "PARLEY_LISTEN")]
        listen: Option<String>,
        /// The origin users reach Parley at, e.g. https://chat.example.com.
        #[arg(long, env = "PARLEY_PUBLIC_URL")]
        public_url: Option<String>,
        /// Create a demo tenant (site administrator, agent, department) on first run and serve a
        /// sample customer page that embeds the widget, on http://localhost:PORT+1.
        #[arg(long)]
        demo: bool,
        /// Port of the demo customer page [default: the listen port + 1].
        #[arg(long, requires = "demo")]
        demo_site_port: Option<u16>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants (one per customer site).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage the master key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the load generator (`parley-load`, installed next to this binary) against a fresh
    /// Parley: `parley bench sweep --rates 1000,3000`, `parley bench idle`, ... (`parley bench
    /// --help` lists the scenarios). See docs/BENCHMARKS.md.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its first site administrator; prints a one-time password.
    Create {
        /// The site's display name, e.g. "Acme Bank".
        #[arg(long)]
        name: String,
        /// The workspace name typed at sign-in [default: made from --name].
        #[arg(long)]
        slug: Option<String>,
        /// Email of the first site administrator.
        #[arg(long)]
        admin_email: String,
        /// Display name of the first site administrator.
        #[arg(long)]
        admin_name: Option<String>,
        /// A website origin where the chat widget may be embedded, e.g. https://www.acme.com
        /// (repeat for several; more can be added in the admin panel).
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new master key and re-wrap every tenant key under it. Running servers keep working.
    Rotate,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute a tenant's audit hash chain; exits 1 if it is broken.
    Verify {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Bench { args } = &cli.command {
        return bench(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `parley bench …` is `parley-load …`, the load generator shipped beside the server.
fn bench(args: &[String]) -> ExitCode {
    let load = std::env::current_exe().map(|p| p.with_file_name("parley-load"));
    let Ok(load) = load else {
        eprintln!("error: cannot find this program's own path");
        return ExitCode::FAILURE;
    };
    match std::process::Command::new(&load).args(args).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!(
                "error: cannot run {}: {e}; build it with `cargo build --release -p parley-load`",
                load.display()
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let (listen, public_url) = match &cli.command {
        Command::Serve {
            listen, public_url, ..
        } => (listen.clone(), public_url.clone()),
        _ => (None, None),
    };
    let config = Config::load(&cli.overrides, listen, public_url).map_err(|e| e.to_string())?;
    telemetry::init(config.log_format);
    let purpose = match cli.command {
        Command::Serve { .. } => startup::Purpose::Serve,
        Command::Migrate => startup::Purpose::Migrate,
        _ => startup::Purpose::Verb,
    };
    let (app, store) = startup::open_app(&config, purpose)
        .await
        .map_err(|e| e.to_string())?;
    let result = match cli.command {
        Command::Serve {
            demo,
            demo_site_port,
            ..
        } => serve(&config, app, demo.then_some(demo_site_port)).await,
        Command::Migrate => {
            println!("database is at the latest schema version");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::Create {
            name,
            slug,
            admin_email,
            admin_name,
            allowed_origins,
            json,
        }) => {
            let t = app
                .create_tenant(
                    &name,
                    slug.as_deref(),
                    &admin_email,
                    admin_name.as_deref(),
                    &allowed_origins,
                )
                .await
                .map_err(|e| describe(e, "tenant"))?;
            if json {
                println!("{}", serde_json::to_string(&t).map_err(|e| e.to_string())?);
            } else {
                let base = config
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", config.listen));
                println!("Created tenant {:?}", t.name);
                println!("  tenant id:          {}", t.tenant_id);
                println!("  workspace:          {}", t.slug);
                println!("  site key:           {}", t.site_key);
                println!("  administrator:      {}", t.admin_email);
                println!("  one-time password:  {}", t.one_time_password);
                println!();
                println!("The password is shown once; it must be changed at first sign-in.");
                println!("Sign in at {base}/admin with workspace {:?}.", t.slug);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let tenants = app
                .list_tenants()
                .await
                .map_err(|e| describe(e, "tenant"))?;
            if json {
                let list: Vec<_> = tenants
                    .iter()
                    .map(|(t, name)| serde_json::json!({ "tenant_id": t.id, "slug": t.slug, "name": name, "site_key": t.site_key }))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for (t, name) in tenants {
                    println!("{}  {:<24} {}", t.id, t.slug, name);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Rotate) => {
            let (id, n) = app
                .rotate_master_key(|done, total| progress("re-wrapping tenant keys", done, total))
                .await
                .map_err(|e| describe(e, "key"))?;
            eprintln!();
            println!(
                "new master key {id} is active; {n} tenant(s) re-wrapped. The old key stays in the file, retired."
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { args } => Ok(bench(&args)),
        Command::Audit(AuditCommand::Verify { tenant, json }) => {
            let tenant = tenant
                .parse()
                .map_err(|_| format!("{tenant:?} is not a tenant id (see `parley tenant list`)"))?;
            let report = app
                .verify_audit_chain(tenant)
                .await
                .map_err(|e| describe(e, "tenant"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else if report.ok {
                println!(
                    "audit chain intact: {} events, head {}",
                    report.events, report.head
                );
            } else {
                println!(
                    "audit chain BROKEN at event {}: {} ({} events verified before it)",
                    report.broken_at.unwrap_or_default(),
                    report.problem.as_deref().unwrap_or("unknown"),
                    report.events
                );
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    };
    store.close().await;
    result
}

fn describe(e: parley_app::AppError, what: &str) -> String {
    match e {
        parley_app::AppError::NotFound => format!("no such {what}"),
        parley_app::AppError::Conflict("slug") => {
            "that workspace name is taken; pass another --slug".into()
        }
        other => other.to_string(),
    }
}

fn progress(label: &str, done: usize, total: usize) {
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r{label} [{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    let _ = err.flush();
}

async fn serve(
    config: &Config,
    app: parley_app::App,
    demo: Option<Option<u16>>,
) -> Result<ExitCode, String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e} (is another Parley running? try --listen 127.0.0.1:8081)",
                config.listen
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let settings = HttpSettings {
        public_url: config.public_url.clone(),
        trust_proxy: config.trust_proxy,
    };
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    tracing::info!(
        database = app.store.backend(),
        "Parley is listening on {base} (admin: {base}/admin, console: {base}/console)"
    );
    if let Some(site_port) = demo {
        start_demo(
            &app,
            &base,
            site_port.unwrap_or(addr.port().saturating_add(1)),
        )
        .await?;
    }
    let timers = startup::spawn_timers(app.clone());
    let state = AppState::new(app, settings);
    http::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    timers.abort();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Print to stdout, ignoring a closed stdout: a server must not die because nobody reads its banner.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `serve --demo`: the demo tenant and a customer page on another origin that embeds the widget.
async fn start_demo(app: &parley_app::App, base: &str, site_port: u16) -> Result<(), String> {
    let site = format!("http://localhost:{site_port}");
    let demo = app
        .ensure_demo(&site)
        .await
        .map_err(|e| format!("demo setup failed: {e}"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", site_port))
        .await
        .map_err(|e| {
            format!("cannot serve the demo page on port {site_port}: {e} (pass --demo-site-port)")
        })?;
    let page = parley_server::http::demo_page(base, &demo.site_key);
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        );
        let _ = axum::serve(listener, router).await;
    });
    say!();
    say!("  Parley demo");
    say!("  -----------");
    say!("  Customer site (embeds the widget):  {site}/");
    match (&demo.agent, &demo.admin) {
        (Some((agent, agent_pw)), Some((admin, admin_pw))) => {
            say!(
                "  Agent console:   {base}/console   workspace {}   {agent}   one-time password {agent_pw}",
                demo.slug
            );
            say!(
                "  Admin panel:     {base}/admin     workspace {}   {admin}   one-time password {admin_pw}",
                demo.slug
            );
            say!("  The passwords are shown once; each must be changed at first sign-in.");
        }
        _ => {
            say!(
                "  Agent console:   {base}/console   workspace {}   agent@demo.test",
                demo.slug
            );
            say!(
                "  Admin panel:     {base}/admin     workspace {}   admin@demo.test",
                demo.slug
            );
            say!("  (The demo tenant exists already: use the passwords you set.)");
        }
    }
    say!(
        "  Sign in as the agent, go Online, then open the customer site in another window and chat."
    );
    say!();
    Ok(())
}
