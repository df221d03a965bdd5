//! Sign-in, sessions, CSRF, Origin, throttling, password changes, sign-out, security headers.

use crate::both;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

both!(sign_in_answers_alike_for_every_kind_of_failure);
async fn sign_in_answers_alike_for_every_kind_of_failure(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let c = t.client();
    let wrong_pw = c
        .sign_in(&acme.slug, &acme.admin_email, "not-the-password")
        .await;
    let unknown_user = c
        .sign_in(&acme.slug, "nobody@acme.test", "not-the-password")
        .await;
    let unknown_ws = c
        .sign_in("no-such-workspace", &acme.admin_email, "not-the-password")
        .await;
    let malformed = c.sign_in("!!", "not an email", "x").await;
    for r in [&wrong_pw, &unknown_user, &unknown_ws, &malformed] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body, wrong_pw.body, "identical bodies");
        assert!(r.headers.get("set-cookie").is_none());
    }
    assert_eq!(wrong_pw.code(), "invalid_credentials");
    // Failures are audited in the tenant, with the reason (never the password).
    let events = t
        .app
        .store
        .recent_audit_events(acme.tenant_id, 10)
        .await
        .unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "auth.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 2, "wrong password and unknown user in acme");
    assert!(
        failed
            .iter()
            .all(|e| !e.detail.contains("not-the-password"))
    );
    t.stop().await;
}

both!(first_sign_in_requires_a_new_password);
async fn first_sign_in_requires_a_new_password(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let c = t.client();
    let r = c
        .sign_in(&acme.slug, "  ADMIN@acme.test ", &acme.one_time_password)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "email is case- and space-insensitive"
    );
    let cookie = r
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        cookie.starts_with("parley_session="),
        "plain-HTTP loopback cookie name: {cookie}"
    );
    assert_eq!(r.body["must_change_password"], true);

    // Everything but the session, the password change and sign-out waits for the new password.
    assert_eq!(c.get("/api/site").await.code(), "password_change_required");
    assert_eq!(c.get("/api/auth/session").await.status, StatusCode::OK);

    let weak = c
        .post(
            "/api/auth/password",
            json!({ "current_password": acme.one_time_password, "new_password": "short" }),
        )
        .await;
    assert_eq!(
        (weak.status, weak.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "password_too_short")
    );
    let wrong = c
        .post(
            "/api/auth/password",
            json!({ "current_password": "nope", "new_password": PASSWORD }),
        )
        .await;
    assert_eq!(wrong.code(), "wrong_password");
    let same = c.post("/api/auth/password", json!({ "current_password": acme.one_time_password, "new_password": acme.one_time_password })).await;
    assert_eq!(same.code(), "password_unchanged");
    let ok = c
        .post(
            "/api/auth/password",
            json!({ "current_password": acme.one_time_password, "new_password": PASSWORD }),
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get("/api/site").await.status,
        StatusCode::OK,
        "same session goes on"
    );

    // The one-time password is gone; the new one works.
    let again = t.client();
    assert_eq!(
        again
            .sign_in(&acme.slug, &acme.admin_email, &acme.one_time_password)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = again.sign_in(&acme.slug, &acme.admin_email, PASSWORD).await;
    assert_eq!(
        (r.status, r.body["must_change_password"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    t.stop().await;
}

#[tokio::test]
async fn csrf_and_origin_guard_every_state_change() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let c = t.admin(&acme).await;
    let good = c.csrf.lock().unwrap().clone().unwrap();

    *c.csrf.lock().unwrap() = None;
    let r = c.post("/api/departments", json!({ "name": "Sales" })).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"));
    *c.csrf.lock().unwrap() = Some("A".repeat(good.len()));
    assert_eq!(
        c.post("/api/departments", json!({ "name": "Sales" }))
            .await
            .code(),
        "csrf_failed"
    );
    *c.csrf.lock().unwrap() = Some(good.clone());

    let evil = c
        .http
        .post(t.url("/api/departments"))
        .header("origin", "https://evil.example")
        .header("x-csrf-token", &good)
        .json(&json!({ "name": "Sales" }))
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), StatusCode::FORBIDDEN);
    let cross = c
        .http
        .post(t.url("/api/departments"))
        .header("sec-fetch-site", "cross-site")
        .header("x-csrf-token", &good)
        .json(&json!({ "name": "Sales" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let same_origin = c
        .http
        .post(t.url("/api/departments"))
        .header("origin", t.url(""))
        .header("x-csrf-token", &good)
        .json(&json!({ "name": "Sales" }))
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), StatusCode::CREATED);

    // Sign-in itself refuses cross-site posts (login CSRF).
    let r = t
        .client()
        .http
        .post(t.url("/api/auth/sign-in"))
        .header("origin", "https://evil.example")
        .json(&json!({ "workspace": acme.slug, "email": acme.admin_email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    t.stop().await;
}

#[tokio::test]
async fn sign_out_ends_the_session_on_the_server() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let c = t.client();
    let r = c
        .sign_in(&acme.slug, &acme.admin_email, &acme.one_time_password)
        .await;
    let cookie = r
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let out = c.post("/api/auth/sign-out", json!(null)).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // Replaying the old cookie by hand: the server no longer knows it.
    let replay = reqwest::Client::new()
        .get(t.url("/api/auth/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let actions: Vec<String> = t
        .app
        .store
        .recent_audit_events(acme.tenant_id, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions[..2],
        ["auth.sign_out".to_owned(), "auth.sign_in".to_owned()]
    );
    t.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let c = t.client();
    for _ in 0..5 {
        assert_eq!(
            c.sign_in(&acme.slug, &acme.admin_email, "wrong")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = c
        .sign_in(&acme.slug, &acme.admin_email, &acme.one_time_password)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
    assert!(r.headers.get("retry-after").is_some());
    // An unknown account is throttled the same way, so throttling reveals nothing.
    for _ in 0..5 {
        c.sign_in(&acme.slug, "ghost@acme.test", "wrong").await;
    }
    assert_eq!(
        c.sign_in(&acme.slug, "ghost@acme.test", "wrong")
            .await
            .code(),
        "too_many_attempts"
    );
    t.stop().await;
}

#[tokio::test]
async fn pages_and_api_carry_security_headers() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/admin",
        "/console",
        "/api/docs",
        "/api/openapi.json",
        "/static/admin.js",
        "/healthz",
        "/nope",
        "/api/nope",
    ] {
        let r = http.get(t.url(path)).send().await.unwrap();
        let h = r.headers();
        let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(
            h.get("x-content-type-options").unwrap(),
            "nosniff",
            "{path}"
        );
        assert_eq!(h.get("x-frame-options").unwrap(), "DENY", "{path}");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer", "{path}");
    }
    let js = http.get(t.url("/static/admin.js")).send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        http.get(t.url("/static/evil.js"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let api = http.get(t.url("/api/nope")).send().await.unwrap();
    assert_eq!(api.headers()["cache-control"], "no-store");
    assert_eq!(
        api.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    let root = http.get(t.url("/")).send().await.unwrap();
    assert_eq!(root.headers()["location"], "/console");
    t.stop().await;
}

both!(health_and_readiness);
async fn health_and_readiness(db: Db) {
    let t = TestApp::spawn(db).await;
    let c = t.client();
    assert_eq!(c.get("/healthz").await.body["status"], "ok");
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.body["database"],
        if db == Db::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    t.stop().await;
}
