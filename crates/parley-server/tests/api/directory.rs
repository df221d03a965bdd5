//! Site, departments, users and the audit trail through the API, and what lands on disk.

use crate::both;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

both!(admin_builds_a_team_and_the_agent_signs_in);
async fn admin_builds_a_team_and_the_agent_signs_in(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    let d = admin
        .post("/api/departments", json!({ "name": "Sales" }))
        .await;
    assert_eq!(d.status, StatusCode::CREATED);
    let dept = value_str(&d.body["id"]);
    assert_eq!(
        admin
            .post("/api/departments", json!({ "name": "sales" }))
            .await
            .code(),
        "department_name_taken"
    );

    let r = admin
        .post(
            "/api/users",
            json!({ "email": "Agent.Smith@Acme.test", "display_name": "Agent Smith", "role": "agent", "department_ids": [dept], "capacity": 4 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["user"]["email"], "agent.smith@acme.test");
    assert_eq!(r.body["user"]["must_change_password"], true);
    let otp = value_str(&r.body["one_time_password"]);
    let agent_id = value_str(&r.body["user"]["id"]);
    let dup = admin
        .post(
            "/api/users",
            json!({ "email": "agent.smith@acme.test", "display_name": "X", "role": "agent" }),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "email_taken")
    );

    let agent = t.client();
    agent
        .first_sign_in(&acme.slug, "agent.smith@acme.test", &otp)
        .await;
    let s = agent.get("/api/auth/session").await;
    assert_eq!(s.body["user"]["display_name"], "Agent Smith");
    assert_eq!(s.body["departments"][0]["name"], "Sales");
    assert_eq!(s.body["site"]["name"], "Acme");
    assert!(
        s.body["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p != "manage_users")
    );

    // Disabling the agent ends their session at once.
    let off = admin
        .patch(
            &format!("/api/users/{agent_id}"),
            json!({ "disabled": true }),
        )
        .await;
    assert_eq!(
        (off.status, off.body["disabled"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        agent.get("/api/auth/session").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        agent
            .sign_in(&acme.slug, "agent.smith@acme.test", PASSWORD)
            .await
            .code(),
        "invalid_credentials"
    );
    // Nobody disables or demotes themselves.
    let me = value_str(&admin.get("/api/auth/session").await.body["user"]["id"]);
    assert_eq!(
        admin
            .patch(&format!("/api/users/{me}"), json!({ "disabled": true }))
            .await
            .code(),
        "cannot_change_self"
    );
    assert_eq!(
        admin
            .patch(&format!("/api/users/{me}"), json!({ "role": "agent" }))
            .await
            .code(),
        "cannot_change_self"
    );

    let audit = admin.get("/api/audit?limit=50").await;
    let actions: Vec<&str> = audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "tenant.created",
        "user.created",
        "department.created",
        "auth.sign_in",
        "auth.password_changed",
        "user.disabled",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let report = t.app.verify_audit_chain(acme.tenant_id).await.unwrap();
    assert!(report.ok, "{report:?}");
    t.stop().await;
}

both!(site_settings_validate_origins_and_split_permissions);
async fn site_settings_validate_origins_and_split_permissions(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    let r = admin
        .patch("/api/site", json!({ "name": "Acme Bank", "allowed_origins": ["https://Shop.Acme.test/", "https://shop.acme.test", "http://localhost:3000"] }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["name"], "Acme Bank");
    assert_eq!(
        r.body["allowed_origins"],
        json!(["https://shop.acme.test", "http://localhost:3000"])
    );
    for bad in [
        "http://shop.acme.test",
        "https://*.acme.test",
        "https://acme.test/path",
        "javascript:alert(1)",
    ] {
        let r = admin
            .patch("/api/site", json!({ "allowed_origins": [bad] }))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_origin"),
            "{bad}"
        );
    }
    assert_eq!(
        admin.patch("/api/site", json!({})).await.code(),
        "nothing_to_change"
    );
    assert_eq!(
        admin.get("/api/site").await.body["allowed_origins"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "bad input changed nothing"
    );
    t.stop().await;
}

both!(no_plaintext_personal_data_at_rest);
async fn no_plaintext_personal_data_at_rest(db: Db) {
    let t = TestApp::spawn(db).await;
    let acme = t.tenant("Zyxwvut Holdings").await;
    let admin = t.admin(&acme).await;
    let r = admin
        .post("/api/users", json!({ "email": "quirinus.plaintextcheck@zyx.test", "display_name": "Quirinus Vandermeer", "role": "agent" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let needles = [
        "quirinus",
        "Quirinus",
        "Vandermeer",
        "plaintextcheck",
        "admin@zyxwvut",
        "Ada Admin",
        "Zyxwvut Holdings",
    ];
    let text = raw_database_text(&t, db).await;
    for n in needles {
        assert!(!text.contains(n), "found plaintext {n:?} at rest");
    }
    // …while the API shows them decrypted.
    let users = admin.get("/api/users").await;
    assert!(users.body.to_string().contains("Quirinus Vandermeer"));
    t.stop().await;
}

#[tokio::test]
async fn tampering_with_the_audit_trail_is_detected() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    admin
        .post("/api/departments", json!({ "name": "Sales" }))
        .await;
    assert!(t.app.verify_audit_chain(acme.tenant_id).await.unwrap().ok);
    let pool = sqlx::SqlitePool::connect(&t.config.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET detail = '{\"role\":\"agent\"}' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let r = t.app.verify_audit_chain(acme.tenant_id).await.unwrap();
    assert_eq!((r.ok, r.broken_at), (false, Some(2)));
    sqlx::query("UPDATE audit_events SET detail = '{\"role\":\"site_admin\"}' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        t.app.verify_audit_chain(acme.tenant_id).await.unwrap().ok,
        "restored"
    );
    // Dropping the newest events is detected too.
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq = $1")
        .bind(last)
        .execute(&pool)
        .await
        .unwrap();
    let r = t.app.verify_audit_chain(acme.tenant_id).await.unwrap();
    assert!(!r.ok && r.problem.unwrap().contains("removed"));
    pool.close().await;
    t.stop().await;
}

#[tokio::test]
async fn hostile_text_is_stored_and_returned_as_text() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    for name in [
        "<script>alert(1)</script>",
        "'; DROP TABLE users; --",
        "Robert\"); DELETE FROM departments;--",
        "Ünïcødé 部門 🚀",
    ] {
        let r = admin
            .post("/api/departments", json!({ "name": name }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}");
        assert_eq!(r.body["name"], name);
    }
    let list = admin.get("/api/departments").await;
    assert_eq!(list.body["departments"].as_array().unwrap().len(), 4);
    t.stop().await;
}

#[tokio::test]
async fn connection_periods_are_a_validated_site_setting() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let admin = t.admin(&acme).await;
    let site = admin.get("/api/site").await;
    assert_eq!(
        site.body["connection_periods"],
        json!({ "weak_after_secs": 30, "lost_after_secs": 90, "timeout_secs": 600 })
    );
    let r = admin.patch("/api/site", json!({ "connection_periods": { "weak_after_secs": 20, "lost_after_secs": 60, "timeout_secs": 300 } })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["connection_periods"]["timeout_secs"], 300);
    let bad = admin.patch("/api/site", json!({ "connection_periods": { "weak_after_secs": 60, "lost_after_secs": 20, "timeout_secs": 300 } })).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "out_of_order")
    );
    let zero = admin.patch("/api/site", json!({ "connection_periods": { "weak_after_secs": 0, "lost_after_secs": 20, "timeout_secs": 300 } })).await;
    assert_eq!(zero.code(), "out_of_range");
    assert_eq!(
        admin.get("/api/site").await.body["connection_periods"]["weak_after_secs"],
        20,
        "bad input changed nothing"
    );
    t.stop().await;
}
