//! The `parley` binary's operator verbs, run as a real process beside a running server.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::process::Command;

fn parley(t: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .env("PARLEY_DATA_DIR", t.dir.path())
        .env("PARLEY_DATABASE_URL", &t.config.database_url)
        .env("PARLEY_MASTER_KEY_FILE", t.key_file())
        .env("PARLEY_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn operator_verbs_work_beside_a_running_server() {
    let t = TestApp::spawn(Db::Sqlite).await;

    let out = parley(
        &t,
        &[
            "tenant",
            "create",
            "--name",
            "Initech",
            "--admin-email",
            "bill@initech.test",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["slug"], "initech");
    assert!(created["site_key"].as_str().unwrap().starts_with("site_"));
    let otp = created["one_time_password"].as_str().unwrap().to_owned();
    let tenant_id = created["tenant_id"].as_str().unwrap().to_owned();

    let dup = parley(
        &t,
        &[
            "tenant",
            "create",
            "--name",
            "Initech",
            "--admin-email",
            "x@initech.test",
        ],
    );
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("--slug"),
        "says what to do next"
    );

    // The running server serves the tenant the CLI created.
    let c = t.client();
    c.first_sign_in("initech", "bill@initech.test", &otp).await;

    // Rotate the master key while the server runs; then a tenant created after the rotation (its
    // key wrapped under a master key the server has never seen) still works on the same server.
    let before = std::fs::read_to_string(t.key_file()).unwrap();
    let out = parley(&t, &["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read_to_string(t.key_file()).unwrap();
    assert_ne!(before, after);
    assert_eq!(
        after.matches("mk-").count(),
        before.matches("mk-").count() + 2,
        "new key added, old one kept and listed as retired"
    );
    let out = parley(
        &t,
        &[
            "tenant",
            "create",
            "--name",
            "Hooli",
            "--admin-email",
            "gavin@hooli.test",
            "--json",
        ],
    );
    let hooli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = t.client();
    h.first_sign_in(
        "hooli",
        "gavin@hooli.test",
        hooli["one_time_password"].as_str().unwrap(),
    )
    .await;
    assert_eq!(h.get("/api/site").await.body["name"], "Hooli");
    assert_eq!(
        c.get("/api/site").await.status,
        StatusCode::OK,
        "sessions survive rotation"
    );
    // A fresh process (empty caches) reads every tenant under the new key.
    let list = parley(&t, &["tenant", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    let verify = parley(&t, &["audit", "verify", "--tenant", &tenant_id]);
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));
    let actions: Vec<String> = t
        .app
        .store
        .recent_audit_events(tenant_id.parse().unwrap(), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"keys.rotated".to_owned()));

    let pool = sqlx::SqlitePool::connect(&t.config.database_url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_events SET actor = 'user:someone-else' WHERE seq = 3 AND tenant_id = $1",
    )
    .bind(&tenant_id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let verify = parley(&t, &["audit", "verify", "--tenant", &tenant_id]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("BROKEN at event 3"));

    let help = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for verb in [
        "serve",
        "migrate",
        "tenant",
        "keys",
        "audit",
        "--data-dir",
        "--database-url",
    ] {
        assert!(help.contains(verb), "--help mentions {verb}");
    }
    t.stop().await;
}

#[tokio::test]
async fn verbs_other_than_serve_need_an_existing_installation() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["tenant", "list"])
        .env("PARLEY_DATA_DIR", dir.path().join("missing"))
        .env_remove("PARLEY_DATABASE_URL")
        .env_remove("PARLEY_MASTER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!dir.path().join("missing").exists(), "nothing created");
}

#[tokio::test]
async fn serve_demo_sets_up_a_tenant_and_a_customer_page() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, site_port) = (free(), free());
    let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args([
            "serve",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--demo-site-port",
            &site_port.to_string(),
        ])
        .env("PARLEY_DATA_DIR", dir.path())
        .env_remove("PARLEY_DATABASE_URL")
        .env_remove("PARLEY_MASTER_KEY_FILE")
        .env("PARLEY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child);
    // Read the banner, then keep draining stdout so the server never writes into a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut out = vec![];
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("Sign in as the agent");
            out.push(line);
            if done && let Some(tx) = tx.take() {
                let _ = tx.send(std::mem::take(&mut out));
            }
        }
    });
    let lines = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
        .await
        .unwrap()
        .unwrap();
    let text = lines.join("\n");
    assert!(
        text.contains("agent@demo.test") && text.contains("one-time password"),
        "{text}"
    );
    let page = reqwest::get(format!("http://127.0.0.1:{site_port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("http://127.0.0.1:{port}/widget.js"))
            && page.contains("data-site=\"site_")
    );
    let otp = text
        .lines()
        .find(|l| l.contains("agent@demo.test"))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let c = Client::new(format!("http://127.0.0.1:{port}"));
    c.first_sign_in("demo", "agent@demo.test", &otp).await;
    let s = c.get("/api/auth/session").await;
    assert_eq!(s.body["departments"][0]["name"], "Support");
}
