//! Spawns real Parley nodes on port 0 with a temp database (SQLite file, or a fresh PostgreSQL
//! database on the private server from scripts/test) and drives them over HTTP.

use parley_app::{App, TenantCreated};
use parley_server::config::Config;
use parley_server::http::{self, AppState, HttpSettings};
use parley_server::startup;
use parley_server::telemetry::LogFormat;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub app: App,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub pg_db: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub const PASSWORD: &str = "Correct-Horse-9-Battery";

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, pg_db) = match db {
            Db::Sqlite => (
                format!("sqlite://{}", dir.path().join("parley.db").display()),
                None,
            ),
            Db::Postgres => {
                let admin = std::env::var("PARLEY_TEST_PG_URL")
                    .expect("PARLEY_TEST_PG_URL is not set: run the tests through scripts/test");
                let name = format!("parley_api_{}", uuid::Uuid::now_v7().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let (base, _) = admin.rsplit_once('/').unwrap();
                (format!("{base}/{name}"), Some(name))
            }
        };
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            database_url,
            master_key_file: dir.path().join("master.key"),
            public_url: None,
            log_format: LogFormat::Text,
            trust_proxy: false,
        };
        let (app, _store) = startup::open_app(&config, startup::Purpose::Serve)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(
            app.clone(),
            HttpSettings {
                public_url: None,
                trust_proxy: false,
            },
        );
        startup::spawn_timers(app.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(http::serve(listener, state, async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            app,
            config,
            dir,
            pg_db,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(self.url(""))
    }

    pub async fn tenant(&self, name: &str) -> TenantCreated {
        self.app
            .create_tenant(
                name,
                None,
                &format!("admin@{}.test", name.to_lowercase().replace(' ', "")),
                Some("Ada Admin"),
                &[],
            )
            .await
            .unwrap()
    }

    /// A site administrator, signed in with a changed (usable) password.
    pub async fn admin(&self, t: &TenantCreated) -> Client {
        let c = self.client();
        c.first_sign_in(&t.slug, &t.admin_email, &t.one_time_password)
            .await;
        c
    }

    pub fn key_file(&self) -> PathBuf {
        self.config.master_key_file.clone()
    }

    /// Stop the server and drop the PostgreSQL database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(name) = self.pg_db.take() {
            let admin = std::env::var("PARLEY_TEST_PG_URL").unwrap();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// An HTTP client with its own cookie jar, like one browser.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub csrf: std::sync::Mutex<Option<String>>,
}

pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Res {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Client {
    pub fn new(base: String) -> Client {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Client {
            http,
            base,
            csrf: std::sync::Mutex::new(None),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Res {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET
            && let Some(t) = self.csrf.lock().unwrap().clone()
        {
            req = req.header("x-csrf-token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.send("POST", path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Res {
        self.send("PATCH", path, Some(body)).await
    }

    pub async fn sign_in(&self, workspace: &str, email: &str, password: &str) -> Res {
        let r = self
            .post(
                "/api/auth/sign-in",
                json!({ "workspace": workspace, "email": email, "password": password }),
            )
            .await;
        if r.status == StatusCode::OK {
            *self.csrf.lock().unwrap() = Some(r.body["csrf_token"].as_str().unwrap().to_owned());
        }
        r
    }

    /// Sign in with a one-time password and replace it with `PASSWORD`.
    pub async fn first_sign_in(&self, workspace: &str, email: &str, one_time: &str) {
        let r = self.sign_in(workspace, email, one_time).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["must_change_password"], true);
        let r = self
            .post(
                "/api/auth/password",
                json!({ "current_password": one_time, "new_password": PASSWORD }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }
}

pub fn value_str(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// A WebSocket client speaking Parley's protocol.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    /// Connect with the given Origin (Parley's own unless a test says otherwise).
    pub async fn connect_raw(
        t: &TestApp,
        origin: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws", t.addr).into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws { stream })
    }

    pub fn from_stream(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Ws {
        Ws { stream }
    }

    /// Connect and say hello with `ticket`; waits for `ready`.
    pub async fn open(t: &TestApp, ticket: &str) -> Ws {
        let mut ws = Ws::connect_raw(t, Some(&t.url(""))).await.unwrap();
        ws.send(json!({ "type": "hello", "ticket": ticket })).await;
        let ready = ws.next().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(
        &mut self,
        m: tokio_tungstenite::tungstenite::Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        use futures_util::SinkExt;
        self.stream.send(m).await
    }

    /// The next frame, or `{"type": "closed", "code": N}` when the server closed the socket.
    pub async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), self.stream.next())
                .await
                .expect("no frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Close(f))) => {
                    return json!({ "type": "closed", "code": f.map(|f| u16::from(f.code)) });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return json!({ "type": "closed", "code": null }),
            }
        }
    }

    /// Skip frames until one of `kind` arrives.
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind || v["type"] == "closed" {
                return v;
            }
        }
    }

    /// Skip frames until an `event` of `kind` arrives.
    pub async fn event(&mut self, kind: &str) -> Value {
        loop {
            let v = self.until("event").await;
            if v["kind"] == kind || v["type"] == "closed" {
                return v;
            }
        }
    }
}

/// A visitor with its own token, talking to the widget API.
pub struct VisitorClient {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub session: Value,
}

impl VisitorClient {
    pub async fn open(t: &TestApp, site_key: &str) -> VisitorClient {
        let http = reqwest::Client::new();
        let r = http
            .post(t.url("/api/widget/session"))
            .json(&json!({ "site_key": site_key }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let session: Value = r.json().await.unwrap();
        VisitorClient {
            http,
            base: t.url(""),
            token: value_str(&session["visitor_token"]),
            session,
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Res {
        let mut req = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.json().await.unwrap_or(Value::Null);
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn ticket(&self) -> String {
        value_str(&self.send("POST", "/api/widget/ticket", None).await.body["ticket"])
    }
}

impl Client {
    pub async fn ticket(&self) -> String {
        let r = self.post("/api/console/ticket", json!(null)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        value_str(&r.body["ticket"])
    }
}

/// A child process that is killed when dropped, so a failing test never leaves a server behind
/// (a leftover would hold the test runner's output open).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the database holds, as raw text: the SQLite files byte for byte (database and
/// write-ahead log), or every PostgreSQL table's rows as text. For "no plaintext at rest" checks.
pub async fn raw_database_text(t: &TestApp, db: Db) -> String {
    let bytes: Vec<u8> = match db {
        Db::Sqlite => {
            let mut all = vec![];
            for f in std::fs::read_dir(t.dir.path()).unwrap() {
                let p = f.unwrap().path();
                if p.to_string_lossy().contains("parley.db") {
                    all.extend(std::fs::read(&p).unwrap());
                }
            }
            assert!(all.len() > 10_000, "read the database files");
            all
        }
        Db::Postgres => {
            use sqlx::Row;
            let admin_url = std::env::var("PARLEY_TEST_PG_URL").unwrap();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            let mut conn =
                sqlx::PgConnection::connect(&format!("{base}/{}", t.pg_db.as_ref().unwrap()))
                    .await
                    .unwrap();
            let tables: Vec<String> =
                sqlx::query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<String, _>("tablename"))
                    .collect();
            assert!(tables.len() >= 10, "{tables:?}");
            let mut all = vec![];
            for table in tables {
                for row in sqlx::query(&format!("SELECT t::text AS r FROM {table} t"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                {
                    all.extend(row.get::<String, _>("r").into_bytes());
                }
            }
            all
        }
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A PostgreSQL database of its own on the private test server, for one test.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin = std::env::var("PARLEY_TEST_PG_URL")
            .expect("PARLEY_TEST_PG_URL is not set: run the tests through scripts/test");
        let name = format!("parley_t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop(self) {
        let admin = std::env::var("PARLEY_TEST_PG_URL").unwrap();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
